"""Faults on a real Mosquitto: broker restart, duplicates, reordering, lost and corrupted
chunks, devices cut off and back. The coordinator and the devices run in this process
(threads, paho transports) so each test takes seconds; the devices train the mlp for real.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from coordinator.aggregation import weighted_average
from coordinator.config import JobConfig
from coordinator.run_dir import RunDir
from coordinator.server import SENDER, Coordinator, ModelBundle
from edge_client.client import EdgeClient, mqtt_transport
from edge_client.config import ClientConfig
from edge_client.data import Dataset, load_dataset, partition
from edge_client.manifest import Manifest
from edge_client.protocol import DeviceStatus, Topics, chunked, decode
from edge_client.runtime import Runtime, load_runtime
from edge_client.trainable_model import TrainableModel
from edge_client.transport import BrokerConfig, MqttTransport, Transport, Will
from tests.coordinator.fleet_support import mqtt_device
from tests.fixtures.proxy import CuttableProxy

SMALL_CHUNK = 100_000  # an mlp update (~800 kB) becomes 9 chunks


@dataclass
class Kit:
    bundle: ModelBundle
    parts: list[Dataset]
    runtime: Runtime

    def model(self) -> TrainableModel:
        return TrainableModel(self.bundle.tflite, self.bundle.manifest, num_threads=1)


@pytest.fixture(scope="module")
def kit(export_dir) -> Kit:
    d = export_dir("mlp")
    tflite, manifest = (d / "model.tflite").read_bytes(), Manifest.load(d / "manifest.json")
    initial = TrainableModel(tflite, manifest).get_weights()
    train = load_dataset("fashion-mnist", "train")
    parts = [train.subset(p[:1000]) for p in partition(train.y, 4, "iid", 1)]
    return Kit(ModelBundle(tflite, manifest, initial), parts, load_runtime("ai-edge-litert"))


def coordinator(url: str, kit: Kit, tmp: Path, **cfg: object) -> Coordinator:
    config = JobConfig(
        **{"wait_timeout": 30, "epochs": 1, "lr": 0.05, "round_timeout": 20, **cfg}  # type: ignore[arg-type]
    )
    will = Will(Topics(config.job).status(SENDER), DeviceStatus(SENDER, "offline", 0).to_json())
    transport = MqttTransport(BrokerConfig.from_url(url), f"coordinator-{config.job}", will=will)
    transport.connect()
    run_dir = RunDir(tmp / "run")
    run_dir.create({}, resume=True)
    return Coordinator(config, transport, kit.bundle, run_dir)


def edge_client(url: str, job: str, device: str, data: Dataset, kit: Kit, tmp: Path) -> EdgeClient:
    cfg = ClientConfig(
        BrokerConfig.from_url(url),
        job,
        device,
        data_path="unused",
        state_dir=tmp / device,
        heartbeat_s=1.0,
        exit_on_stop=True,
        evaluate=False,
    )
    return EdgeClient(cfg, mqtt_transport(cfg), data=data, runtime=kit.runtime)


def run_clients(clients: list[EdgeClient]) -> list[threading.Thread]:
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    return threads


def finish(coord: Coordinator, devices=(), threads=()) -> None:  # noqa: ANN001
    for d in devices:
        d.stop()
    for c in threads:
        c.join(15)
    coord.transport.close()


# -- broker restart -----------------------------------------------------------------------


@pytest.mark.slow
def test_broker_killed_mid_round_and_restarted_everyone_reconnects_no_update_counted_twice(
    mosquitto_broker, kit, tmp_path
):
    # Prepare: 3 real edge clients; the broker dies (SIGKILL) right after round 2 opens
    url = mosquitto_broker.url
    clients = [edge_client(url, "restart", f"e{i}", kit.parts[i], kit, tmp_path) for i in range(3)]
    threads = run_clients(clients)
    coord = coordinator(url, kit, tmp_path, job="restart", rounds=4, min_devices=3, min_results=3)
    publish, round_topic, outage = coord.transport.publish, coord.topics.round, []

    def broker_outage() -> None:
        mosquitto_broker.kill()  # loses every retained message (persistence false)
        time.sleep(1.0)
        mosquitto_broker.start()

    def tapped(topic: str, payload: bytes, **kw: object) -> None:
        publish(topic, payload, **kw)  # type: ignore[arg-type]
        if topic == round_topic and b'"round":2,' in payload and not outage:
            outage.append(threading.Thread(target=broker_outage))
            outage[0].start()

    coord.transport.publish = tapped  # type: ignore[method-assign]
    # Execute
    state = coord.run()
    finish(coord, threads=threads)
    # Assert: every round aggregated each device exactly once
    assert state.finished and [h["round"] for h in state.history] == [1, 2, 3, 4]
    for h in state.history:
        assert h["participants"] == ["e0", "e1", "e2"]
        assert h["updates_aggregated"] == 3
    assert state.history[1]["duration_s"] >= 1.0  # round 2 spanned the outage
    assert coord.transport.connections >= 2  # type: ignore[attr-defined]
    assert all(c.transport.connections >= 2 for c in clients)  # type: ignore[attr-defined]
    assert not any(t.is_alive() for t in threads)  # all exited on the final "stopped"


# -- duplicates and reordering --------------------------------------------------------------


def send_twice(t: Transport, base: str, payload: bytes) -> None:
    """The whole update published twice (a QoS 1 resend of every chunk, or a replay)."""
    for _ in range(2):
        for topic, chunk in chunked(base, payload, SMALL_CHUNK):
            t.publish(topic, chunk)


def send_reordered(t: Transport, base: str, payload: bytes) -> None:
    """Chunks last to first, with chunk 0 duplicated in the middle."""
    parts = chunked(base, payload, SMALL_CHUNK)
    assert len(parts) > 3
    for i, (topic, chunk) in enumerate(reversed(parts)):
        t.publish(topic, chunk)
        if i == len(parts) // 2:
            t.publish(*parts[0])


def test_duplicated_and_reordered_update_chunks_are_aggregated_exactly_once(
    mosquitto_broker, kit, tmp_path
):
    # Prepare
    url = mosquitto_broker.url
    sends = [None, send_twice, send_reordered]
    devices = [
        mqtt_device(url, "dup", f"d{i}", kit.model(), kit.parts[i], send=sends[i]) for i in range(3)
    ]
    for d in devices:
        d.start()
    coord = coordinator(url, kit, tmp_path, job="dup", rounds=1, min_devices=3, min_results=3)
    # Execute
    state = coord.run()
    finish(coord, devices)
    # Assert: the new global weights are FedAvg of the three updates, each counted once
    assert state.history[0]["participants"] == ["d0", "d1", "d2"]
    assert state.history[0]["updates_aggregated"] == 3
    updates = [decode(d.sent[1]) for d in devices]
    expected = weighted_average([(u.weights(), u.samples) for u in updates])
    weights, _ = coord.run_dir.load_weights(state)
    for name, w in expected.items():
        np.testing.assert_allclose(weights[name], w, rtol=1e-6, atol=1e-7)


# -- lost and corrupted chunks --------------------------------------------------------------


def send_losing_chunk_1(t: Transport, base: str, payload: bytes) -> None:
    for i, (topic, chunk) in enumerate(chunked(base, payload, SMALL_CHUNK)):
        if i != 1:
            t.publish(topic, chunk)


def send_corrupting_chunk_1(t: Transport, base: str, payload: bytes) -> None:
    """A bit flipped in chunk 1's data on the way (its checksum no longer matches)."""
    for i, (topic, chunk) in enumerate(chunked(base, payload, SMALL_CHUNK)):
        if i == 1:
            chunk = chunk[:500] + bytes([chunk[500] ^ 0x10]) + chunk[501:]
        t.publish(topic, chunk)


def send_corrupted_envelope(t: Transport, base: str, payload: bytes) -> None:
    """The envelope's body damaged before chunking: chunk checksums match, its sha256 not."""
    damaged = payload[:-100] + bytes([payload[-100] ^ 0x01]) + payload[-99:]
    for topic, chunk in chunked(base, damaged, SMALL_CHUNK):
        t.publish(topic, chunk)


def test_a_lost_chunk_leaves_the_round_to_close_at_its_deadline_with_the_rest(
    mosquitto_broker, kit, tmp_path
):
    url = mosquitto_broker.url
    sends = [None, send_losing_chunk_1, None]
    devices = [
        mqtt_device(url, "lost", f"d{i}", kit.model(), kit.parts[i], send=sends[i])
        for i in range(3)
    ]
    for d in devices:
        d.start()
    coord = coordinator(
        url, kit, tmp_path, job="lost", rounds=1, min_devices=3, min_results=2, round_timeout=2
    )
    state = coord.run()
    finish(coord, devices)
    m = state.history[0]
    assert m["participants"] == ["d0", "d2"] and m["updates_aggregated"] == 2
    assert m["duration_s"] >= 1.9 and state.finished


def test_corrupted_chunks_are_rejected_and_the_round_closes_at_its_deadline(
    mosquitto_broker, kit, tmp_path, caplog
):
    caplog.set_level(logging.WARNING)
    url = mosquitto_broker.url
    sends = [None, send_corrupting_chunk_1, send_corrupted_envelope]
    devices = [
        mqtt_device(url, "bad", f"d{i}", kit.model(), kit.parts[i], send=sends[i]) for i in range(3)
    ]
    for d in devices:
        d.start()
    coord = coordinator(
        url, kit, tmp_path, job="bad", rounds=1, min_devices=3, min_results=1, round_timeout=2
    )
    state = coord.run()
    finish(coord, devices)
    assert state.history[0]["participants"] == ["d0"] and state.finished
    assert coord.inbox.rejected >= 2
    text = caplog.text
    assert "chunk" in text and "sha256" in text  # both rejections were logged with a reason


