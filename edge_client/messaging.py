"""From raw MQTT messages to protocol objects and back, for both sides.

``publish_binary`` splits an envelope into chunks on ``<topic>/<i>`` (clearing stale
retained chunks of a longer predecessor); ``Inbox`` turns queued MQTT messages into
decoded items, one type per topic kind (:class:`RoundReceived`, :class:`UpdateReceived`,
...), logging and dropping anything malformed instead of raising. Receivers dispatch on the
item's type (``match item: case RoundReceived(ann): ...``).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Protocol, TypeVar

from edge_client.errors import ProtocolError
from edge_client.protocol import (
    DEFAULT_MAX_CHUNK,
    DeviceStatus,
    Envelope,
    JobControl,
    Reassembler,
    RoundAnnouncement,
    RoundMetrics,
    Topics,
    chunk_topics,
    chunked,
    decode,
)
from edge_client.transport import Message, Transport

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Incoming(Generic[T]):
    """A complete, decoded message of the job; its subclass says which topic it came on."""

    kind: ClassVar[str]  # the topic kind: a label for logs, counters and `monitor --json`
    value: T
    device: str | None = None  # from the topic, for update and status
    size: int = 0  # bytes on the wire (all chunks)
    raw: bytes = field(default=b"", repr=False)  # the exact payload (envelope or JSON) decoded


@dataclass(frozen=True)
class ModelReceived(Incoming[Envelope]):
    kind: ClassVar[str] = "model"


@dataclass(frozen=True)
class GlobalReceived(Incoming[Envelope]):
    kind: ClassVar[str] = "global"


@dataclass(frozen=True)
class UpdateReceived(Incoming[Envelope]):
    """An ``update`` or a ``failure`` envelope from ``device``."""

    kind: ClassVar[str] = "update"


@dataclass(frozen=True)
class SecAggReceived(Incoming[Envelope]):
    """A secure-aggregation stage message (``secagg`` envelope): from ``device`` on its
    ``secagg`` topic, or from the coordinator on ``secagg-all`` / ``secagg-to/{device}``
    (``device`` is then the recipient, or None); ``read_stage(value)`` types it."""

    kind: ClassVar[str] = "secagg"


@dataclass(frozen=True)
class RoundReceived(Incoming[RoundAnnouncement]):
    kind: ClassVar[str] = "round"


@dataclass(frozen=True)
class StatusReceived(Incoming[DeviceStatus]):
    kind: ClassVar[str] = "status"


@dataclass(frozen=True)
class MetricsReceived(Incoming[RoundMetrics]):
    kind: ClassVar[str] = "metrics"


@dataclass(frozen=True)
class ControlReceived(Incoming[JobControl]):
    kind: ClassVar[str] = "control"


AnyIncoming = (
    ModelReceived
    | GlobalReceived
    | UpdateReceived
    | RoundReceived
    | StatusReceived
    | MetricsReceived
    | ControlReceived
    | SecAggReceived
)
"""Every item an :class:`Inbox` returns."""


class MessageSource(Protocol):
    """What an :class:`Inbox` reads from: a transport, or anything passing its messages on."""

    def get(self, timeout: float | None = None) -> Message | None: ...

    def pending(self) -> int: ...


class Lookahead:
    """A :class:`MessageSource` whose queued messages can be looked at without taking them:
    a board in the middle of training looks for the announcement that closes its round."""

    def __init__(self, source: MessageSource) -> None:
        self.source = source
        self._held: deque[Message] = deque()

    def get(self, timeout: float | None = None) -> Message | None:
        if self._held:
            return self._held.popleft()
        return self.source.get(timeout)

    def pending(self) -> int:
        return len(self._held) + self.source.pending()

    def look(self, limit: int = 10_000) -> list[Message]:
        """Messages queued since the last look (they stay queued for :meth:`get`)."""
        new: list[Message] = []
        while len(new) < limit and self.source.pending():
            message = self.source.get(0)
            if message is None:
                break
            new.append(message)
        self._held.extend(new)
        return new


class BinaryPublisher:
    """Publishes envelopes as chunks; remembers chunk counts of retained topics."""

    def __init__(self, transport: Transport, max_chunk: int = DEFAULT_MAX_CHUNK) -> None:
        self.transport = transport
        self.max_chunk = max_chunk
        self._retained_counts: dict[str, int] = {}

    def publish(
        self, base_topic: str, payload: bytes, *, retain: bool = False, qos: int = 1
    ) -> int:
        """Publish ``payload`` on ``base_topic/<i>``; returns bytes sent (chunk headers included)."""
        sent = 0
        parts = chunked(base_topic, payload, self.max_chunk)
        for topic, chunk in parts:
            self.transport.publish(topic, chunk, qos=qos, retain=retain)
            sent += len(chunk)
        if retain:
            previous = self._retained_counts.get(base_topic, 0)
            for stale in chunk_topics(base_topic, previous, start=len(parts)):
                self.transport.publish(stale, b"", qos=qos, retain=True)
            self._retained_counts[base_topic] = len(parts)
        return sent

    def assume_retained(self, base_topic: str, count: int) -> None:
        """Chunks ``base_topic/0 .. count-1`` may be retained on the broker (e.g. left there
        by an earlier run): the next retained publish on ``base_topic`` clears those beyond
        its own chunk count."""
        self._retained_counts[base_topic] = max(self._retained_counts.get(base_topic, 0), count)


class Inbox:
    """Decodes the messages of one job; bad input is logged and dropped, never raised."""

    def __init__(
        self, transport: MessageSource, topics: Topics, *, max_bytes: int = 256 * 1024 * 1024
    ) -> None:
        self.transport = transport
        self.topics = topics
        self.reassembler = Reassembler(max_bytes=max_bytes)
        self._sizes: dict[str, int] = {}
        self.rejected = 0  # malformed or foreign messages dropped so far

    def pending(self) -> bool:
        """Whether raw messages are waiting in the transport's queue."""
        return self.transport.pending() > 0

    def get(self, timeout: float | None = None) -> AnyIncoming | None:
        """The next complete item, or None when nothing complete arrived in ``timeout``."""
        message = self.transport.get(timeout)
        if message is None:
            return None
        try:
            return self._decode(message)
        except ProtocolError as exc:
            self.rejected += 1
            log.warning("dropped a message on %s: %s", message.topic[:120], exc)
            return None

    def _decode(self, message: Message) -> AnyIncoming | None:
        parsed = self.topics.parse(message.topic)
        payload, device = message.payload, parsed.device
        if not payload:  # a retained message being cleared
            return None
        size = len(payload)
        if parsed.kind == "round":
            return RoundReceived(RoundAnnouncement.from_json(payload), device, size, payload)
        if parsed.kind == "metrics":
            return MetricsReceived(RoundMetrics.from_json(payload), device, size, payload)
        if parsed.kind == "control":
            return ControlReceived(JobControl.from_json(payload), device, size, payload)
        if parsed.kind == "status":
            status = DeviceStatus.from_json(payload)
            if status.device != device:
                raise ProtocolError(
                    f"status of device {status.device!r} on the topic of {device!r}"
                )
            return StatusReceived(status, device, size, payload)
        if parsed.kind not in _BINARY_KINDS:
            return None
        self._sizes[parsed.base] = self._sizes.get(parsed.base, 0) + size
        whole = self.reassembler.feed(parsed.base, payload, index=parsed.chunk)
        if whole is None:
            return None
        size = self._sizes.pop(parsed.base, size)
        item_type, kinds = _BINARY_KINDS[parsed.kind]
        # on the coordinator's stage topics the device level names the recipient
        sender = "coordinator" if parsed.kind in _FROM_COORDINATOR else device
        envelope = decode(
            whole, expect_job=self.topics.job, expect_kind=kinds, expect_sender=sender
        )
        return item_type(envelope, device, size, whole)


_BINARY_KINDS: dict[
    str,
    tuple[type[ModelReceived | GlobalReceived | UpdateReceived | SecAggReceived], tuple[str, ...]],
] = {
    "model": (ModelReceived, ("model",)),
    "global": (GlobalReceived, ("global",)),
    "update": (UpdateReceived, ("update", "failure")),
    "secagg": (SecAggReceived, ("secagg",)),
    "secagg-all": (SecAggReceived, ("secagg",)),
    "secagg-to": (SecAggReceived, ("secagg",)),
}
"""Binary topic kind: the item it decodes to and the envelope kinds allowed on it."""
_FROM_COORDINATOR = ("secagg-all", "secagg-to")
