"""Whole jobs with real processes: edge clients (`fedge run`) and the coordinator, over a
real Mosquitto started by the test. The model is `mlp` so each round takes a second."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.config import JobConfig
from coordinator.job import run_job
from coordinator.simulation import ROOT, FleetConfig, fleet_processes
from edge_client.transport import BrokerConfig
from tests.fixtures.brokers import mqtt_client

pytestmark = pytest.mark.slow  # over ~5 s: left out of the fast loop (pytest -m "not slow")

FAST = {"model": "mlp", "optimizer": "sgd", "lr": 0.05, "epochs": 1, "test_data": "fashion-mnist"}
FAST_FLAGS = [
    "--model",
    "mlp",
    "--optimizer",
    "sgd",
    "--lr",
    "0.05",
    "--epochs",
    "1",
]  # FAST as flags


def rounds_in(run_dir: Path) -> list[int]:
    p = run_dir / "metrics.jsonl"
    return [json.loads(line)["round"] for line in p.read_text().splitlines()] if p.exists() else []


def test_simulated_job_against_a_real_mosquitto(mosquitto_broker, tmp_path):
    # Execute: the README's job, smaller: 3 boards, 3 rounds, through `fedcoord simulate`,
    # with a recorder on the broker and chunks of at most 100,000 bytes
    run_dir = tmp_path / "run"
    with mqtt_client(mosquitto_broker, "recorder") as recorder:
        recorder.subscribe_wait("fl/v1/+/update/#", qos=1)
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "coordinator.cli",
                "simulate",
                "--devices",
                "3",
                "--rounds",
                "3",
                "--broker",
                mosquitto_broker.url,
                "--run-dir",
                str(run_dir),
                *FAST_FLAGS,
                "--partition",
                "dirichlet:1.0",
                "--max-chunk",
                "100000",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
        )
        updates = recorder.collector.matching("fl/v1/+/update/#")
    # Assert
    assert r.returncode == 0, r.stderr[-3000:]
    # the devices chunked their ~800 kB updates as the job said (--max-chunk reached them)
    assert max(len(m.payload) for m in updates) <= 100_000
    assert {m.topic.rsplit("/", 1)[1] for m in updates} >= {"0", "1", "2", "3"}
    assert "round   3/3  devices 3/3" in r.stdout
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["accuracy"] > 0.75
    assert (run_dir / "final/model.tflite").exists() and (
        run_dir / "final/inference.tflite"
    ).exists()
    for i in range(3):
        log = (run_dir / f"devices/sim-{i:02d}.log").read_text()
        assert "Traceback" not in log


def test_killed_coordinator_resumes_without_counting_a_round_twice(mosquitto_broker, tmp_path):
    # Prepare: 3 boards and a coordinator as separate processes
    run_dir = tmp_path / "run"
    job = JobConfig(job="resume", rounds=6, min_devices=3, **FAST)
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    cmd = [
        sys.executable,
        "-m",
        "coordinator.cli",
        "start",
        "--broker",
        mosquitto_broker.url,
        "--job",
        "resume",
        "--rounds",
        "6",
        "--min-devices",
        "3",
        "--run-dir",
        str(run_dir),
        *FAST_FLAGS,
        "--test-data",
        "fashion-mnist",
    ]
    with fleet_processes(FleetConfig(devices=3), job, broker, tmp_path):
        first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while len(rounds_in(run_dir)) < 2 and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        # Execute: kill -9 in the middle of the job, then resume
        first.send_signal(signal.SIGKILL)
        first.wait()
        done_before = rounds_in(run_dir)
        assert 2 <= len(done_before) < 6, first.stderr.read().decode()[-2000:]
        second = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "start", "--resume", str(run_dir)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
    # Assert
    assert second.returncode == 0, second.stderr[-3000:]
    assert rounds_in(run_dir) == [1, 2, 3, 4, 5, 6]
    assert "done: 6 rounds" in second.stdout


def test_a_device_hanging_mid_job_is_left_behind_at_the_deadline(mosquitto_broker, tmp_path):
    # Prepare: 3 boards; after round 1 one of them freezes (SIGSTOP), later it is killed
    job = JobConfig(
        job="hang",
        rounds=3,
        min_devices=2,
        min_results=2,
        round_timeout=6,
        run_dir=str(tmp_path / "run"),
        **FAST,
    )
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    frozen: list[subprocess.Popen] = []
    with fleet_processes(FleetConfig(devices=3), job, broker, tmp_path) as procs:

        def on_round(metrics: dict) -> None:
            if metrics["round"] == 1:
                os.kill(procs[2].pid, signal.SIGSTOP)  # hangs: still connected, never replies
                frozen.append(procs[2])
            elif metrics["round"] == 2:
                procs[2].kill()  # now it is gone: its Last Will marks it offline
                procs[2].wait()
                time.sleep(1.0)  # let the broker deliver the will before round 3 selects

        with mqtt_client(mosquitto_broker, "watcher") as watcher:  # all three online first
            watcher.subscribe_wait("fl/v1/hang/status/+", qos=1)
            watcher.collector.wait_for("fl/v1/hang/status/+", n=3, timeout=60)
        # Execute
        t0 = time.time()
        state = run_job(job, on_round=on_round, broker=broker, final_models=False)
    # Assert
    by_round = {m["round"]: m for m in state.history}
    assert by_round[1]["participants"] == ["sim-00", "sim-01", "sim-02"]
    assert by_round[2]["participants"] == ["sim-00", "sim-01"]  # closed at its deadline
    assert by_round[2]["duration_s"] >= 5.5
    assert "sim-02" not in by_round[3]["selected"]
    assert state.round == 3 and time.time() - t0 < 120
    assert frozen
