"""Wills, keep-alive, persistent sessions, takeover and the QoS 1/2 resend rules."""

from __future__ import annotations

import time

import pytest

from coordinator.broker import EmbeddedBroker
from coordinator.broker.packets import (
    Ack,
    Control,
    PacketType,
    Publish,
    Suback,
    Subscribe,
    Will,
)
from tests.fixtures.brokers import BrokerHandle, RawClient, mqtt_client

STATUS_WILL = Will("status/dev-1", b"offline", qos=1, retain=True)


def test_will_is_published_when_the_socket_closes_abruptly(any_broker: BrokerHandle) -> None:
    with mqtt_client(any_broker, "watcher") as watcher:
        watcher.subscribe_wait("status/#", 1)
        raw = RawClient(any_broker)
        raw.connect("dev-1", will=STATUS_WILL, keepalive=60)

        raw.close()  # no DISCONNECT

        [will] = watcher.collector.wait_for("status/dev-1")
        with mqtt_client(any_broker, "late") as late:
            late.subscribe_wait("status/#", 1)
            [retained] = late.collector.wait_for("status/dev-1")
    assert (will.payload, will.qos, will.retain) == (b"offline", 1, False)
    assert (retained.payload, retained.retain) == (b"offline", True)  # will retain honoured


@pytest.mark.slow
def test_will_is_published_when_keepalive_expires(any_broker: BrokerHandle) -> None:
    with mqtt_client(any_broker, "watcher") as watcher:
        watcher.subscribe_wait("status/#", 1)
        raw = RawClient(any_broker)
        raw.connect("dev-1", will=STATUS_WILL, keepalive=1)
        started = time.monotonic()

        # Silence: the broker must give up after 1.5 x keepalive and send the will.
        # (Mosquitto 2.0 checks keep-alives only every few seconds: it needs ~6 s here.)
        watcher.collector.wait_for("status/dev-1", timeout=10.0)
        elapsed = time.monotonic() - started
        closed = raw.closed_by_broker(timeout=2.0)
        raw.close()
    assert elapsed >= 1.4
    if isinstance(any_broker, EmbeddedBroker):
        assert elapsed <= 2.5
    assert closed


def test_pings_keep_a_connection_alive(any_broker: BrokerHandle) -> None:
    with mqtt_client(any_broker, "watcher") as watcher, RawClient(any_broker) as raw:
        watcher.subscribe_wait("status/#", 1)
        raw.connect("dev-1", will=STATUS_WILL, keepalive=1)

        replies = []
        for _ in range(4):  # 2 s, longer than 1.5 x keepalive
            time.sleep(0.5)
            raw.send(Control(PacketType.PINGREQ))
            replies.append(raw.recv())

        watcher.collector.expect_none("status/#", duration=0.1)
    assert replies == [Control(PacketType.PINGRESP)] * 4


def test_no_will_after_a_clean_disconnect(any_broker: BrokerHandle) -> None:
    with mqtt_client(any_broker, "watcher") as watcher:
        watcher.subscribe_wait("status/#", 1)

        with mqtt_client(any_broker, "dev-1", will=STATUS_WILL):
            pass  # leaving the block sends DISCONNECT

        watcher.collector.expect_none("status/#", duration=0.5)


def test_persistent_session_queues_qos1_while_offline(any_broker: BrokerHandle) -> None:
    with mqtt_client(any_broker, "dev-1", clean_session=False) as device:
        device.subscribe_wait("fl/global/#", 1)
    with mqtt_client(any_broker, "coordinator") as coordinator:
        for index in range(3):
            coordinator.publish_wait(f"fl/global/{index}", f"w{index}", qos=1)
        coordinator.publish_wait("fl/global/qos0", b"dropped", qos=0)

    with mqtt_client(any_broker, "dev-1", clean_session=False) as device:
        queued = device.collector.wait_for("fl/global/#", 3)
        device.collector.expect_none("fl/global/qos0", duration=0.3)
        present = device.session_present

    assert present is True
    assert [(m.topic, m.payload) for m in queued] == [
        ("fl/global/0", b"w0"),
        ("fl/global/1", b"w1"),
        ("fl/global/2", b"w2"),
    ]


