"""Buffered asynchronous rounds (FedBuff) on a real Mosquitto with real `fedge run` boards:
a job end to end (versions, staleness, accuracy), a stale update forged by an outsider,
boards that lose their link and come back, and a killed coordinator resumed."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import JobConfig
from coordinator.job import run_job
from coordinator.run_dir import RunDir
from edge_client.protocol import (
    DeviceStatus,
    RoundAnnouncement,
    Topics,
    chunked,
    decode,
    encode_weights,
)
from edge_client.transport import BrokerConfig
from tests.coordinator.board_processes import start_boards, stop
from tests.fixtures.brokers import mqtt_client
from tests.fixtures.proxy import CuttableProxy

pytestmark = pytest.mark.slow  # over ~5 s: left out of the fast loop (pytest -m "not slow")

ROOT = Path(__file__).resolve().parents[2]


def lines_of(run_dir: Path) -> list[dict]:
    p = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def sane(run_dir: Path) -> None:
    """The final checkpoint's weights are finite and of a sane size."""
    rd = RunDir(run_dir)
    weights, _ = rd.load_weights(
        rd.load_state(json.loads((run_dir / "state.json").read_text())["job"])
    )
    assert all(np.all(np.isfinite(w)) for w in weights.values())
    assert 0 < max(float(np.abs(w).max()) for w in weights.values()) < 100


