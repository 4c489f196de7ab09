"""One client's network connection: reads packets, answers them, writes deliveries.

Each connection runs in its own asyncio task. Any protocol violation, oversized
packet, keep-alive expiry or socket error ends only that task: the broker keeps serving
every other client.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, TypeVar

from coordinator.broker.packets import (
    Ack,
    ConnackCode,
    Connect,
    Control,
    MalformedPacketError,
    Packet,
    PacketType,
    Publish,
    Subscribe,
    Unsubscribe,
    UnsupportedProtocolError,
    Will,
    decode,
    encode_ack,
    encode_connack,
    encode_control,
    encode_publish_header,
    encode_suback,
)
from coordinator.broker.session import Message, Session
from coordinator.broker.topic_match import is_valid_topic_filter

if TYPE_CHECKING:
    from coordinator.broker.core import BrokerCore

logger = logging.getLogger(__name__)

T = TypeVar("T")

BODY_CHUNK = 1024 * 1024  # large bodies are read in chunks so the keep-alive timer sees progress
SMALL_PAYLOAD = 16 * 1024  # below this, PUBLISH header and payload go out as one write
# Largest possible CONNECT: header, then client id, will topic, will payload, user name and
# password of at most 65535 bytes each; more is hostile, whatever max_packet_size allows.
MAX_CONNECT_SIZE = 5 + 12 + 5 * (2 + 0xFFFF)
# QoS 0 messages for a client that stopped reading are dropped once this much is unsent
# (QoS 1/2 are bounded by the in-flight window and the session queue instead).
MAX_UNSENT_QOS0 = 64 * 1024 * 1024
_PINGRESP = encode_control(PacketType.PINGRESP)


class PacketTooLargeError(Exception):
    """A client announced a packet above the broker's ``max_packet_size``."""


