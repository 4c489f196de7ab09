"""Attacks on buffered rounds (FedBuff) from outside, on a real Mosquitto with real `fedge
run` boards: a hostile device (tests/fixtures/forged_device.py: a paho client with the
repository's encoders, as anyone holding a device's broker credentials could run) answers
every grant at once, banks grants by going offline and online, and replays what it saw."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import pytest

from coordinator.config import JobConfig
from coordinator.job import run_job
from edge_client.transport import BrokerConfig
from tests.coordinator.test_buffered import lines_of, sane, start_boards, stop
from tests.fixtures.brokers import mqtt_client
from tests.fixtures.forged_device import ForgedDevice

pytestmark = pytest.mark.slow  # real boards training: left out of pytest -m "not slow"


def flipped(version: int, weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A poisoned "training": -3 x the global weights (a change of 4x their norm, within
    --max-update-norm's 10x, about 30-100x an honest change of the mlp)."""
    return {k: -3 * np.asarray(v) for k, v in weights.items()}


def test_a_device_answering_every_grant_at_once_cannot_own_the_versions(
    mosquitto_broker, export_dir, tmp_path, caplog
):
    # Prepare: 4 honest boards and "evil", which answers each grant within milliseconds
    # with a poisoned update, while honest boards take seconds to train; buffers of 4
    job = JobConfig(
        job="greedy", mode="buffered", rounds=4, buffer_size=4, min_devices=5,
        round_timeout=120, wait_timeout=90, epochs=1, lr=0.05, test_data="fashion-mnist",
        model_dir=str(export_dir("mlp")), run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    caplog.set_level(logging.INFO, "coordinator")
    with mqtt_client(mosquitto_broker, "evil") as client:
        evil = ForgedDevice(client, "greedy", "evil")
        evil.status("online")
        evil.answer_grants(flipped)
        procs = start_boards(job, broker, tmp_path, 4, {})
        try:
            # Execute
            run_job(job, broker=broker, final_models=False)
        finally:
            evil.stop()
            stop(procs)
    # Assert: evil answered many grants, yet no buffer held more than its share of evil's
    # updates (2 of 4: --max-weight-share 0.5), so the others' changes always outvoted it:
    # every poisoned update was rejected as outsized, none folded; the job learned
    lines = lines_of(tmp_path / "run")
    assert [m["round"] for m in lines] == [1, 2, 3, 4]
    assert len(evil.answered) >= 4, "evil was hardly granted: the attack was not tried"
    judged = {m["round"]: [r for r in m["rejections"] if r["device"] == "evil"] for m in lines}
    assert all(len(judged[v]) <= 2 for v in judged), judged
    assert all("outsized change" in r["reason"] for v in judged for r in judged[v]), judged
    assert sum(map(len, judged.values())) >= 4
    assert not [f for m in lines for f in m["buffer"] if f["device"] == "evil"]
    assert lines[-1]["accuracy"] > 0.7
    sane(tmp_path / "run")
    assert math.isfinite(lines[-1]["loss"])
