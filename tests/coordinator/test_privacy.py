"""The paper's packet-capture check: record every payload that crosses the broker during a
job and show that no training sample (raw or normalised bytes) appears in any of them."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.config import JobConfig
from coordinator.job import run_job
from coordinator.simulation import FleetConfig, fleet_processes
from edge_client.data import Normalization, load_dataset, partition
from edge_client.transport import BrokerConfig
from tests.fixtures.brokers import mqtt_client

pytestmark = pytest.mark.slow  # over ~5 s: left out of the fast loop (pytest -m "not slow")

SAMPLES_PER_DEVICE = 300


def leaked(payloads: list[bytes], needles: list[bytes]) -> int:
    return sum(1 for needle in needles for p in payloads if needle in p)


def test_no_training_sample_crosses_the_network(mosquitto_broker, tmp_path):
    # Prepare: a recorder subscribed to everything, 2 devices with their own partitions
    job = JobConfig(
        job="privacy",
        rounds=2,
        min_devices=2,
        model="mlp",
        optimizer="sgd",
        lr=0.05,
        epochs=1,
        test_data="fashion-mnist",
        run_dir=str(tmp_path / "run"),
    )
    fleet = FleetConfig(devices=2, dataset="fashion-mnist", partition="iid")
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    with mqtt_client(mosquitto_broker, "recorder") as recorder:
        recorder.subscribe_wait("#", qos=1)
        # Execute
        with fleet_processes(fleet, job, broker, tmp_path):
            state = run_job(job, broker=broker, final_models=False)
        messages = recorder.collector.matching("#")
    # Assert
    assert state.round == 2
    payloads = [m.payload for m in messages if m.payload]
    assert any("/update/" in m.topic for m in messages)  # weights did cross
    assert sum(len(p) for p in payloads) > 1_000_000
    train = load_dataset("fashion-mnist", "train")
    norm = Normalization(scale=1 / 255, mean=(0.0,), std=(1.0,))
    rng = np.random.default_rng(0)
    needles: list[bytes] = []
    for part in partition(train.y, 2, "iid", seed=0):
        for i in rng.choice(part, SAMPLES_PER_DEVICE, replace=False):
            needles.append(train.x[i].tobytes())  # raw uint8 pixels
            needles.append(norm(train.x[i : i + 1]).tobytes())  # normalised float32, as fed
    assert leaked(payloads, needles) == 0
    # the detector itself works: a payload carrying one image is caught
    assert leaked([b"header" + needles[0] + b"tail"], needles) == 1
