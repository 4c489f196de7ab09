"""A board killed (SIGKILL) in the middle of local training, then rebooted: real `fedge run`
processes and a real Mosquitto. Its Last Will drops it from the open round, which closes as
soon as the others have reported, long before its deadline; the restarted board resumes from
its state directory and takes part again. (The coordinator
killed mid-round and a hanging board are in test_jobs_end_to_end.py.)"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest

from coordinator.config import JobConfig
from coordinator.job import run_job
from coordinator.simulation import FleetConfig, device_command, fleet_processes
from edge_client.protocol import DeviceStatus
from edge_client.transport import BrokerConfig
from tests.fixtures.brokers import mqtt_client

pytestmark = pytest.mark.slow  # over ~5 s: left out of the fast loop (pytest -m "not slow")


def test_a_device_killed_mid_training_is_dropped_at_once_then_rejoins_after_a_reboot(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: 3 boards with 20,000 images each (about a second of training per round)
    job = JobConfig(
        job="kill", rounds=4, min_devices=2, min_results=2, round_timeout=90, wait_timeout=60,
        model_dir=str(export_dir("mlp")), epochs=1, lr=0.05, run_dir=str(tmp_path / "run"),
    )  # fmt: skip
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    fleet = FleetConfig(devices=3)
    rebooted: list[subprocess.Popen] = []
    with (
        fleet_processes(fleet, job, broker, tmp_path) as procs,
        mqtt_client(mosquitto_broker, "watcher") as watcher,
    ):
        watcher.subscribe_wait("fl/v1/kill/status/+", qos=1)
        watcher.collector.wait_for("fl/v1/kill/status/+", n=3, timeout=60)

        def kill_during_training() -> None:
            time.sleep(0.3)  # round 2 is open and sim-02 is training
            procs[2].kill()
            procs[2].wait()

        def on_round(metrics: dict) -> None:
            if metrics["round"] == 1:
                threading.Thread(target=kill_during_training).start()
            elif metrics["round"] == 2:  # reboot: same command, same state directory
                watcher.collector.clear()
                cmd = device_command(fleet, job, broker, 2, tmp_path / "devices" / "sim-02")
                log = open(tmp_path / "devices" / "sim-02.rebooted.log", "wb")  # noqa: SIM115
                rebooted.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
                deadline = time.monotonic() + 60
                while not any(
                    DeviceStatus.from_json(m.payload).state != "offline"
                    for m in watcher.collector.matching("fl/v1/kill/status/sim-02")
                ):
                    assert time.monotonic() < deadline, "the rebooted board did not come back"
                    time.sleep(0.1)
                time.sleep(0.3)  # its status reaches the coordinator before round 3 selects

        # Execute
        state = run_job(job, on_round=on_round, broker=broker, final_models=False)
        for p in rebooted:
            p.wait(30)
    # Assert
    rounds = {m["round"]: m for m in state.history}
    assert rounds[1]["participants"] == ["sim-00", "sim-01", "sim-02"]
    assert rounds[2]["participants"] == ["sim-00", "sim-01"]
    # Closed once sim-00 and sim-01 reported, not at its 90 s deadline (generous for load)
    assert rounds[2]["duration_s"] < 45
    assert rounds[2]["dropped"] == ["sim-02"]
    assert rounds[3]["participants"] == rounds[4]["participants"] == ["sim-00", "sim-01", "sim-02"]
    assert state.finished and all(
        m["updates_aggregated"] == len(m["participants"]) for m in rounds.values()
    )
    log = (tmp_path / "devices" / "sim-02.rebooted.log").read_text()
    assert "resumed from" in log and "Traceback" not in log
    progress = json.loads((tmp_path / "devices" / "sim-02" / "progress.json").read_text())
    assert progress["last_completed_round"] == 4
