"""Simulated links (coordinator/fleet/link.py) between real paho clients and a real Mosquitto:
a throttled upload costs size / bandwidth, latency delays every byte, a cut link drops
its connections and refuses new ones until restored."""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from coordinator.fleet.link import LinkHub, LinkSpec
from tests.fixtures.brokers import MQTTConnectError, mqtt_client


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


def test_an_upload_through_a_300_kbit_link_takes_size_over_bandwidth(mosquitto_broker):
    # Prepare: a board behind a 300 kbit/s uplink (fast downlink), a watcher on the broker
    payload = bytes(range(256)) * 400  # 102,400 bytes: 2.73 s at 300 kbit/s
    with LinkHub(mosquitto_broker.host, mosquitto_broker.port).start(
        [("slow", LinkSpec(down_kbit=0, up_kbit=300, latency_ms=20))]
    ) as hub:
        board = Endpoint("127.0.0.1", hub.port("slow"))
        with (
            mqtt_client(mosquitto_broker, "watcher") as watcher,
            mqtt_client(board, "board") as client,
        ):
            watcher.subscribe_wait("t/up", qos=1)
            # Execute
            t0 = time.monotonic()
            client.publish("t/up", payload, qos=1)
            got = watcher.collector.wait_for("t/up", timeout=20)[0]
            took = time.monotonic() - t0
        traffic = hub.traffic("slow")
    # Assert: intact, and about 8 * size / bandwidth
    assert got.payload == payload
    expected = len(payload) * 8 / 300_000
    assert 0.85 * expected < took < 1.5 * expected + 0.3, (expected, took)
    assert traffic["bytes_up"] > len(payload)


def test_latency_delays_a_round_trip_by_twice_the_one_way_delay(mosquitto_broker):
    with LinkHub(mosquitto_broker.host, mosquitto_broker.port).start(
        [("far", LinkSpec(latency_ms=150))]
    ) as hub:
        board = Endpoint("127.0.0.1", hub.port("far"))
        with mqtt_client(board, "board", timeout=10) as client:
            client.subscribe_wait("t/echo", qos=1)
            t0 = time.monotonic()
            client.publish("t/echo", b"ping", qos=1)  # board -> broker -> board
            client.collector.wait_for("t/echo", timeout=5)
            took = time.monotonic() - t0
    assert 0.28 < took < 0.8, took


def test_a_cut_link_drops_the_board_and_refuses_it_until_restored(mosquitto_broker):
    with LinkHub(mosquitto_broker.host, mosquitto_broker.port).start([("pi", LinkSpec())]) as hub:
        board = Endpoint("127.0.0.1", hub.port("pi"))
        with mqtt_client(board, "board") as client:
            hub.cut("pi")
            assert client.disconnected.wait(5)
            assert not hub.is_up("pi")
            with pytest.raises((MQTTConnectError, OSError)), mqtt_client(board, "again", timeout=1):
                pass
        hub.restore("pi")
        with mqtt_client(board, "back") as client:
            client.publish_wait("t/x", b"1", qos=1)
