"""Semi-synchronous rounds on a real Mosquitto with real `fedge run` boards: over-selection
closes a round at its target and the slow board stops training when told; late updates
(from a board that does not stop: a scripted device holding its update) are discarded with
a reason, folded into the next round with a staleness weight, or refused beyond the maximum
staleness."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import JobConfig
from coordinator.job import run_job
from coordinator.run_dir import RunDir
from edge_client.data import load_dataset, partition
from edge_client.manifest import Manifest
from edge_client.trainable_model import TrainableModel
from edge_client.transport import BrokerConfig
from tests.coordinator.board_processes import start_boards, stop
from tests.coordinator.fleet_support import mqtt_device

pytestmark = pytest.mark.slow  # over ~5 s: left out of the fast loop (pytest -m "not slow")

ROOT = Path(__file__).resolve().parents[2]


def test_over_selection_closes_at_the_target_and_the_slow_board_stops_training(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: 3 boards, sim-02 forty times slower; 2 updates needed, 3 selected
    job = JobConfig(
        job="over", rounds=2, min_devices=3, min_results=2, clients_per_round=2,
        over_select=1.5, round_timeout=120, wait_timeout=90, epochs=1, lr=0.05,
        model_dir=str(export_dir("mlp")), run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    procs = start_boards(job, broker, tmp_path, 3, {2: 40.0}, parts=3)
    try:
        # Execute
        state = run_job(job, broker=broker, final_models=False)
    finally:
        stop(procs)
    # Assert: each round closed at 2 updates, long before its 120 s deadline
    for m in state.history:
        assert m.selected == ("sim-00", "sim-01", "sim-02")
        assert m.participants == ("sim-00", "sim-01")
        assert m.target_updates == 2 and m.cancelled == ("sim-02",)
        assert m.duration_s < 60
    slow_log = (tmp_path / "devices" / "sim-02.log").read_text()
    assert "training stopped: round 1 closed before this device finished" in slow_log
    assert "update sent" not in slow_log and "Traceback" not in slow_log


@pytest.fixture(scope="module")
def late_model(export_dir):
    d = export_dir("mlp")
    tflite, manifest = (d / "model.tflite").read_bytes(), Manifest.load(d / "manifest.json")
    train = load_dataset("fashion-mnist", "train")
    part = train.subset(partition(train.y, 4, "iid", 7)[0][:1000])
    return d, lambda: TrainableModel(tflite, manifest, num_threads=1), part


@pytest.mark.parametrize(
    ("mode", "held_rounds", "max_staleness", "expect"),
    [
        ("discard", 1, 2, "discarded"),
        ("fold", 1, 2, "folded"),
        ("fold", 2, 1, "too stale"),
    ],
)
def test_a_late_update_is_discarded_folded_or_refused_as_too_stale(
    mosquitto_broker, late_model, tmp_path, mode, held_rounds, max_staleness, expect
):
    # Prepare: 2 real boards and a scripted one ("late") that holds its round 1 update
    # until `held_rounds` rounds have closed (a board that cannot stop, or an older one)
    model_dir, make_model, data = late_model
    job = JobConfig(
        job=f"late{held_rounds}{mode}", rounds=held_rounds + 1, min_devices=3, min_results=2,
        clients_per_round=2, over_select=1.5, late_updates=mode, max_staleness=max_staleness,
        round_timeout=120, wait_timeout=90, epochs=1, lr=0.05, model_dir=str(model_dir),
        run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    late = mqtt_device(mosquitto_broker.url, job.job, "late", make_model(), data)
    late.gate.clear()
    late.start()

    def on_round(metrics) -> None:  # noqa: ANN001
        if metrics.round == held_rounds:
            late.gate.set()  # sent now: the coordinator sees it when round held+1 is open
            time.sleep(0.5)

    with ExitStack() as stack:
        procs = start_boards(job, broker, tmp_path, 2, {}, parts=2)
        stack.callback(stop, procs)
        stack.callback(late.stop)
        # Execute
        state = run_job(job, broker=broker, final_models=False, on_round=on_round)
    # Assert: round 1 closed without "late"; the round after the release handled its update
    first, after = state.history[0], state.history[held_rounds]
    assert first.cancelled == ("late",) and first.participants == ("sim-00", "sim-01")
    assert 1 in late.sent and not late.errors
    if expect == "folded":
        assert after.late_folded == {"late": 1} and after.wasted == 0
        assert after.updates_aggregated == len(after.participants) + 1
    else:  # (too stale: its round 2 update, sent next and 1 round stale, may be folded)
        assert after.late_folded in ({}, {"late": 2}) and after.wasted == 1
        reason = after.late_discarded["late"]
        assert "late update for round 1" in reason
        assert ("--late-updates discard" if expect == "discarded" else "--max-staleness") in reason
        assert after.updates_aggregated == len(after.participants) + len(after.late_folded)
    assert all(m.updates_aggregated >= 2 for m in state.history)
    weights, _ = RunDir(tmp_path / "run").load_weights(state)
    assert all(np.all(np.isfinite(w)) for w in weights.values())
    assert math.isfinite(sum(float(np.abs(w).sum()) for w in weights.values()))


def test_a_killed_semi_synchronous_coordinator_resumes_without_counting_an_update_twice(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: 3 boards; a `fedcoord start` process selecting 3, closing rounds at 2 updates
    # and folding late ones; it is killed (SIGKILL) after round 2, then resumed
    run_dir = tmp_path / "run"
    model = str(export_dir("mlp"))
    job = JobConfig(job="semiresume", rounds=5, min_devices=3, model_dir=model, epochs=1)
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    cmd = [sys.executable, "-m", "coordinator.cli", "start", "--broker", mosquitto_broker.url]
    cmd += ["--job", "semiresume", "--rounds", "5", "--min-devices", "3", "--model-dir", model]
    cmd += ["--run-dir", str(run_dir), "--epochs", "1", "--lr", "0.05", "--min-results", "2"]
    cmd += ["--clients-per-round", "2", "--over-select", "1.5", "--late-updates", "fold"]
    procs = start_boards(job, broker, tmp_path, 3, {}, parts=3)
    try:
        first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        while len(lines_of(run_dir)) < 2 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        # Execute
        first.send_signal(signal.SIGKILL)
        first.wait()
        assert 2 <= len(lines_of(run_dir)) < 5, first.stderr.read().decode()[-2000:]
        second = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "start", "--resume", str(run_dir)],
            cwd=ROOT, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    finally:
        stop(procs)
    # Assert: every round once, each closed at 2 updates, no (device, round) counted twice
    assert second.returncode == 0, second.stderr[-3000:]
    lines = lines_of(run_dir)
    assert [m["round"] for m in lines] == [1, 2, 3, 4, 5]
    counted = [(d, m["round"]) for m in lines for d in m["participants"]]
    counted += [(d, r) for m in lines for d, r in m.get("late_folded", {}).items()]
    assert len(counted) == len(set(counted))
    for m in lines:
        assert m["target_updates"] == 2 and len(m["participants"]) == 2
        assert m["updates_aggregated"] == 2 + len(m.get("late_folded", {}))


def lines_of(run_dir: Path) -> list[dict]:
    p = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []
