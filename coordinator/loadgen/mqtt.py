"""A minimal MQTT 3.1.1 client on asyncio streams, cheap enough for thousands per process.

Only what virtual devices need: CONNECT with a Last Will, SUBSCRIBE, PUBLISH at QoS 0/1
(PUBACKs are counted, not awaited: ``publish`` returns once the bytes are handed to the
kernel, which bounds memory), receiving PUBLISH (QoS 1 acknowledged), PINGREQ and a clean
DISCONNECT. Packets are built with the embedded broker's codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable

from coordinator.broker.packets import (
    Connack,
    Connect,
    PacketType,
    Publish,
    Subscribe,
    Will,
    decode,
    encode,
    encode_ack,
    encode_connect,
    encode_control,
    encode_publish_header,
)
from edge_client.errors import EdgeFLError

log = logging.getLogger(__name__)

OnPublish = Callable[[str, bytes], None]
_PINGREQ = encode_control(PacketType.PINGREQ)
_DISCONNECT = encode_control(PacketType.DISCONNECT)


class MqttError(EdgeFLError):
    """The broker refused or dropped a virtual device's connection."""


class Connection:
    """One MQTT connection with its own client id; ``on_publish(topic, payload)`` per message."""

    def __init__(self, client_id: str, on_publish: OnPublish | None = None) -> None:
        self.client_id = client_id
        self.on_publish = on_publish or (lambda topic, payload: None)
        self.acked = 0  # PUBACKs received
        self.closed = asyncio.Event()
        self._ids = itertools.cycle(range(1, 65536))
        self._connack: asyncio.Future[Connack] | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._task: asyncio.Task[None] | None = None

    async def open(
        self, host: str, port: int, *, keepalive: int = 60, will: Will | None = None
    ) -> None:
        self._reader, self._writer = await asyncio.open_connection(host, port, limit=1 << 22)
        self._connack = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._read_loop())
        self._writer.write(encode_connect(Connect(self.client_id, True, keepalive, will)))
        connack = await asyncio.wait_for(self._connack, 30)
        if connack.return_code:
            raise MqttError(f"broker refused {self.client_id}: code {connack.return_code}")

    async def subscribe(self, filters: list[tuple[str, int]]) -> None:
        self._send(encode(Subscribe(next(self._ids), tuple(filters))))
        await self.drain()

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Write a PUBLISH (payload not copied) and wait until the socket buffer has room."""
        packet_id = next(self._ids) if qos else 0
        self._send(encode_publish_header(topic, len(payload), qos, retain, packet_id=packet_id))
        self._send(payload)
        await self.drain()

    def ping(self) -> None:
        self._send(_PINGREQ)

    async def drain(self) -> None:
        if self._writer is not None and not self.closed.is_set():
            try:
                await self._writer.drain()
            except ConnectionError as exc:
                self.closed.set()
                raise MqttError(f"{self.client_id}: connection lost ({exc})") from exc

    async def close(self, *, clean: bool = True) -> None:
        """DISCONNECT (the broker discards the Will) unless ``clean`` is False, then close."""
        if self._writer is None:
            return
        if clean and not self.closed.is_set():
            self._send(_DISCONNECT)
            with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
                await asyncio.wait_for(self._writer.drain(), 5)
        self._writer.close()
        self.closed.set()
        if self._task is not None:
            self._task.cancel()

    def _send(self, data: bytes) -> None:
        if self._writer is None or self.closed.is_set():
            raise MqttError(f"{self.client_id} is not connected")
        self._writer.write(data)

    async def _read_loop(self) -> None:
        reader = self._reader
        assert reader is not None
        try:
            while True:
                first = (await reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length) if length else b""
                self._dispatch(first, body)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:  # a bug must not pass silently, nor kill the other devices
            log.exception("%s: reader failed", self.client_id)
        finally:
            self.closed.set()
            if self._connack is not None and not self._connack.done():
                self._connack.set_exception(MqttError(f"{self.client_id}: closed before CONNACK"))

    def _dispatch(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == PacketType.PUBACK:
            self.acked += 1
        elif kind == PacketType.PUBLISH:
            packet = decode(first, body)
            assert isinstance(packet, Publish)
            if packet.qos == 1:
                self._send(encode_ack(PacketType.PUBACK, packet.packet_id))
            self.on_publish(packet.topic, packet.payload)
        elif kind == PacketType.CONNACK and self._connack is not None:
            packet = decode(first, body)
            assert isinstance(packet, Connack)
            if not self._connack.done():
                self._connack.set_result(packet)
