"""MQTT 3.1.1 / 3.1 packet codec.

A packet is a fixed header byte (type and flags), a variable-length "remaining
length", and a body. The broker reads the body with one ``readexactly`` and hands it
to :func:`decode`; encoders return bytes, except that the PUBLISH header is encoded
apart from its payload (:func:`encode_publish_header`) so a multi-megabyte payload is
written to each subscriber without being copied into a new buffer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from coordinator.broker.topic_match import is_valid_topic_name
from edge_client.errors import ProtocolError

MAX_REMAINING_LENGTH = 268_435_455  # largest value four length bytes can carry (spec 2.2.3)
SUBACK_FAILURE = 0x80
PROTOCOL_LEVELS = {"MQTT": 4, "MQIsdp": 3}  # protocol name -> the level it must come with


class PacketType(IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class ConnackCode(IntEnum):
    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


class MalformedPacketError(ProtocolError):
    """Bytes on the wire that do not form a valid MQTT packet."""


class UnsupportedProtocolError(MalformedPacketError):
    """A well-formed CONNECT for a protocol level the broker does not speak (e.g. MQTT 5)."""

    def __init__(self, name: str, level: int) -> None:
        super().__init__(f"unsupported protocol {name!r} level {level}")
        self.name = name
        self.level = level


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True)
class Connect:
    client_id: str
    clean_session: bool = True
    keepalive: int = 0  # seconds; 0 disables the keep-alive check
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    protocol_level: int = 4  # 4 = MQTT 3.1.1, 3 = MQTT 3.1 (protocol name "MQIsdp")


@dataclass(frozen=True)
class Connack:
    session_present: bool
    return_code: int


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0  # only for QoS 1 and 2


@dataclass(frozen=True)
class Ack:
    """The packets that carry only a packet id: PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK."""

    kind: PacketType
    packet_id: int


@dataclass(frozen=True)
class Subscribe:
    packet_id: int
    topics: tuple[tuple[str, int], ...]  # (filter, requested QoS)


@dataclass(frozen=True)
class Suback:
    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True)
class Unsubscribe:
    packet_id: int
    topics: tuple[str, ...]


@dataclass(frozen=True)
class Control:
    """The packets without a body: PINGREQ, PINGRESP, DISCONNECT."""

    kind: PacketType


Packet = Connect | Connack | Publish | Ack | Subscribe | Suback | Unsubscribe | Control

_ACK_KINDS = {
    PacketType.PUBACK,
    PacketType.PUBREC,
    PacketType.PUBREL,
    PacketType.PUBCOMP,
    PacketType.UNSUBACK,
}
_CONTROL_KINDS = {PacketType.PINGREQ, PacketType.PINGRESP, PacketType.DISCONNECT}
# Packet types whose fixed-header flags must be 0b0010 (spec 2.2.2); all others but
# PUBLISH must have 0.
_FLAGS_0010 = {PacketType.PUBREL, PacketType.SUBSCRIBE, PacketType.UNSUBSCRIBE}


class _Reader:
    """Reads MQTT primitives from a packet body, raising on truncation."""

    __slots__ = ("_view", "_pos")

    def __init__(self, body: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(body)
        self._pos = 0

    def _take(self, n: int) -> memoryview:
        end = self._pos + n
        if end > len(self._view):
            raise MalformedPacketError("packet body is truncated")
        chunk = self._view[self._pos : end]
        self._pos = end
        return chunk

    def u8(self) -> int:
        return self._take(1)[0]

    def u16(self) -> int:
        high, low = self._take(2)
        return high << 8 | low

    def binary(self) -> bytes:
        return bytes(self._take(self.u16()))

    def utf8(self) -> str:
        try:
            text = str(self._take(self.u16()), "utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedPacketError("string is not valid UTF-8") from exc
        if "\0" in text:
            raise MalformedPacketError("string contains U+0000")
        return text

    def packet_id(self) -> int:
        packet_id = self.u16()
        if packet_id == 0:
            raise MalformedPacketError("packet id 0 is not allowed")
        return packet_id

    def rest(self) -> bytes:
        chunk = self._view[self._pos :]
        self._pos = len(self._view)
        return bytes(chunk)

    def at_end(self) -> bool:
        return self._pos == len(self._view)

    def end(self) -> None:
        if not self.at_end():
            raise MalformedPacketError("unexpected bytes after the packet body")


# ---------------------------------------------------------------- decoding


def decode_remaining_length(data: bytes | bytearray) -> tuple[int, int] | None:
    """Decode a remaining length at the start of ``data``.

    Returns ``(value, bytes used)``, or None when ``data`` ends before the value does.
    """
    value = 0
    for index in range(min(len(data), 4)):
        byte = data[index]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, index + 1
    if len(data) >= 4:
        raise MalformedPacketError("remaining length is longer than four bytes")
    return None


def decode(first_byte: int, body: bytes | bytearray | memoryview) -> Packet:
    """Decode one packet from its fixed-header byte and its complete body."""
    try:
        kind = PacketType(first_byte >> 4)
    except ValueError as exc:
        raise MalformedPacketError(f"reserved packet type {first_byte >> 4}") from exc
    flags = first_byte & 0x0F
    if kind is PacketType.PUBLISH:
        return _decode_publish(flags, _Reader(body))
    expected_flags = 0b0010 if kind in _FLAGS_0010 else 0
    if flags != expected_flags:
        raise MalformedPacketError(f"invalid flags {flags:#06b} for {kind.name}")
    reader = _Reader(body)
    packet: Packet
    if kind is PacketType.CONNECT:
        packet = _decode_connect(reader)
    elif kind is PacketType.CONNACK:
        ack_flags = reader.u8()
        packet = Connack(bool(ack_flags & 1), reader.u8())
    elif kind in _ACK_KINDS:
        packet = Ack(kind, reader.u16())
    elif kind is PacketType.SUBSCRIBE:
        packet = _decode_subscribe(reader)
    elif kind is PacketType.SUBACK:
        packet_id = reader.u16()
        packet = Suback(packet_id, tuple(reader.rest()))
    elif kind is PacketType.UNSUBSCRIBE:
        packet = _decode_unsubscribe(reader)
    else:  # PINGREQ, PINGRESP, DISCONNECT
        packet = Control(kind)
    reader.end()
    return packet


def _decode_connect(reader: _Reader) -> Connect:
    name = reader.utf8()
    level = reader.u8()
    if name not in PROTOCOL_LEVELS:
        raise MalformedPacketError(f"unknown protocol name {name!r}")
    if PROTOCOL_LEVELS[name] != level:
        raise UnsupportedProtocolError(name, level)
    flags = reader.u8()
    keepalive = reader.u16()
    if flags & 0x01:
        raise MalformedPacketError("reserved CONNECT flag is set")
    will_flag, will_qos, will_retain = bool(flags & 0x04), (flags >> 3) & 0x03, bool(flags & 0x20)
    if will_qos == 3 or (not will_flag and (will_qos or will_retain)):
        raise MalformedPacketError("invalid will QoS or retain flag")
    password_flag, username_flag = bool(flags & 0x40), bool(flags & 0x80)
    if password_flag and not username_flag and level == 4:
        raise MalformedPacketError("password flag set without user name flag")
    client_id = reader.utf8()
    will = None
    if will_flag:
        topic = reader.utf8()
        if not is_valid_topic_name(topic):
            raise MalformedPacketError(f"invalid will topic {topic!r}")
        will = Will(topic, reader.binary(), will_qos, will_retain)
    username = reader.utf8() if username_flag else None
    password = reader.binary() if password_flag and not reader.at_end() else None
    return Connect(
        client_id=client_id,
        clean_session=bool(flags & 0x02),
        keepalive=keepalive,
        will=will,
        username=username,
        password=password,
        protocol_level=level,
    )


def _decode_publish(flags: int, reader: _Reader) -> Publish:
    dup, qos, retain = bool(flags & 0x08), (flags >> 1) & 0x03, bool(flags & 0x01)
    if qos == 3:
        raise MalformedPacketError("PUBLISH with QoS 3")
    topic = reader.utf8()
    if not is_valid_topic_name(topic):
        raise MalformedPacketError(f"invalid topic name {topic!r}")
    packet_id = reader.packet_id() if qos else 0
    return Publish(topic, reader.rest(), qos, retain, dup, packet_id)


def _decode_subscribe(reader: _Reader) -> Subscribe:
    packet_id = reader.packet_id()
    topics: list[tuple[str, int]] = []
    while not reader.at_end():
        topic_filter = reader.utf8()
        qos = reader.u8()
        if qos > 2:
            raise MalformedPacketError(f"requested QoS byte {qos:#04x} is invalid")
        topics.append((topic_filter, qos))
    if not topics:
        raise MalformedPacketError("SUBSCRIBE without any topic filter")
    return Subscribe(packet_id, tuple(topics))


def _decode_unsubscribe(reader: _Reader) -> Unsubscribe:
    packet_id = reader.packet_id()
    topics: list[str] = []
    while not reader.at_end():
        topics.append(reader.utf8())
    if not topics:
        raise MalformedPacketError("UNSUBSCRIBE without any topic filter")
    return Unsubscribe(packet_id, tuple(topics))


# ---------------------------------------------------------------- encoding


def encode_remaining_length(length: int) -> bytes:
    if not 0 <= length <= MAX_REMAINING_LENGTH:
        raise ValueError(f"remaining length {length} is out of range")
    out = bytearray()
    while True:
        byte, length = length & 0x7F, length >> 7
        out.append(byte | 0x80 if length else byte)
        if not length:
            return bytes(out)


def _string(text: str) -> bytes:
    return _binary(text.encode("utf-8"))


def _binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("MQTT strings are limited to 65535 bytes")
    return struct.pack("!H", len(data)) + data


def _packet(kind: PacketType, flags: int, body: bytes = b"") -> bytes:
    return bytes([kind << 4 | flags]) + encode_remaining_length(len(body)) + body


def encode_publish_header(
    topic: str,
    payload_size: int,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    packet_id: int = 0,
) -> bytes:
    """Fixed and variable header of a PUBLISH; the payload follows it on the wire."""
    variable = _string(topic) + (struct.pack("!H", packet_id) if qos else b"")
    flags = (0x08 if dup else 0) | qos << 1 | (0x01 if retain else 0)
    first = bytes([PacketType.PUBLISH << 4 | flags])
    return first + encode_remaining_length(len(variable) + payload_size) + variable


def encode_connack(session_present: bool, return_code: int) -> bytes:
    return _packet(PacketType.CONNACK, 0, bytes([int(session_present), return_code]))


def encode_ack(kind: PacketType, packet_id: int) -> bytes:
    return _packet(kind, 0b0010 if kind in _FLAGS_0010 else 0, struct.pack("!H", packet_id))


def encode_suback(packet_id: int, return_codes: Iterable[int]) -> bytes:
    return _packet(PacketType.SUBACK, 0, struct.pack("!H", packet_id) + bytes(return_codes))


def encode_control(kind: PacketType) -> bytes:
    return _packet(kind, 0)


def encode_connect(packet: Connect) -> bytes:
    name = "MQTT" if packet.protocol_level == 4 else "MQIsdp"
    flags = 0x02 if packet.clean_session else 0
    payload = _string(packet.client_id)
    if packet.will is not None:
        flags |= 0x04 | packet.will.qos << 3 | (0x20 if packet.will.retain else 0)
        payload += _string(packet.will.topic) + _binary(packet.will.payload)
    if packet.username is not None:
        flags |= 0x80
        payload += _string(packet.username)
    if packet.password is not None:
        flags |= 0x40
        payload += _binary(packet.password)
    header = _string(name) + bytes([packet.protocol_level, flags])
    return _packet(PacketType.CONNECT, 0, header + struct.pack("!H", packet.keepalive) + payload)


def encode(packet: Packet) -> bytes:
    """Encode any packet (the broker itself uses the specialised encoders above)."""
    if isinstance(packet, Connect):
        return encode_connect(packet)
    if isinstance(packet, Connack):
        return encode_connack(packet.session_present, packet.return_code)
    if isinstance(packet, Publish):
        size = len(packet.payload)
        header = encode_publish_header(
            packet.topic, size, packet.qos, packet.retain, packet.dup, packet.packet_id
        )
        return header + packet.payload
    if isinstance(packet, Ack):
        return encode_ack(packet.kind, packet.packet_id)
    if isinstance(packet, Subscribe):
        body = b"".join(_string(topic) + bytes([qos]) for topic, qos in packet.topics)
        return _packet(PacketType.SUBSCRIBE, 0b0010, struct.pack("!H", packet.packet_id) + body)
    if isinstance(packet, Suback):
        return encode_suback(packet.packet_id, packet.return_codes)
    if isinstance(packet, Unsubscribe):
        body = b"".join(_string(topic) for topic in packet.topics)
        return _packet(PacketType.UNSUBSCRIBE, 0b0010, struct.pack("!H", packet.packet_id) + body)
    return encode_control(packet.kind)