def test_a_buffered_job_folds_versions_with_staleness_and_learns(
    mosquitto_broker, export_dir, tmp_path, caplog
):
    # Prepare: 3 boards, sim-02 five times slower; a version every 2 updates, stale changes
    # weighted 1/(1+s) (--staleness-exponent 1); and "old-01", a board that predates
    # buffered rounds (its status says no modes)
    job = JobConfig(
        job="fedbuff", mode="buffered", rounds=8, buffer_size=2, min_devices=3,
        staleness_exponent=1.0,
        round_timeout=120, wait_timeout=90, epochs=1, lr=0.05, test_data="fashion-mnist",
        model_dir=str(export_dir("mlp")), run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    caplog.set_level(logging.WARNING, "coordinator.buffered_rounds")
    old = DeviceStatus("old-01", "online", time.time(), samples=5000)
    with mqtt_client(mosquitto_broker, "old-01") as old_board:
        old_board.publish_wait(
            Topics("fedbuff").status("old-01"), old.to_json(), qos=1, retain=True
        )
    procs = start_boards(job, broker, tmp_path, 3, {2: 5.0})
    try:
        # Execute
        state = run_job(job, broker=broker, final_models=False)
    finally:
        stop(procs)
    # Assert: 8 versions in order, 2 updates each, each grant folded once
    lines = lines_of(tmp_path / "run")
    assert [m["round"] for m in lines] == list(range(1, 9)) and state.round == 8
    assert all(m["mode"] == "buffered" and len(m["buffer"]) == 2 for m in lines)
    folded = [(f["device"], f["grant"]) for m in lines for f in m["buffer"]]
    assert len(folded) == len(set(folded)) == 16
    for m in lines:
        for f in m["buffer"]:
            assert f["staleness"] == m["round"] - f["base"] >= 0
            assert f["weight"] == pytest.approx(1 / (1 + f["staleness"]), abs=1e-6)
    # the fast boards do not wait for the slow one: it arrives versions behind, or not yet
    stale = [f for m in lines for f in m["buffer"] if f["staleness"] > 0]
    assert stale, "no update was ever stale: the boards waited for each other"
    assert lines[-1]["accuracy"] > lines[0]["accuracy"] and lines[-1]["accuracy"] > 0.7
    sane(tmp_path / "run")
    # the old board got no slot, and the log says why, once
    assert all("old-01" not in m["selected"] for m in lines)
    told = [r.message for r in caplog.records if "old-01" in r.message]
    assert told == [
        "device old-01 speaks synchronous rounds only: it gets no training slot in this "
        "buffered job (update its edge client)"
    ]
    fast_log = (tmp_path / "devices" / "sim-00.log").read_text()
    assert "grant 3 for this device" in fast_log and "Traceback" not in fast_log


@pytest.mark.parametrize("within", [0.5, 0.0])
def test_a_slow_board_starts_over_from_the_first_trained_version_unless_told_not_to(
    mosquitto_broker, export_dir, tmp_path, within
):
    # Prepare: 2 boards slowed 3 times and sim-02, 20 times: all three start from version 1
    # (the initial weights); the fast two make version 2 while sim-02 is early in its training.
    # --start-over-within 0.5 (the default) or 0 (off)
    job = JobConfig(
        job="startover", mode="buffered", rounds=12, buffer_size=2, min_devices=3,
        start_over_within=within,
        round_timeout=120, wait_timeout=90, epochs=1, lr=0.05, test_data="fashion-mnist",
        model_dir=str(export_dir("mlp")), run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    procs = start_boards(job, broker, tmp_path, 3, {0: 3.0, 1: 3.0, 2: 20.0})
    try:
        # Execute
        run_job(job, broker=broker, final_models=False)
    finally:
        stop(procs)
    # Assert: with the hint, sim-02 drops its training from version 1 once version 2 is out
    # and trains the same grant from it (no failure sent, nothing rejected); its first update
    # folded is from version 2 or later. Without it, from version 1
    lines = lines_of(tmp_path / "run")
    assert [m["round"] for m in lines] == list(range(1, 13))
    assert not [r for m in lines for r in m["rejections"]]
    slow = [(f["grant"], f["base"]) for m in lines for f in m["buffer"] if f["device"] == "sim-02"]
    assert slow, "the slow board never got an update in"
    log = (tmp_path / "devices" / "sim-02.log").read_text()
    assert "Traceback" not in log
    first_grant = min(g for g, _ in slow)
    started_over = [x for x in log.splitlines() if "starting over from version" in x]
    if within:
        assert len(started_over) == 1, log[-3000:]
        assert f"version 1 (grant {first_grant}): starting over from version" in started_over[0]
        assert "into this training from the job's initial weights" in started_over[0]
        assert dict(slow)[first_grant] >= 2
    else:
        assert not started_over
        assert dict(slow)[first_grant] == 1


def test_a_killed_buffered_coordinator_resumes_without_folding_an_update_twice(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: 3 boards; a `fedcoord start --mode buffered` process, killed (SIGKILL) once
    # 2 versions are saved, then resumed with --resume
    run_dir = tmp_path / "run"
    model = str(export_dir("mlp"))
    job = JobConfig(job="bufresume", mode="buffered", rounds=6, model_dir=model, epochs=1)
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    cmd = [sys.executable, "-m", "coordinator.cli", "start", "--broker", mosquitto_broker.url]
    cmd += ["--job", "bufresume", "--mode", "buffered", "--rounds", "6", "--buffer-size", "2"]
    cmd += ["--min-devices", "3", "--model-dir", model, "--run-dir", str(run_dir)]
    cmd += ["--epochs", "1", "--lr", "0.05"]
    procs = start_boards(job, broker, tmp_path, 3, {})
    try:
        log = open(tmp_path / "first.log", "wb")  # noqa: SIM115
        first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 120
        while len(lines_of(run_dir)) < 2 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.02)
        # Execute
        first.send_signal(signal.SIGKILL)
        first.wait()
        killed_at = len(lines_of(run_dir))
        assert 2 <= killed_at < 6, (tmp_path / "first.log").read_text()[-2000:]
        second = subprocess.run(
            [sys.executable, "-m", "coordinator.cli", "start", "--resume", str(run_dir)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        stop(procs)
    # Assert: versions 1..6 once each, in order; no grant and no update folded twice
    assert second.returncode == 0, second.stderr[-3000:]
    lines = lines_of(run_dir)
    assert [m["round"] for m in lines] == list(range(1, 7))
    folded = [f for m in lines for f in m["buffer"]]
    assert len(folded) == 12
    assert len({(f["device"], f["grant"]) for f in folded}) == 12
    assert len({(f["device"], f["base"], f["sha256"]) for f in folded}) == 12
    assert all(0 <= f["base"] <= m["round"] for m in lines for f in m["buffer"])
    grants = json.loads((run_dir / "grants.json").read_text())["counters"]
    issued = {(d, g) for d, n in grants.items() for g in range(1, n + 1)}
    assert {(f["device"], f["grant"]) for f in folded} <= issued
    assert "resuming job bufresume" in second.stderr
    sane(run_dir)


def test_an_update_beyond_the_maximum_staleness_is_rejected_with_a_reason(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: a buffered job (at most 2 versions behind); once version 4 is open, an
    # outsider publishes under sim-00's name an update trained from version 1, as anyone
    # who can publish on the broker could: weights, grant and base read from retained topics
    job = JobConfig(
        job="stale", mode="buffered", rounds=6, buffer_size=2, max_staleness=2, min_devices=3,
        round_timeout=120, wait_timeout=90, epochs=1, lr=0.05,
        model_dir=str(export_dir("mlp")), run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    topics = Topics("stale")
    seen: dict[int, RoundAnnouncement] = {}
    forged: list[bytes] = []

    with mqtt_client(mosquitto_broker, "outsider") as outsider:
        outsider.subscribe_wait(topics.round, qos=1)
        outsider.subscribe_wait(topics.global_weights + "/#", qos=1)

        def on_round(metrics) -> None:  # noqa: ANN001
            for m in outsider.collector.matching(topics.round):
                ann = RoundAnnouncement.from_json(m.payload)
                seen.setdefault(ann.round, ann)
            if metrics.round == 3:  # version 4 opens next
                weights = first_global(outsider, topics)
                payload = encode_weights(
                    weights, kind="update", job="stale", round=1, sender="sim-00",
                    samples=5000, meta={"base_sha256": seen[1].global_sha256, "grant": 1},
                )  # fmt: skip
                for topic, chunk in chunked(topics.update("sim-00"), payload):
                    outsider.publish_wait(topic, chunk, qos=1)
                forged.append(payload)

        procs = start_boards(job, broker, tmp_path, 3, {})
        try:
            # Execute
            run_job(job, broker=broker, final_models=False, on_round=on_round)
        finally:
            stop(procs)
    # Assert: rejected with its reason, counted as wasted, never folded
    assert forged
    lines = lines_of(tmp_path / "run")
    rejections = [(m["round"], r) for m in lines for r in m["rejections"]]
    stale = [(v, r) for v, r in rejections if r["round"] == 1 and r["device"] == "sim-00"]
    assert len(stale) == 1, rejections
    version, rejection = stale[0]
    assert version >= 4 and not rejection["counted"]
    assert rejection["reason"].startswith(
        f"stale update: trained from version 1, {version - 1} versions behind version {version}"
    )
    assert "(at most 2, --max-staleness): wasted" in rejection["reason"]
    assert next(m for m in lines if m["round"] == version)["wasted"] >= 1
    sha = decode(forged[0]).sha256
    assert all(f["sha256"] != sha for m in lines for f in m["buffer"])


def first_global(client, topics: Topics) -> dict[str, np.ndarray]:  # noqa: ANN001
    """The global weights of version 1 (round 1), from what ``client`` received."""
    for m in client.collector.matching(topics.global_weights + "/#"):
        env = decode(m.payload[104:]) if m.payload else None  # one chunk (mlp < 960 kB)
        if env is not None and env.round == 1:
            return env.weights()
    raise AssertionError("version 1's global weights were not seen")


def test_boards_that_lose_their_link_mid_job_get_a_new_slot_when_back(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: 3 boards, sim-01 behind a proxy that is cut for 3 s after version 2, once
    # its status says it is training (it holds a slot it has not answered yet; with its
    # share of a buffer a board has none until the next version, and a slot still listed
    # may be answered already, so the announcement alone does not tell)
    job = JobConfig(
        job="flaky", mode="buffered", rounds=8, buffer_size=2, min_devices=3,
        round_timeout=120, wait_timeout=90, epochs=1, lr=0.05,
        model_dir=str(export_dir("mlp")), run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    proxy = CuttableProxy(broker.host, broker.port).start()
    cut_at: list[int] = []

    def outage() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            last = watcher.collector.matching(Topics("flaky").status("sim-01"))[-1:]
            status = DeviceStatus.from_json(last[0].payload) if last else None
            if status is not None and status.state == "training":
                break
            time.sleep(0.02)
        proxy.cut()
        time.sleep(3)
        proxy.restore()

    def on_round(metrics) -> None:  # noqa: ANN001
        if metrics.round == 2:
            cut_at.append(metrics.round)
            threading.Thread(target=outage, daemon=True).start()
        if metrics.round == 4:  # versions are quick: let sim-01 reconnect before the end
            deadline = time.monotonic() + 30
            while proxy.connections < 2 and time.monotonic() < deadline:
                time.sleep(0.1)

    with mqtt_client(mosquitto_broker, "watcher") as watcher:
        watcher.subscribe_wait(Topics("flaky").status("sim-01"), qos=1)
        # sim-01 trains 4x slower, so the cut finds it holding its slot (not between grants)
        procs = start_boards(job, broker, tmp_path, 3, {1: 4}, broker_urls={1: proxy.url})
        try:
            # Execute
            state = run_job(job, broker=broker, final_models=False, on_round=on_round)
        finally:
            stop(procs)
            proxy.stop()
    # Assert: the job went on without sim-01, took its slot back, and sim-01 trained again
    assert state.round == 8 and cut_at
    lines = lines_of(tmp_path / "run")
    dropped_in = [m["round"] for m in lines if "sim-01" in m.get("dropped", [])]
    assert dropped_in and dropped_in[0] >= 3
    later = [f for m in lines if m["round"] > dropped_in[0] for f in m["buffer"]]
    assert any(f["device"] == "sim-01" for f in later), "sim-01 never came back"
    folded = [(f["device"], f["grant"]) for m in lines for f in m["buffer"]]
    assert len(folded) == len(set(folded))
    log = (tmp_path / "devices" / "sim-01.log").read_text()
    assert "Traceback" not in log
    sane(tmp_path / "run")
