"""Simulated fleets end to end (coordinator/fleet/): real `fedge run` processes behind
throttling links, a real Mosquitto, the real coordinator. A slow board takes its factor,
a thin link takes size / bandwidth, boards go offline and come back, boards are killed in
the middle of training and reboot, and an oversubscribed fleet is refused."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.config import JobConfig
from coordinator.fleet.runner import simulate_fleet
from coordinator.fleet.spec import parse_fleet
from coordinator.simulation import ROOT, FleetConfig
from edge_client.errors import ConfigError
from tests.fixtures.brokers import mqtt_client

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def job_for(tmp_path: Path, broker_url: str, model_dir: Path, **kw: object) -> JobConfig:
    base: dict = dict(
        job="fleet", rounds=2, epochs=1, lr=0.05, round_timeout=90, wait_timeout=120,
        model_dir=str(model_dir), broker=broker_url, run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    return JobConfig(**{**base, **kw})


def fleet_from(toml: str, base: Path = Path(".")) -> object:
    return parse_fleet(tomllib.loads(toml), source="test", base=base)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def events(run: Path) -> list[dict]:
    lines = (run / "fleet" / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_a_slow_board_takes_its_factor_and_a_thin_link_takes_size_over_bandwidth(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: a fast board, a board 4x slower, a board behind a 300 kbit/s uplink (the
    # fleet fits the CPU rule: 1/2 + 1/8 + a little of a core)
    spec = fleet_from(
        """
        seed = 3
        [[boards]]
        name = "fast"
        profile = "linux-x86_64"
        slowdown = 2.0
        [[boards]]
        name = "slow"
        profile = "rpi4-64"
        slowdown = 8.0
        [[boards]]
        name = "thin"
        profile = "linux-x86_64"
        slowdown = 2.0
        link = { up_kbit = 300, latency_ms = 50 }
        """
    )
    job = job_for(tmp_path, mosquitto_broker.url, export_dir("mlp"))
    arrivals: list[tuple[float, str, bytes]] = []  # what reaches the broker from "thin", when
    # Execute
    with mqtt_client(mosquitto_broker, "watcher") as watcher:
        watcher.on_message = lambda c, u, msg: arrivals.append(
            (time.monotonic(), msg.topic, bytes(msg.payload))
        )
        for topic in ("fl/v1/fleet/status/thin-00", "fl/v1/fleet/update/thin-00/#"):
            watcher.subscribe_wait(topic, qos=1)
        state, summary = simulate_fleet(job, FleetConfig(), spec)
    # Assert: every round got all three updates
    rounds = metrics(job.run_path)
    assert state.round == 2 and all(len(m["participants"]) == 3 for m in rounds)
    trainings = {}  # round -> when "thin" reported it started training
    for t, topic, body in arrivals:
        status = json.loads(body) if "status" in topic else {}
        if status.get("state") == "training":
            trainings.setdefault(status["round"], t)
    for m in rounds:
        d = m["devices"]
        fast, slow = d["fast-00"]["duration_s"], d["slow-00"]["duration_s"]
        # the slow board trained for ~8 x the compute calibrated on this machine (CPU time);
        # when other work loads this machine, compute alone may take longer than that: the
        # fast board's time (at least its compute's wall time) bounds the delay then
        expected = 8 * summary["boards"]["slow-00"]["compute_s"]
        assert 0.75 * expected < slow < 1.5 * max(expected, fast) + 5, (expected, fast, slow)
        # the thin board's update reached the broker ~8 * size / 300 kbit/s after its training
        started, until = trainings[m["round"]], trainings.get(m["round"] + 1, math.inf)
        arrived = max(t for t, topic, _ in arrivals if "update" in topic and started < t < until)
        upload = d["thin-00"]["bytes_up"] * 8 / 300_000
        after_training = arrived - started - d["thin-00"]["duration_s"]
        assert 0.8 * upload < after_training < 1.3 * upload + 2, (upload, after_training)
    # the run directory holds the fleet's record and the utilisation it ran at
    record = json.loads((job.run_path / "fleet" / "summary.json").read_text())
    assert record == summary
    assert 0 < summary["measured"]["utilisation"] < 1 and summary["measured"]["device_cpu_s"] > 0
    assert summary["boards"]["slow-00"]["slowdown"] == 8.0
    assert summary["estimate"]["utilisation"] <= 0.8 and not summary["estimate"]["oversubscribed"]
    assert summary["boards"]["thin-00"]["bytes_up"] > rounds[0]["devices"]["thin-00"]["bytes_up"]


def test_boards_go_offline_come_back_and_are_killed_mid_training(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: a steady board; "wifi" loses its network from 15 s to 30 s (a trace);
    # "flaky" is killed (power cut) in the middle of every local training, back after ~3 s.
    (tmp_path / "trace.csv").write_text("wifi-00,0,15\nwifi-00,30,inf\n")
    spec = fleet_from(
        """
        seed = 5
        trace = "trace.csv"
        [[boards]]
        name = "steady"
        profile = "linux-x86_64"
        slowdown = 3.0
        [[boards]]
        name = "wifi"
        profile = "linux-x86_64"
        slowdown = 3.0
        availability = { offline = "network" }
        [[boards]]
        name = "flaky"
        profile = "rpi4-64"
        slowdown = 6.0
        dropout = { probability = 1.0, kill_share = 1.0, mean_downtime_s = 3 }
        """,
        base=tmp_path,
    )
    job = job_for(
        tmp_path, mosquitto_broker.url, export_dir("mlp"),
        rounds=5, round_timeout=25, min_results=1, max_retries=3,
    )  # fmt: skip
    # Execute
    state, summary = simulate_fleet(job, FleetConfig(), spec)
    # Assert: the job went on; wifi dropped off the network and came back, then took part
    assert state.round == 5
    ev = events(job.run_path)
    wifi = [(e["event"], e["mode"]) for e in ev if e["device"] == "wifi-00" and "mode" in e]
    assert wifi == [("offline", "network"), ("online", "network")]
    back_at = next(e["t"] for e in ev if e["device"] == "wifi-00" and e["event"] == "online")
    assert summary["boards"]["wifi-00"]["starts"] == 1  # the process lived through it
    assert back_at > 20
    trained = [e["t"] for e in ev if e["device"] == "wifi-00" and e["event"] == "training"]
    assert any(t > back_at for t in trained)  # it trained again once back
    assert "wifi-00" in metrics(job.run_path)[-1]["participants"]
    # flaky was killed while training, rebooted, and started training again
    kills = [e for e in ev if e["device"] == "flaky-00" and e["event"] == "dropout"]
    assert kills and all(e["mode"] == "power" and e["state"] == "training" for e in kills)
    assert summary["boards"]["flaky-00"]["starts"] >= 2
    assert summary["boards"]["flaky-00"]["trainings"] >= 2
    assert all("flaky-00" not in m["participants"] for m in metrics(job.run_path))


def test_an_oversubscribed_fleet_is_refused_before_any_board_starts(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: 8 boards as fast as this machine, no link limits: 8 busy cores wanted
    (tmp_path / "busy.toml").write_text(
        '[[boards]]\nname = "pc"\nprofile = "linux-x86_64"\ncount = 8\n'
    )
    cmd = [
        sys.executable, "-m", "coordinator.cli", "simulate", "--fleet", str(tmp_path / "busy.toml"),
        "--model-dir", str(export_dir("mlp")), "--broker", mosquitto_broker.url,
        "--run-dir", str(tmp_path / "run"), "--epochs", "1",
    ]  # fmt: skip
    # Execute
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    # Assert: a one-line error naming the problem and the way out; no board was started
    assert r.returncode == 1, r.stdout + r.stderr
    error = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(error) == 1 and "oversubscribed" in error[0]
    assert "--allow-oversubscribed" in error[0]
    assert not (tmp_path / "run" / "devices").exists()


def test_allow_oversubscribed_runs_and_reports_it(mosquitto_broker, export_dir, tmp_path):
    spec = fleet_from('max_utilisation = 0.05\n[[boards]]\nname = "pc"\nprofile = "linux-x86_64"')
    job = job_for(tmp_path, mosquitto_broker.url, export_dir("mlp"), rounds=1)
    with pytest.raises(ConfigError, match="oversubscribed"):
        simulate_fleet(job, FleetConfig(), spec)
    state, summary = simulate_fleet(
        job.replace(run_dir=str(tmp_path / "run2")), FleetConfig(), spec, allow_oversubscribed=True
    )
    assert state.round == 1
    assert summary["estimate"]["oversubscribed"] and summary["estimate"]["allowed_anyway"]
