"""Scale: the load generator against a real coordinator and Mosquitto, memory that does not
grow with the number of devices, and backpressure in the MQTT transport."""

from __future__ import annotations

import threading
import time
import tracemalloc

import numpy as np
import pytest

from coordinator.aggregation import FedAvg
from coordinator.config import JobConfig
from coordinator.loadgen import Fleet, LoadConfig, Plan, UpdateFactory, expected_average
from coordinator.loadgen.fleet import run_fleet
from coordinator.rounds import RoundCollector
from coordinator.run_dir import RunDir
from coordinator.server import Coordinator, ModelBundle
from edge_client.manifest import Manifest
from edge_client.messaging import Inbox
from edge_client.protocol import Topics, UpdateDeduper, decode, encode_weights
from edge_client.trainable_model import TrainableModel
from edge_client.transport import BrokerConfig, MemoryBus, MemoryTransport, MqttTransport
from tests.fixtures.brokers import mqtt_client, start_mosquitto

SCALE_CONF = "max_connections -1\nmax_queued_messages 0\nmax_inflight_messages 100\n"


@pytest.fixture
def mlp(export_dir) -> ModelBundle:
    d = export_dir("mlp")
    weights = TrainableModel.from_dir(d).get_weights()
    return ModelBundle(
        (d / "model.tflite").read_bytes(), Manifest.load(d / "manifest.json"), weights
    )


def checkpoint(run: RunDir, round_: int) -> dict[str, np.ndarray]:
    with np.load(run.path / f"checkpoints/round-{round_:04d}.npz") as data:
        return {k[2:]: data[k] for k in data.files if k.startswith("w/")}


@pytest.mark.slow
def test_200_virtual_devices_close_every_round_with_the_planned_fedavg(mlp, tmp_path):
    # Prepare: Mosquitto with raised limits, 200 virtual devices, the coordinator
    broker = start_mosquitto(tmp_path / "mosquitto", SCALE_CONF)
    n, plan = 200, Plan(variants=3)
    fleet = Fleet(LoadConfig(port=broker.port, job="scale", devices=n, plan=plan))
    devices = threading.Thread(target=run_fleet, args=(fleet.cfg, None, fleet), daemon=True)
    run = RunDir(tmp_path / "run")
    run.create({}, resume=False)
    cfg = JobConfig(
        job="scale", rounds=2, min_devices=n, min_results=n, round_timeout=60,
        wait_timeout=30, max_retries=0,
    )  # fmt: skip
    transport = MqttTransport(BrokerConfig("127.0.0.1", broker.port), "coordinator-scale")
    try:
        devices.start()
        transport.connect()
        t0 = time.monotonic()
        # Execute
        state = Coordinator(cfg, transport, mlp, run).run()
        elapsed = time.monotonic() - t0
        devices.join(15)
    finally:
        fleet.stop.set()
        transport.close()
        broker.stop()
    # Assert: all 200 in both rounds, the aggregate is the plan's FedAvg, the fleet stopped
    assert [len(h["participants"]) for h in state.history] == [n, n]
    previous = mlp.initial_weights
    for h in state.history:
        got = checkpoint(run, h["round"])
        want = expected_average(previous, plan, h["participants"])
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6)
        assert h["samples"] == sum(plan.samples_of(plan.index_of(d)) for d in h["participants"])
        previous = got
    assert not devices.is_alive() and fleet.stats.updates == 2 * n
    assert elapsed < 60


def _peak_while_aggregating(bundle: ModelBundle, n: int) -> int:
    """tracemalloc peak of decoding, validating and folding ``n`` updates, one at a time."""
    job, plan = "mem", Plan(variants=2)
    weights = bundle.initial_weights
    payload = encode_weights(weights, kind="global", job=job, round=1, sender="coordinator")
    sha = decode(payload).weights_sha256()
    factory = UpdateFactory(weights, plan, job=job, round_=1, base_sha256=sha)
    bus = MemoryBus()
    bus.published = _Discard()  # the bus would keep every message for assertions
    receiver, sender = MemoryTransport(bus, "coordinator"), MemoryTransport(bus, "devices")
    receiver.connect()
    topics = Topics(job)
    receiver.subscribe(f"{topics.root}/update/+/#")
    inbox, strategy = Inbox(receiver, topics), FedAvg()
    strategy.begin(weights)
    ids = [plan.device_id(i) for i in range(n)]
    shapes = {w.name: w.shape for w in bundle.manifest.weights}
    collector = RoundCollector(
        job, 1, frozenset(ids), sha, shapes, strategy, UpdateDeduper(), global_weights=weights
    )
    tracemalloc.start()
    try:
        for i in range(n):
            for k, chunk in enumerate(factory.chunks(i)):
                sender.publish(f"{topics.update(ids[i])}/{k}", chunk)
            item = inbox.get(1)
            assert item is not None and collector.offer(item.value, item.device, item.size)
            del item
        strategy.finish()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class _Discard(list):
    def append(self, item: object) -> None:
        pass


@pytest.mark.slow
def test_aggregation_memory_does_not_grow_with_the_number_of_devices(mlp):
    # Execute
    small, large = _peak_while_aggregating(mlp, 50), _peak_while_aggregating(mlp, 400)
    # Assert: the peak is a few model sizes whatever the count (O(model), not O(devices))
    model_bytes = sum(w.nbytes for w in mlp.initial_weights.values())  # 0.8 MB
    assert large < small + model_bytes, (small, large)
    assert large < 12 * model_bytes, (large, model_bytes)


def test_the_transport_holds_back_a_burst_it_cannot_take_yet(tmp_path):
    # Prepare: a receiver that queues at most 1 MB, a sender of 20 x 200 kB
    broker = start_mosquitto(tmp_path / "mosquitto", SCALE_CONF)
    receiver = MqttTransport(
        BrokerConfig("127.0.0.1", broker.port), "slow-worker", max_queued_bytes=1_000_000
    )
    try:
        receiver.subscribe("burst/#", 1)
        receiver.connect()
        with mqtt_client(broker, "sender") as sender:
            # Execute
            for i in range(20):
                sender.publish_wait(f"burst/{i}", bytes([i]) * 200_000, qos=1)
            time.sleep(0.5)
            held = receiver.queued_bytes
            got = [receiver.get(5) for _ in range(20)]
        # Assert: no more than the bound (+ one message) was queued, and nothing was lost
        assert held <= 1_200_000
        assert [m.topic for m in got if m] == [f"burst/{i}" for i in range(20)]
        assert receiver.queued_bytes == 0
    finally:
        receiver.close()
        broker.stop()