class Connection:
    """Protocol handler for one socket; also the :class:`~.session.Outbox` of its session."""

    def __init__(
        self, core: BrokerCore, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._core = core
        self._reader = reader
        self._writer = writer
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.session: Session | None = None
        self.client_id: str | None = None
        self.taken_over = False  # closed because the same client id connected again
        self._will: Will | None = None
        self._keepalive_timeout: float | None = None  # 1.5 x keepalive (spec 3.1.2.10)
        self._dropped_qos0 = 0

    def __repr__(self) -> str:
        return f"<client {self.client_id!r} from {self.peer}>"

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the connection until it ends; never raises except on cancellation."""
        try:
            if not await self._handshake():
                return
            while True:
                packet = await self._read_packet(self._keepalive_timeout)
                if not self._handle(packet):
                    logger.debug("%r disconnected", self)
                    break
                await self._writer.drain()
        except asyncio.IncompleteReadError:
            logger.debug("%r closed the connection", self)
        except asyncio.TimeoutError:
            what = "sent no CONNECT" if self.session is None else "keep-alive expired"
            logger.info("closing %r: %s", self, what)
        except PacketTooLargeError as exc:
            logger.warning("closing %r: %s", self, exc)
        except MalformedPacketError as exc:
            logger.warning("closing %r: malformed packet: %s", self, exc)
        except (ConnectionError, OSError) as exc:
            logger.debug("%r: connection error: %s", self, exc)
        except Exception:  # a bug must cost one connection, never the broker
            logger.exception("internal error while serving %r; closing it", self)
        finally:
            self._close()
            if self.session is not None:
                will, self._will = self._will, None
                self._core.detach(self, will)

    def kick(self) -> Will | None:
        """Close because the same client id connected again; returns the will to publish."""
        self.taken_over = True
        will, self._will = self._will, None
        self._writer.transport.abort()
        return will

    def abort(self) -> None:
        self._writer.transport.abort()

    def _close(self) -> None:
        if not self._writer.transport.is_closing():
            self._writer.close()  # flushes what is buffered (e.g. a refusing CONNACK)

    # ------------------------------------------------------------ reading

    async def _timed(self, awaitable: Awaitable[T], timeout: float | None) -> T:
        if timeout is None:
            return await awaitable
        return await asyncio.wait_for(awaitable, timeout)

    async def _read_packet(self, timeout: float | None, first_packet: bool = False) -> Packet:
        # Every packet has at least two bytes: type/flags and one remaining-length byte.
        first, byte = await self._timed(self._reader.readexactly(2), timeout)
        if first_packet and first >> 4 != PacketType.CONNECT:
            raise MalformedPacketError(f"first packet has type {first >> 4}, not CONNECT")
        length, index = byte & 0x7F, 0
        while byte & 0x80:
            index += 1
            if index == 4:
                raise MalformedPacketError("remaining length is longer than four bytes")
            byte = (await self._timed(self._reader.readexactly(1), timeout))[0]
            length |= (byte & 0x7F) << (7 * index)
        size = 2 + index + length
        limit = self._core.max_packet_size
        if size > limit:
            raise PacketTooLargeError(f"packet of {size} bytes exceeds max_packet_size {limit}")
        if first_packet and size > MAX_CONNECT_SIZE:
            raise PacketTooLargeError(f"CONNECT of {size} bytes cannot be valid")
        if length <= BODY_CHUNK:
            body = await self._timed(self._reader.readexactly(length), timeout)
        else:
            # Memory grows with what actually arrives, not with what the header announces.
            chunks = []
            for start in range(0, length, BODY_CHUNK):
                chunk_size = min(BODY_CHUNK, length - start)
                chunks.append(await self._timed(self._reader.readexactly(chunk_size), timeout))
            body = b"".join(chunks)
        return decode(first, body)

    # ------------------------------------------------------------ CONNECT

    async def _handshake(self) -> bool:
        try:
            packet = await self._read_packet(self._core.connect_timeout, first_packet=True)
        except UnsupportedProtocolError as exc:
            logger.info("refusing %s: %s", self.peer, exc)
            self._write(encode_connack(False, ConnackCode.UNACCEPTABLE_PROTOCOL_VERSION))
            return False
        if not isinstance(packet, Connect):
            raise MalformedPacketError(f"first packet is {type(packet).__name__}, not CONNECT")
        code = self._check_client_id(packet)
        if code is ConnackCode.ACCEPTED:
            code = self._core.authenticate(packet)
        if code is not ConnackCode.ACCEPTED:
            logger.info("refusing %s (client id %r): %s", self.peer, packet.client_id, code.name)
            self._write(encode_connack(False, code))
            return False
        self.client_id = packet.client_id or f"auto-{uuid.uuid4().hex}"
        if packet.keepalive:
            self._keepalive_timeout = 1.5 * packet.keepalive
        self._will = packet.will
        session, present = self._core.attach(self, self.client_id, packet.clean_session)
        self.session = session
        self._write(encode_connack(present, ConnackCode.ACCEPTED))
        logger.debug(
            "%r connected (clean=%s, keepalive=%d)", self, packet.clean_session, packet.keepalive
        )
        session.resume()
        return True

    @staticmethod
    def _check_client_id(packet: Connect) -> ConnackCode:
        if packet.client_id:
            return ConnackCode.ACCEPTED
        if packet.protocol_level == 3 or not packet.clean_session:
            return ConnackCode.IDENTIFIER_REJECTED  # 3.1 needs an id; so does a kept session
        return ConnackCode.ACCEPTED

    # ------------------------------------------------------------ packets after CONNECT

    def _handle(self, packet: Packet) -> bool:
        """Answer one packet; returns False on DISCONNECT."""
        session = self.session
        assert session is not None
        if isinstance(packet, Publish):
            self._on_publish(session, packet)
        elif isinstance(packet, Ack):
            self._on_ack(session, packet)
        elif isinstance(packet, Subscribe):
            self._on_subscribe(session, packet)
        elif isinstance(packet, Unsubscribe):
            for topic_filter in packet.topics:
                self._core.unsubscribe(session, topic_filter)
            self._write(encode_ack(PacketType.UNSUBACK, packet.packet_id))
        elif isinstance(packet, Control) and packet.kind is PacketType.PINGREQ:
            self._write(_PINGRESP)
        elif isinstance(packet, Control) and packet.kind is PacketType.DISCONNECT:
            self._will = None  # a clean DISCONNECT discards the will (spec 3.14.4)
            return False
        else:
            raise MalformedPacketError(f"a client may not send {type(packet).__name__} here")
        return True

    def _on_publish(self, session: Session, packet: Publish) -> None:
        message = Message(packet.topic, packet.payload, packet.qos, packet.retain)
        if packet.qos == 0:
            self._core.publish(message)
        elif packet.qos == 1:
            self._core.publish(message)
            self._write(encode_ack(PacketType.PUBACK, packet.packet_id))
        else:
            # Deliver on PUBLISH, remember the id until PUBREL: a resent PUBLISH with the
            # same id is acknowledged again but not delivered twice (spec 4.3.3).
            if packet.packet_id not in session.incoming_qos2:
                session.incoming_qos2.add(packet.packet_id)
                self._core.publish(message)
            self._write(encode_ack(PacketType.PUBREC, packet.packet_id))

    def _on_ack(self, session: Session, packet: Ack) -> None:
        if packet.kind is PacketType.PUBACK:
            session.on_puback(packet.packet_id)
        elif packet.kind is PacketType.PUBREC:
            session.on_pubrec(packet.packet_id)
        elif packet.kind is PacketType.PUBREL:
            session.incoming_qos2.discard(packet.packet_id)
            self._write(encode_ack(PacketType.PUBCOMP, packet.packet_id))
        elif packet.kind is PacketType.PUBCOMP:
            session.on_pubcomp(packet.packet_id)
        else:
            raise MalformedPacketError(f"a client may not send {packet.kind.name}")

    def _on_subscribe(self, session: Session, packet: Subscribe) -> None:
        codes: list[int] = []
        granted: list[tuple[str, int]] = []
        for topic_filter, requested in packet.topics:
            if not is_valid_topic_filter(topic_filter):
                logger.info("%r: refusing invalid topic filter %r", self, topic_filter)
                codes.append(0x80)
                continue
            qos = min(requested, 2)
            self._core.subscribe(session, topic_filter, qos)
            codes.append(qos)
            granted.append((topic_filter, qos))
        self._write(encode_suback(packet.packet_id, codes))
        for topic_filter, qos in granted:
            for retained in self._core.retained_matching(topic_filter):
                qos_out = min(retained.qos, qos)
                session.deliver(Message(retained.topic, retained.payload, qos_out, retain=True))

    # ------------------------------------------------------------ writing (Outbox)

    def _write(self, data: bytes) -> None:
        if data and not self._writer.transport.is_closing():
            self._writer.write(data)

    def send_publish(self, message: Message, packet_id: int, dup: bool) -> None:
        payload = message.payload
        transport = self._writer.transport
        if message.qos == 0 and transport.get_write_buffer_size() > MAX_UNSENT_QOS0:
            self._dropped_qos0 += 1
            if self._dropped_qos0 % 1000 == 1:
                logger.warning(
                    "%r is not reading: dropped %d QoS 0 message(s)", self, self._dropped_qos0
                )
            return
        header = encode_publish_header(
            message.topic, len(payload), message.qos, message.retain, dup, packet_id
        )
        if len(payload) < SMALL_PAYLOAD:
            self._write(header + payload)
        else:  # two writes: the payload itself is handed to the transport uncopied
            self._write(header)
            self._write(payload)

    def send_pubrel(self, packet_id: int) -> None:
        self._write(encode_ack(PacketType.PUBREL, packet_id))
