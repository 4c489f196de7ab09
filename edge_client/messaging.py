"""From raw MQTT messages to protocol objects and back, for both sides.

``publish_binary`` splits an envelope into chunks on ``<topic>/<i>`` (clearing stale
retained chunks of a longer predecessor); ``Inbox`` turns queued MQTT messages into
decoded ``Incoming`` items, logging and dropping anything malformed instead of raising.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

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

_JSON_KINDS: dict[str, Any] = {
    "round": RoundAnnouncement,
    "status": DeviceStatus,
    "metrics": RoundMetrics,
    "control": JobControl,
}
_BINARY_KINDS = {"model": ("model",), "global": ("global",), "update": ("update", "failure")}


@dataclass(frozen=True)
class Incoming:
    kind: str  # model | global | update | round | status | metrics | control
    value: Any  # Envelope for binary kinds, the JSON dataclass otherwise
    device: str | None = None  # from the topic, for update and status
    size: int = 0  # bytes on the wire (all chunks)
    raw: bytes = field(default=b"", repr=False)  # the exact payload (envelope or JSON) decoded


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
        self, transport: Transport, topics: Topics, *, max_bytes: int = 256 * 1024 * 1024
    ) -> None:
        self.transport = transport
        self.topics = topics
        self.reassembler = Reassembler(max_bytes=max_bytes)
        self._sizes: dict[str, int] = {}
        self.rejected = 0  # malformed or foreign messages dropped so far

    def pending(self) -> bool:
        """Whether raw messages are waiting in the transport's queue."""
        return self.transport.pending() > 0

    def get(self, timeout: float | None = None) -> Incoming | None:
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

    def _decode(self, message: Message) -> Incoming | None:
        parsed = self.topics.parse(message.topic)
        if parsed.kind in _JSON_KINDS:
            if not message.payload:  # a retained message being cleared
                return None
            value = _JSON_KINDS[parsed.kind].from_json(message.payload)
            if parsed.kind == "status" and value.device != parsed.device:
                raise ProtocolError(
                    f"status of device {value.device!r} on the topic of {parsed.device!r}"
                )
            return Incoming(
                parsed.kind, value, parsed.device, len(message.payload), message.payload
            )
        if parsed.kind not in _BINARY_KINDS:
            return None
        if not message.payload:
            return None
        self._sizes[parsed.base] = self._sizes.get(parsed.base, 0) + len(message.payload)
        whole = self.reassembler.feed(parsed.base, message.payload, index=parsed.chunk)
        if whole is None:
            return None
        size = self._sizes.pop(parsed.base, len(message.payload))
        envelope: Envelope = decode(
            whole,
            expect_job=self.topics.job,
            expect_kind=_BINARY_KINDS[parsed.kind],
            expect_sender=parsed.device,
        )
        return Incoming(parsed.kind, envelope, parsed.device, size, whole)
