"""Round trips and malformed input of the MQTT packet codec."""

from __future__ import annotations

import pytest

from coordinator.broker.packets import (
    Ack,
    Connack,
    Connect,
    Control,
    MalformedPacketError,
    Packet,
    PacketType,
    Publish,
    Suback,
    Subscribe,
    Unsubscribe,
    UnsupportedProtocolError,
    Will,
    decode,
    decode_remaining_length,
    encode,
    encode_remaining_length,
)


def _split(data: bytes) -> tuple[int, bytes]:
    """(first byte, body) of one encoded packet."""
    decoded = decode_remaining_length(data[1:])
    assert decoded is not None
    length, used = decoded
    body = data[1 + used :]
    assert len(body) == length
    return data[0], body


@pytest.mark.parametrize(
    "packet",
    [
        Connect("dev-1"),
        Connect("dev-1", clean_session=False, keepalive=30, username="u", password=b"p\x00w"),
        Connect("d", will=Will("status/d", b"offline", qos=1, retain=True), keepalive=65535),
        Connect("old", protocol_level=3, username="u"),
        Connack(True, 0),
        Connack(False, 5),
        Publish("a/b", b"payload"),
        Publish("a/b", b"", qos=1, packet_id=1),
        Publish("fl/job/round/3/update/dev-1", bytes(range(256)) * 100, 2, True, True, 65535),
        Publish("ünïcödé/topic", b"x"),
        Ack(PacketType.PUBACK, 7),
        Ack(PacketType.PUBREC, 8),
        Ack(PacketType.PUBREL, 9),
        Ack(PacketType.PUBCOMP, 10),
        Ack(PacketType.UNSUBACK, 11),
        Subscribe(3, (("a/#", 0), ("+/b", 1), ("c", 2))),
        Suback(3, (0, 1, 2, 0x80)),
        Unsubscribe(4, ("a/#", "c")),
        Control(PacketType.PINGREQ),
        Control(PacketType.PINGRESP),
        Control(PacketType.DISCONNECT),
    ],
    ids=lambda packet: type(packet).__name__,
)
def test_round_trip(packet: Packet) -> None:
    data = encode(packet)

    decoded = decode(*_split(data))

    assert decoded == packet


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_remaining_length_boundaries(value: int, encoded: bytes) -> None:
    assert encode_remaining_length(value) == encoded
    assert decode_remaining_length(encoded + b"rest") == (value, len(encoded))


def test_remaining_length_incomplete_and_too_long() -> None:
    assert decode_remaining_length(b"\x80\x80") is None
    with pytest.raises(MalformedPacketError):
        decode_remaining_length(b"\xff\xff\xff\xff\x01")
    with pytest.raises(ValueError):
        encode_remaining_length(268_435_456)


def test_publish_header_and_payload_are_separable() -> None:
    payload = b"x" * 300
    data = encode(Publish("t", payload, qos=1, packet_id=5))

    first, body = _split(data)

    assert first == 0x32
    assert body == b"\x00\x01t\x00\x05" + payload


@pytest.mark.parametrize(
    ("first", "body", "reason"),
    [
        (0x00, b"", "reserved packet type"),
        (0xF0, b"", "reserved packet type"),
        (0x36, b"\x00\x01t\x00\x01", "QoS 3"),
        (0x30, b"\x00\x03a/+", "invalid topic"),
        (0x30, b"\x00\x00", "invalid topic"),
        (0x32, b"\x00\x01t\x00\x00", "packet id 0"),
        (0x30, b"\x00\x05ab", "truncated"),
        (0x30, b"\x00\x02\xff\xfe", "UTF-8"),
        (0x30, b"\x00\x03a\x00b", r"U\+0000"),
        (0x80, b"\x00\x01\x00\x01a\x00", "invalid flags"),
        (0x82, b"\x00\x01", "without any topic"),
        (0x82, b"\x00\x01\x00\x01a\x03", "QoS byte"),
        (0x82, b"\x00\x01\x00\x01a\x41", "QoS byte"),
        (0xA2, b"\x00\x01", "without any topic"),
        (0x60, b"\x00\x01", "invalid flags"),
        (0xC0, b"\x00", "unexpected bytes"),
        (0xE1, b"", "invalid flags"),
    ],
)
def test_malformed_packets_are_rejected(first: int, body: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacketError, match=reason):
        decode(first, body)


def _connect_body(name: bytes, level: int, flags: int, rest: bytes = b"\x00\x01c") -> bytes:
    return len(name).to_bytes(2, "big") + name + bytes([level, flags]) + b"\x00\x3c" + rest


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (_connect_body(b"MQTT", 4, 0x03), "reserved CONNECT flag"),
        (_connect_body(b"MQTT", 4, 0x18), "will QoS"),  # will QoS 3
        (_connect_body(b"MQTT", 4, 0x08), "will QoS"),  # will QoS without will flag
        (_connect_body(b"MQTT", 4, 0x20), "will QoS or retain"),  # will retain without will
        (_connect_body(b"MQTT", 4, 0x40, b"\x00\x01c\x00\x01p"), "password flag"),
        (_connect_body(b"HTTP", 4, 0x02), "unknown protocol name"),
        (_connect_body(b"MQTT", 4, 0x02, b"\x00\x01cXYZ"), "unexpected bytes"),
    ],
)
def test_malformed_connect(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacketError, match=reason):
        decode(0x10, body)


@pytest.mark.parametrize(("name", "level"), [(b"MQTT", 5), (b"MQTT", 3), (b"MQIsdp", 4)])
def test_unsupported_protocol_level(name: bytes, level: int) -> None:
    # MQTT 5 CONNECTs carry properties here; the level is checked before they matter.
    with pytest.raises(UnsupportedProtocolError) as caught:
        decode(0x10, _connect_body(name, level, 0x02, b"\x00\x00\x01c"))

    assert caught.value.level == level