# -- half the fleet cut off -----------------------------------------------------------------


def test_half_the_devices_cut_off_for_two_rounds_rejoin_and_the_job_finishes(
    mosquitto_broker, kit, tmp_path
):
    # Prepare: e0, e1 connect directly; e2, e3 through a proxy the test cuts after round 1
    # and restores after round 3
    proxy = CuttableProxy(mosquitto_broker.host, mosquitto_broker.port).start()
    urls = [mosquitto_broker.url] * 2 + [proxy.url] * 2
    clients = [edge_client(urls[i], "cut", f"e{i}", kit.parts[i], kit, tmp_path) for i in range(4)]
    threads = run_clients(clients)
    coord = coordinator(
        mosquitto_broker.url, kit, tmp_path, job="cut", rounds=5, min_devices=2, min_results=2
    )
    online_at_start = coordinator_wait_all(coord, 4)
    offline_during_cut: set[str] = set()

    def on_round(metrics: dict) -> None:
        if metrics["round"] == 1:
            proxy.cut()  # the broker sees e2, e3 vanish and publishes their Last Wills
            time.sleep(0.5)
        elif metrics["round"] == 3:
            # what the coordinator learnt from the Wills (without them it would still select
            # e2, e3 and close rounds 2 and 3 at their deadlines with the same participants)
            offline_during_cut.update(d for d, s in coord.devices.items() if s.state == "offline")
            proxy.restore()
            deadline = time.monotonic() + 40
            while not all(c.transport.connected for c in clients[2:]):
                assert time.monotonic() < deadline, "the cut devices did not reconnect"
                time.sleep(0.1)
            time.sleep(0.5)  # their fresh "online" statuses reach the coordinator

    coord.on_round = on_round
    # Execute
    state = coord.run()
    finish(coord, threads=threads)
    proxy.stop()
    # Assert
    participants = [h["participants"] for h in state.history]
    assert online_at_start == {"e0", "e1", "e2", "e3"}
    assert offline_during_cut == {"e2", "e3"}
    assert participants[0] == ["e0", "e1", "e2", "e3"]
    assert participants[1] == participants[2] == ["e0", "e1"]
    assert participants[3] == participants[4] == ["e0", "e1", "e2", "e3"]
    assert state.finished


def coordinator_wait_all(coord: Coordinator, n: int, timeout: float = 30) -> set[str]:
    """Pump the coordinator's inbox until ``n`` devices are online (before round 1); who is."""
    deadline = time.monotonic() + timeout
    for topic, qos in coord.topics.coordinator_subscriptions():
        coord.transport.subscribe(topic, qos)
    while len(coord.online()) < n:
        assert time.monotonic() < deadline, f"only {sorted(coord.online())} online"
        coord.pump(0.1)
    return coord.online()