def test_clean_session_discards_the_stored_session(any_broker: BrokerHandle) -> None:
    with mqtt_client(any_broker, "dev-1", clean_session=False) as device:
        device.subscribe_wait("fl/#", 1)
    with mqtt_client(any_broker, "dev-1", clean_session=True) as device:
        clean_present = device.session_present
    with mqtt_client(any_broker, "coordinator") as coordinator:
        coordinator.publish_wait("fl/x", b"lost", qos=1)

    with mqtt_client(any_broker, "dev-1", clean_session=False) as device:
        device.collector.expect_none("fl/#", duration=0.3)
        fresh_present = device.session_present

    assert clean_present is False
    assert fresh_present is False


def test_same_client_id_takes_over(any_broker: BrokerHandle) -> None:
    with mqtt_client(any_broker, "watcher") as watcher:
        watcher.subscribe_wait("status/#", 1)
        with (
            mqtt_client(any_broker, "dev-1", will=STATUS_WILL) as old,
            mqtt_client(any_broker, "dev-1") as new,
        ):
            kicked = old.disconnected.wait(5.0)
            new.subscribe_wait("echo", 1)
            new.publish_wait("echo", b"still works", qos=1)
            [echo] = new.collector.wait_for("echo")
            # Like Mosquitto: the old connection's will goes out (clean sessions).
            [will] = watcher.collector.wait_for("status/dev-1")
    assert kicked
    assert echo.payload == b"still works"
    assert will.payload == b"offline"


def test_unacknowledged_qos1_is_resent_with_dup(any_broker: BrokerHandle) -> None:
    with RawClient(any_broker) as raw:
        raw.connect("dev-1", clean_session=False)
        raw.send(Subscribe(1, (("w/#", 1),)))
        assert raw.recv() == Suback(1, (1,))
        with mqtt_client(any_broker, "coordinator") as coordinator:
            coordinator.publish_wait("w/1", b"weights", qos=1)
        first = raw.recv()
    # The socket closed without PUBACK.

    with RawClient(any_broker) as raw:
        connack = raw.connect("dev-1", clean_session=False)
        again = raw.recv()
        raw.send(Ack(PacketType.PUBACK, again.packet_id))

    assert isinstance(first, Publish) and isinstance(again, Publish)
    assert connack.session_present
    assert (first.topic, first.payload, first.qos, first.dup) == ("w/1", b"weights", 1, False)
    assert (again.payload, again.packet_id, again.dup) == (b"weights", first.packet_id, True)


def test_qos2_outbound_flow_and_pubrel_resend(any_broker: BrokerHandle) -> None:
    with RawClient(any_broker) as raw:
        raw.connect("dev-1", clean_session=False)
        raw.send(Subscribe(1, (("w/#", 2),)))
        assert raw.recv() == Suback(1, (2,))
        with mqtt_client(any_broker, "coordinator") as coordinator:
            coordinator.publish_wait("w/1", b"exactly once", qos=2)
        publish = raw.recv()
        assert isinstance(publish, Publish) and publish.qos == 2
        raw.send(Ack(PacketType.PUBREC, publish.packet_id))
        pubrel = raw.recv()
    # Gone after PUBREC: on reconnect the broker resends PUBREL, not the message.

    with RawClient(any_broker) as raw:
        raw.connect("dev-1", clean_session=False)
        resent = raw.recv()
        raw.send(Ack(PacketType.PUBCOMP, publish.packet_id))
        raw.send(Control(PacketType.PINGREQ))
        after = raw.recv()

    assert pubrel == Ack(PacketType.PUBREL, publish.packet_id)
    assert resent == Ack(PacketType.PUBREL, publish.packet_id)
    assert after == Control(PacketType.PINGRESP)  # nothing else was pending


def test_qos2_duplicate_publish_is_delivered_once(any_broker: BrokerHandle) -> None:
    with mqtt_client(any_broker, "sub") as sub, RawClient(any_broker) as raw:
        sub.subscribe_wait("u/#", 2)
        raw.connect("dev-1")
        message = Publish("u/dev-1", b"update", qos=2, packet_id=7)

        raw.send(message)
        first = raw.recv()
        raw.send(Publish("u/dev-1", b"update", qos=2, packet_id=7, dup=True))
        second = raw.recv()
        raw.send(Ack(PacketType.PUBREL, 7))
        complete = raw.recv()

        sub.collector.wait_for("u/#")
        sub.collector.expect_none("u/none", duration=0.3)
    assert first == second == Ack(PacketType.PUBREC, 7)
    assert complete == Ack(PacketType.PUBCOMP, 7)
    assert len(sub.collector.matching("u/#")) == 1
