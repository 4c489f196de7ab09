"""Whole jobs with real processes: edge clients (`fedge run`) and the coordinator, over a
real Mosquitto started by the test. The model is `mlp` so each round takes a second."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import JobConfig
from coordinator.job import run_job
from coordinator.run_dir import RunDir
from coordinator.simulation import ROOT, FleetConfig, device_command, fleet_processes
from edge_client.protocol import RoundAnnouncement
from edge_client.transport import BrokerConfig
from tests.fixtures.brokers import FixtureClient, mqtt_client

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


@contextmanager
def three_devices(
    job: JobConfig, broker: BrokerConfig, tmp: Path, slow: int
) -> Iterator[list[subprocess.Popen]]:
    """sim-00..02 as `fedge run` processes; device ``slow`` trains 4x slower (it sleeps 3x its
    compute time after training for real, edge_client/pacing.py: same weights, later)."""
    fleet = FleetConfig(devices=3)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    tmp = tmp / f"devices-{job.job}"  # fresh state directories: a new job for these boards
    tmp.mkdir(parents=True)
    procs = []
    for i in range(3):
        log = open(tmp / f"sim-{i:02d}.log", "ab")  # noqa: SIM115 - closed with the process
        cmd = device_command(fleet, job, broker, i, tmp / f"sim-{i:02d}")
        slowdown = {"EDGEFL_SIM_SLOWDOWN": "4" if i == slow else "1"}
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=log, env={**env, **slowdown}))
        log.close()
    try:
        yield procs
    finally:
        for p in procs:
            try:
                p.wait(20)  # they exit on the job's "stopped"
            except subprocess.TimeoutExpired:
                p.kill()


def wait_for_round_open(watcher: FixtureClient, round_: int, timeout: float) -> None:
    """Until the job's round announcement says ``round_`` is open."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in watcher.collector.matching("fl/v1/+/round"):
            ann = RoundAnnouncement.from_json(m.payload)
            if ann.round == round_ and ann.state == "open":
                return
        time.sleep(0.005)
    raise AssertionError(f"round {round_} was not announced within {timeout} s")


def final_state(run_dir: Path, job: str) -> tuple[dict[str, np.ndarray], list[dict]]:
    rd = RunDir(run_dir)
    weights, _ = rd.load_weights(rd.load_state(job))
    return weights, [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_coordinator_killed_mid_round_resumes_to_the_weights_of_an_uninterrupted_run(
    mosquitto_broker, tmp_path, export_dir
):
    # Prepare: the same seeded job twice (same exported model and initial weights, same
    # devices and partitions; each device's batch order is seeded by its id and the round)
    model = str(export_dir("mlp"))
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    rounds, kill_in = 3, 2
    ref_job = JobConfig(
        job="uncut",
        rounds=rounds,
        min_devices=3,
        model_dir=model,
        **FAST,
        run_dir=str(tmp_path / "uncut"),
    )
    with three_devices(ref_job, broker, tmp_path, slow=2):
        run_job(ref_job, broker=broker, final_models=False)
    reference, ref_metrics = final_state(tmp_path / "uncut", "uncut")
    # Execute: the other run's coordinator is killed (SIGKILL) in round 2, once a fast device's
    # update reached the broker and while the slow one still trains, then resumed
    run_dir = tmp_path / "cut"
    job = dataclasses.replace(ref_job, job="cut", run_dir=str(run_dir))
    cmd = [sys.executable, "-m", "coordinator.cli", "start", "--broker", mosquitto_broker.url]
    cmd += ["--job", "cut", "--rounds", str(rounds), "--min-devices", "3", "--model-dir", model]
    cmd += ["--run-dir", str(run_dir), *FAST_FLAGS, "--test-data", "fashion-mnist"]
    with (
        three_devices(job, broker, tmp_path, slow=2) as devices,
        mqtt_client(mosquitto_broker, "watcher") as watcher,
    ):
        watcher.subscribe_wait("fl/v1/cut/update/+/0", qos=1)
        watcher.subscribe_wait("fl/v1/cut/round", qos=1)
        first_log = tmp_path / "first-coordinator.log"  # a file: a full pipe would block it
        with first_log.open("wb") as log:
            first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        # The slow board is frozen as soon as round 2 is announced (it cannot have trained
        # yet), so on a loaded machine too its update is still to come when the kill lands;
        # it is thawed after the kill and delivers to the resumed coordinator.
        wait_for_round_open(watcher, kill_in, timeout=240)
        devices[2].send_signal(signal.SIGSTOP)
        try:
            watcher.collector.wait_for("fl/v1/cut/update/+/0", n=3 * (kill_in - 1) + 1, timeout=240)
            first.send_signal(signal.SIGKILL)
            first.wait()
        finally:
            devices[2].send_signal(signal.SIGCONT)
        in_flight = len(watcher.collector.matching("fl/v1/cut/update/+/0")) - 3 * (kill_in - 1)
        done_before = rounds_in(run_dir)
        second = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "start", "--resume", str(run_dir)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
    # Assert: killed inside round 2 with some of its updates sent, not at a round boundary
    assert done_before == list(range(1, kill_in)), first_log.read_text()[-2000:]
    assert 1 <= in_flight < 3
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"done: {rounds} rounds" in second.stdout
    weights, metrics = final_state(run_dir, "cut")
    assert [m["round"] for m in metrics] == list(range(1, rounds + 1))  # no round counted twice
    assert [m["samples"] for m in metrics] == [m["samples"] for m in ref_metrics]
    assert [m["participants"] for m in metrics] == [m["participants"] for m in ref_metrics]
    # Identical weights are expected: FedAvg sums n * w in float64, where each product of a
    # float32 weight and a sample count (< 2^29) is exact, so the arrival order can change the
    # sum only by float64 rounding (~1e-16 relative), which the final float32 rounding erases
    # unless a value lies that close to a float32 rounding boundary (~2^-29 odds per value).
    # The bound allows such a 1-ulp difference (6e-8 for |w| < 1) to grow through the later
    # rounds' local training; any real fault (an update lost, counted twice, or trained from
    # other weights) moves weights by more than 1e-4.
    assert weights.keys() == reference.keys()
    worst = max(float(np.max(np.abs(weights[k] - reference[k]))) for k in weights)
    assert worst <= 1e-6, f"final weights differ from the uninterrupted run by up to {worst}"


def test_a_device_hanging_mid_job_is_left_behind_at_the_deadline(mosquitto_broker, tmp_path):
    # Prepare: 3 boards; after round 1 one of them freezes (SIGSTOP), later it is killed.
    # No test set: on_round then runs as each round closes, before the next one opens (a
    # scored round's metrics come out once its score is in: coordinator/scoring.py)
    job = JobConfig(
        job="hang",
        rounds=3,
        min_devices=2,
        min_results=2,
        round_timeout=6,
        run_dir=str(tmp_path / "run"),
        **{**FAST, "test_data": None},
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
