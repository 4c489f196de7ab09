"""Protocol levels, authentication, large payloads, many clients and hostile input."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
from collections.abc import Iterator

import pytest

from coordinator.broker import EmbeddedBroker, connection
from coordinator.broker.packets import Connack, Connect, Subscribe, Will, encode_connect
from tests.fixtures.brokers import BrokerHandle, MQTTConnectError, RawClient, mqtt_client


@pytest.fixture
def auth_broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(port=0, users={"alice": "s3cret", "bob": ""}) as broker:
        yield broker


WILL = Will("status/dev-1", b"gone")


def _mqtt5_connect(client_id: bytes) -> bytes:
    body = b"\x00\x04MQTT\x05\x02\x00\x3c" + b"\x00" + len(client_id).to_bytes(2, "big") + client_id
    return bytes([0x10, len(body)]) + body


# ---------------------------------------------------------------- protocol levels


def test_mqtt_3_1_clients_are_accepted(any_broker: BrokerHandle) -> None:
    with RawClient(any_broker) as raw:
        connack = raw.connect("legacy", protocol_level=3)
    assert connack == Connack(False, 0)


def test_unsupported_protocol_level_gets_return_code_1(any_broker: BrokerHandle) -> None:
    body = b"\x00\x04MQTT\x07\x02\x00\x3c\x00\x01c"
    with RawClient(any_broker) as raw:
        raw.send(bytes([0x10, len(body)]) + body)
        connack = raw.recv()
        closed = raw.closed_by_broker()
    assert connack == Connack(False, 1)
    assert closed


def test_mqtt5_clients_get_return_code_1(embedded_broker: EmbeddedBroker) -> None:
    with RawClient(embedded_broker) as raw:
        raw.send(_mqtt5_connect(b"v5-client"))
        connack = raw.recv()
        closed = raw.closed_by_broker()
    assert connack == Connack(False, 1)
    assert closed


@pytest.mark.parametrize(("clean", "code"), [(True, 0), (False, 2)])
def test_empty_client_id(any_broker: BrokerHandle, clean: bool, code: int) -> None:
    with RawClient(any_broker) as raw:
        connack = raw.connect("", clean_session=clean)
    assert connack.return_code == code


# ---------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    ("username", "password", "code"),
    [
        ("alice", b"s3cret", 0),
        ("bob", b"", 0),
        ("alice", b"wrong", 4),
        ("alice", None, 4),
        ("mallory", b"s3cret", 4),
        (None, None, 5),
    ],
)
def test_authentication_return_codes(
    auth_broker: EmbeddedBroker, username: str | None, password: bytes | None, code: int
) -> None:
    with RawClient(auth_broker) as raw:
        connack = raw.connect("dev-1", username=username, password=password)
        closed = raw.closed_by_broker(timeout=1.0) if code else None
    assert connack.return_code == code
    assert closed in (None, True)


def test_authenticated_paho_client_works_and_wrong_one_is_refused(
    auth_broker: EmbeddedBroker,
) -> None:
    with mqtt_client(auth_broker, "good", username="alice", password="s3cret") as good:
        good.subscribe_wait("t", 1)
        good.publish_wait("t", b"ok", qos=1)
        [message] = good.collector.wait_for("t")
        bad = mqtt_client(auth_broker, "bad", username="alice", password="nope")
        with pytest.raises(MQTTConnectError) as refused, bad:
            pass
    assert message.payload == b"ok"
    assert "Bad user name or password" in str(refused.value.reason)


# ---------------------------------------------------------------- size and scale


def test_five_megabyte_payload_round_trip(any_broker: BrokerHandle) -> None:
    payload = os.urandom(5 * 1024 * 1024)
    with mqtt_client(any_broker, "sub") as sub, mqtt_client(any_broker, "pub") as pub:
        sub.subscribe_wait("fl/weights", 1)

        pub.publish_wait("fl/weights", payload, qos=1, retain=True)

        [live] = sub.collector.wait_for("fl/weights", timeout=10.0)
        with mqtt_client(any_broker, "late") as late:
            late.subscribe_wait("fl/weights", 1)
            [retained] = late.collector.wait_for("fl/weights", timeout=10.0)
    assert live.payload == payload
    assert retained.payload == payload


def test_fifty_concurrent_clients(any_broker: BrokerHandle) -> None:
    count = 50
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(mqtt_client(any_broker, f"c{i}")) for i in range(count)]
        for client in clients:
            client.subscribe_wait("all/#", 1)

        for index, client in enumerate(clients):
            client.publish(f"all/{index}", str(index), qos=1)

        received = [c.collector.wait_for("all/#", count, timeout=10.0) for c in clients]
    for messages in received:
        assert sorted(int(m.payload) for m in messages) == list(range(count))


# ---------------------------------------------------------------- hostile input


def _broker_still_serves(broker: BrokerHandle) -> None:
    with mqtt_client(broker, "probe") as probe:
        probe.subscribe_wait("probe", 1)
        probe.publish_wait("probe", b"alive", qos=1)
        probe.collector.wait_for("probe")


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff\xff\xff\xff\xff",  # reserved type, endless length
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x10\xff\xff\xff\xff\x01",  # remaining length of five bytes
        b"\x30\x03\x00\x01t",  # PUBLISH before CONNECT
        b"\x10\x02\x00\x04",  # truncated CONNECT, then silence
    ],
    ids=["reserved", "http", "long-length", "no-connect", "truncated"],
)
def test_malformed_bytes_close_only_that_connection(
    any_broker: BrokerHandle, garbage: bytes
) -> None:
    with mqtt_client(any_broker, "bystander") as bystander:
        bystander.subscribe_wait("b", 1)
        with RawClient(any_broker) as raw:
            raw.send(garbage)
            closed = raw.closed_by_broker(timeout=3.0)

        bystander.publish_wait("b", b"fine", qos=1)
        bystander.collector.wait_for("b")
        _broker_still_serves(any_broker)
    assert closed


def test_malformed_packet_after_connect_publishes_the_will(any_broker: BrokerHandle) -> None:
    with mqtt_client(any_broker, "watcher") as watcher, RawClient(any_broker) as raw:
        watcher.subscribe_wait("status/#", 1)
        raw.send(encode_connect(Connect("dev-1", will=WILL)))
        raw.recv()

        raw.send(b"\x36\x05\x00\x01t\x00\x01")  # PUBLISH with QoS 3

        closed = raw.closed_by_broker()
        [will] = watcher.collector.wait_for("status/dev-1")
    assert closed
    assert will.payload == b"gone"


def test_random_bytes_never_take_the_embedded_broker_down(
    embedded_broker: EmbeddedBroker,
) -> None:
    rng = random.Random(1234)
    connect = encode_connect(Connect("fuzz"))
    for round_index in range(30):
        noise = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        prefix = connect if round_index % 2 else b""
        with socket.create_connection((embedded_broker.host, embedded_broker.port)) as sock:
            sock.sendall(prefix + noise)
            sock.shutdown(socket.SHUT_WR)
    _broker_still_serves(embedded_broker)


def test_oversized_packet_closes_only_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        EmbeddedBroker(port=0, max_packet_size=64 * 1024) as broker,
        mqtt_client(broker, "sub") as sub,
        mqtt_client(broker, "big") as big,
    ):
        sub.subscribe_wait("t/#", 1)
        with caplog.at_level(logging.WARNING, logger="coordinator.broker"):
            big.publish("t/big", b"x" * 100_000, qos=1)
            dropped = big.disconnected.wait(5.0)

        with mqtt_client(broker, "small") as small:
            small.publish_wait("t/small", b"y" * 60_000, qos=1)
        [message] = sub.collector.wait_for("t/#")
        sub_connected = sub.is_connected()
    assert dropped
    assert message.topic == "t/small"
    assert sub_connected
    assert "exceeds max_packet_size 65536" in caplog.text


def test_qos0_is_dropped_for_a_client_that_stops_reading(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(connection, "MAX_UNSENT_QOS0", 1024 * 1024)
    megabyte = b"x" * (1024 * 1024)
    with EmbeddedBroker(port=0) as broker, RawClient(broker) as stuck:
        stuck.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        stuck.connect("stuck")
        stuck.send(Subscribe(1, (("bulk", 0),)))
        stuck.recv()
        with caplog.at_level(logging.WARNING, logger="coordinator.broker"):
            with mqtt_client(broker, "pub") as pub:
                for _ in range(30):
                    pub.publish_wait("bulk", megabyte)
                _broker_still_serves(broker)  # the loop is not blocked by the stuck client

            received = 0
            with contextlib.suppress(TimeoutError):
                while stuck.recv(timeout=0.5):
                    received += 1
    assert 0 < received < 30
    assert "is not reading: dropped" in caplog.text
