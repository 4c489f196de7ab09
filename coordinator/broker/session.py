"""Per-client session state: subscriptions, in-flight QoS 1/2 messages, offline queue.

A session outlives its network connection when the client connected with
``clean_session=False``: subscriptions stay, QoS 1/2 messages are queued (bounded)
while the client is offline, and unacknowledged messages are resent with DUP set when
it reconnects.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """An application message as the broker routes it (payload bytes are shared, never copied)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


class Outbox(Protocol):
    """What a session needs from the live connection of its client."""

    def send_publish(self, message: Message, packet_id: int, dup: bool) -> None: ...

    def send_pubrel(self, packet_id: int) -> None: ...


@dataclass
class _InFlight:
    message: Message
    released: bool = False  # QoS 2: PUBREC came back and PUBREL was sent; awaiting PUBCOMP


@dataclass(frozen=True)
class SessionLimits:
    max_inflight: int = 100  # unacknowledged QoS 1/2 messages per client; more wait in the queue
    max_queued_messages: int = 1000  # like Mosquitto's max_queued_messages; newer ones dropped
    max_queued_bytes: int = 256 * 1024 * 1024  # payload bytes held per client (0 = unlimited)


class Session:
    """State of one client id; ``outbox`` is None while the client is offline."""

    def __init__(self, client_id: str, clean: bool, limits: SessionLimits) -> None:
        self.client_id = client_id
        self.clean = clean
        self.limits = limits
        self.outbox: Outbox | None = None
        self.subscriptions: dict[str, int] = {}  # topic filter -> granted QoS
        self.incoming_qos2: set[int] = set()  # QoS 2 packet ids received, awaiting PUBREL
        self._inflight: dict[int, _InFlight] = {}  # insertion order = send order
        self._queue: deque[Message] = deque()
        self._queued_bytes = 0
        self._ids = itertools.cycle(range(1, 65536))
        self._dropped = 0

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def deliver(self, message: Message) -> None:
        """Send (or queue) ``message``; its ``qos`` and ``retain`` are the ones to send with."""
        if message.qos == 0:
            if self.outbox is not None:
                self.outbox.send_publish(message, 0, False)
            return  # QoS 0 messages are not queued for offline clients
        if self.outbox is not None and not self._queue and self._has_window():
            self._send_new(message)
            return
        limits = self.limits
        size = len(message.payload)
        over_bytes = (
            limits.max_queued_bytes > 0
            and self._queue
            and self._queued_bytes + size > limits.max_queued_bytes
        )
        if len(self._queue) >= limits.max_queued_messages or over_bytes:
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                logger.warning(
                    "queue of client %r is full: dropped %d message(s), latest on %r",
                    self.client_id,
                    self._dropped,
                    message.topic,
                )
            return
        self._queue.append(message)
        self._queued_bytes += size

    def on_puback(self, packet_id: int) -> None:
        entry = self._inflight.get(packet_id)
        if entry is not None and entry.message.qos == 1:
            del self._inflight[packet_id]
            self._flush()

    def on_pubrec(self, packet_id: int) -> None:
        entry = self._inflight.get(packet_id)
        if entry is not None and entry.message.qos == 2:
            entry.released = True
        if self.outbox is not None:
            self.outbox.send_pubrel(packet_id)  # also answers a PUBREC we no longer track

    def on_pubcomp(self, packet_id: int) -> None:
        entry = self._inflight.get(packet_id)
        if entry is not None and entry.message.qos == 2:
            del self._inflight[packet_id]
            self._flush()

    def resume(self) -> None:
        """After a reconnect: resend everything unacknowledged, then drain the queue."""
        if self.outbox is None:
            return
        for packet_id, entry in self._inflight.items():
            if entry.released:
                self.outbox.send_pubrel(packet_id)
            else:
                self.outbox.send_publish(entry.message, packet_id, True)
        self._flush()

    def _has_window(self) -> bool:
        return len(self._inflight) < self.limits.max_inflight

    def _flush(self) -> None:
        while self._queue and self.outbox is not None and self._has_window():
            message = self._queue.popleft()
            self._queued_bytes -= len(message.payload)
            self._send_new(message)

    def _send_new(self, message: Message) -> None:
        packet_id = next(self._ids)
        while packet_id in self._inflight:  # the window is far below 65535: this ends fast
            packet_id = next(self._ids)
        self._inflight[packet_id] = _InFlight(message)
        if self.outbox is not None:
            self.outbox.send_publish(message, packet_id, False)
