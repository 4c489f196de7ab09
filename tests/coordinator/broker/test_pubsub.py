"""Publish/subscribe, wildcards and retained messages, on Mosquitto and the embedded broker."""

from __future__ import annotations

import pytest

from coordinator.broker.packets import Suback, Subscribe
from tests.fixtures.brokers import BrokerHandle, RawClient, mqtt_client


@pytest.mark.parametrize(
    ("publish_qos", "subscribe_qos"),
    [(0, 0), (1, 1), (2, 2), (2, 1), (1, 0), (0, 2), (1, 2)],
)
def test_delivery_qos_is_min_of_publish_and_subscription(
    any_broker: BrokerHandle, publish_qos: int, subscribe_qos: int
) -> None:
    with mqtt_client(any_broker, "sub") as sub, mqtt_client(any_broker, "pub") as pub:
        granted = sub.subscribe_wait("fl/round", subscribe_qos)

        pub.publish_wait("fl/round", b"hello", qos=publish_qos)

        [message] = sub.collector.wait_for("fl/round")
    assert granted == [subscribe_qos]
    assert message.payload == b"hello"
    assert message.qos == min(publish_qos, subscribe_qos)
    assert message.retain is False


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_many_messages_keep_their_order(any_broker: BrokerHandle, qos: int) -> None:
    # Ordering is guaranteed per QoS level only (spec 4.6), so one level at a time.
    with mqtt_client(any_broker, "sub") as sub, mqtt_client(any_broker, "pub") as pub:
        sub.subscribe_wait("seq", 2)

        for index in range(200):
            pub.publish("seq", str(index), qos=qos)

        messages = sub.collector.wait_for("seq", 200)
    assert [int(m.payload) for m in messages] == list(range(200))


def test_wildcard_subscriptions(any_broker: BrokerHandle) -> None:
    topics = ["fl/job1/status", "fl/job1/round/3", "fl/job2/status", "other/x", "fl"]
    with mqtt_client(any_broker, "sub") as sub, mqtt_client(any_broker, "pub") as pub:
        sub.subscribe_wait("fl/+/status", 1)
        sub.subscribe_wait("fl/job1/#", 1)

        for topic in topics:
            pub.publish_wait(topic, topic, qos=1)
        pub.publish_wait("done", b"", qos=1)
        sub.subscribe_wait("done", 1)
        pub.publish_wait("done", b"", qos=1)
        sub.collector.wait_for("done")

    received = sorted(m.topic for m in sub.collector.matching("fl/#"))
    assert received == ["fl/job1/round/3", "fl/job1/status", "fl/job2/status"]


def test_dollar_topics_are_not_matched_by_leading_wildcards(any_broker: BrokerHandle) -> None:
    with mqtt_client(any_broker, "sub") as sub, mqtt_client(any_broker, "pub") as pub:
        sub.subscribe_wait("#", 0)
        sub.subscribe_wait("+/info", 0)

        pub.publish_wait("$fl/info", b"hidden", qos=1)
        pub.publish_wait("fl/info", b"visible", qos=1)

        [message] = sub.collector.wait_for("fl/info")
        sub.collector.expect_none("$fl/#", duration=0.2)
    assert message.payload == b"visible"


def test_overlapping_subscriptions_deliver_once_with_max_qos(embedded_broker: BrokerHandle) -> None:
    # Mosquitto 2.0.11 also sends one copy, but at QoS 1 here (not the maximum), hence
    # embedded only; the spec requires the maximum QoS of the matching subscriptions.
    with mqtt_client(embedded_broker, "sub") as sub, mqtt_client(embedded_broker, "pub") as pub:
        sub.subscribe_wait("a/+", 0)
        sub.subscribe_wait("a/#", 2)
        sub.subscribe_wait("a/b", 1)

        pub.publish_wait("a/b", b"once", qos=2)
        pub.publish_wait("end", b"")

        [message] = sub.collector.wait_for("a/b")
        sub.collector.expect_none("end", duration=0.2)
    assert len(sub.collector.matching("a/b")) == 1
    assert message.qos == 2


def test_unsubscribe_stops_delivery(any_broker: BrokerHandle) -> None:
    with mqtt_client(any_broker, "sub") as sub, mqtt_client(any_broker, "pub") as pub:
        sub.subscribe_wait("t/#", 1)
        sub.subscribe_wait("marker", 1)
        pub.publish_wait("t/1", b"before", qos=1)
        sub.collector.wait_for("t/1")

        sub.unsubscribe_wait("t/#")
        pub.publish_wait("t/1", b"after", qos=1)
        pub.publish_wait("marker", b"", qos=1)
        sub.collector.wait_for("marker")

    assert [m.payload for m in sub.collector.matching("t/#")] == [b"before"]


def test_invalid_filter_gets_failure_code(embedded_broker: BrokerHandle) -> None:
    # paho refuses to send invalid filters, so this speaks raw MQTT.
    with RawClient(embedded_broker) as raw:
        raw.connect("raw")

        raw.send(Subscribe(1, (("a/#/b", 1), ("good", 2), ("bad+", 0))))
        suback = raw.recv()

    assert suback == Suback(1, (0x80, 2, 0x80))


def test_retained_set_replace_delete_and_late_subscribers(any_broker: BrokerHandle) -> None:
    with mqtt_client(any_broker, "pub") as pub, mqtt_client(any_broker, "live") as live:
        live.subscribe_wait("model/#", 1)
        pub.publish_wait("model/weights", b"v1", qos=1, retain=True)
        pub.publish_wait("model/weights", b"v2", qos=1, retain=True)
        pub.publish_wait("model/manifest", b"m1", qos=1, retain=True)
        live_messages = live.collector.wait_for("model/#", 3)

        with mqtt_client(any_broker, "late1") as late:
            late.subscribe_wait("model/#", 1)
            first_view = late.collector.wait_for("model/#", 2)

        pub.publish_wait("model/weights", b"", qos=1, retain=True)  # deletes it
        live.collector.wait_for("model/weights", 3)

        with mqtt_client(any_broker, "late2") as late:
            late.subscribe_wait("model/#", 1)
            late.subscribe_wait("model/manifest", 0)  # a new subscription re-sends retained
            second_view = late.collector.wait_for("model/#", 2)
            late.collector.expect_none("model/weights", duration=0.2)

    assert all(m.retain is False for m in live_messages)  # established subscriptions
    assert sorted((m.topic, m.payload, m.retain) for m in first_view) == [
        ("model/manifest", b"m1", True),
        ("model/weights", b"v2", True),
    ]
    assert [(m.topic, m.payload, m.retain, m.qos) for m in second_view] == [
        ("model/manifest", b"m1", True, 1),
        ("model/manifest", b"m1", True, 0),
    ]


def test_retained_delivery_qos_is_capped_by_subscription(any_broker: BrokerHandle) -> None:
    with mqtt_client(any_broker, "pub") as pub:
        pub.publish_wait("r", b"x", qos=2, retain=True)
        with mqtt_client(any_broker, "sub1") as sub1, mqtt_client(any_broker, "sub2") as sub2:
            sub1.subscribe_wait("r", 1)
            sub2.subscribe_wait("r", 2)
            [low] = sub1.collector.wait_for("r")
            [high] = sub2.collector.wait_for("r")
    assert (low.qos, low.retain) == (1, True)
    assert (high.qos, high.retain) == (2, True)
