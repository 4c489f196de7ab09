"""A job run twice on the same boards, then resumed: real `fedcoord start` and `fedge run`
processes over a real Mosquitto. Boards key their progress on the run id the coordinator
makes at start (kept by --resume), so the second run is trained, not skipped."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.config import JobConfig
from coordinator.simulation import ROOT, FleetConfig, fleet_processes
from edge_client.protocol import RoundAnnouncement, Topics
from edge_client.transport import BrokerConfig
from tests.coordinator.test_jobs_end_to_end import FAST, FAST_FLAGS, rounds_in
from tests.fixtures.brokers import mqtt_client

JOB = "rerun"


def start(broker_url: str, run_dir: Path, rounds: int) -> list[str]:
    return [
        sys.executable, "-m", "coordinator.cli", "start",
        "--broker", broker_url, "--job", JOB, "--rounds", str(rounds), "--min-devices", "2",
        "--round-timeout", "60", "--max-retries", "0", "--run-dir", str(run_dir),
        *FAST_FLAGS, "--test-data", "fashion-mnist",
    ]  # fmt: skip


def retained_announcement(broker) -> RoundAnnouncement:  # noqa: ANN001
    with mqtt_client(broker, "reader") as reader:
        reader.subscribe_wait(Topics(JOB).round, qos=1)
        (message,) = reader.collector.wait_for(Topics(JOB).round, timeout=10)
    return RoundAnnouncement.from_json(message.payload)


@pytest.mark.slow
def test_a_job_run_twice_on_the_same_boards_and_resumed_trains_every_round(
    mosquitto_broker, tmp_path
):
    # Prepare: a whole first run of the job (2 rounds); the boards keep their state dirs
    job = JobConfig(job=JOB, rounds=3, min_devices=2, **FAST)
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    fleet, boards = FleetConfig(devices=2), tmp_path / "boards"
    first, second = tmp_path / "run-1", tmp_path / "run-2"
    with fleet_processes(fleet, job, broker, boards):
        done = subprocess.run(
            start(mosquitto_broker.url, first, 2), cwd=ROOT, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # Execute: the same job and model again on the same boards, killed after round 1 and
    # resumed
    with fleet_processes(fleet, job, broker, boards):
        killed = subprocess.Popen(
            start(mosquitto_broker.url, second, 3), cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        deadline = time.time() + 240
        while not rounds_in(second) and time.time() < deadline and killed.poll() is None:
            time.sleep(0.05)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert rounds_in(second), killed.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
        run_id = (second / "run_id").read_text().strip()
        resumed = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "start", "--resume", str(second)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        last = retained_announcement(mosquitto_broker)
    # Assert: the second run trained every round; the resumed run kept its id
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert rounds_in(first) == [1, 2] and rounds_in(second) == [1, 2, 3]
    manifests = [json.loads((d / "model/manifest.json").read_text()) for d in (first, second)]
    assert manifests[0]["sha256"] == manifests[1]["sha256"]  # the same model both times
    assert (second / "run_id").read_text().strip() == run_id == last.run
    assert (first / "run_id").read_text().strip() != run_id
    assert (last.round, last.state) == (3, "closed")
    for log in (boards / "devices").glob("*.log"):
        assert "Traceback" not in log.read_text()
