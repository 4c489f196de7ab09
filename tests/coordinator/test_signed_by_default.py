"""Signing is the default: a job signs its model and rounds with its own key (made on the
first run, reused after), ``fedcoord simulate`` gives its boards that key, and an unsigned
job is an explicit ``--unsigned`` that is logged and published. Against a real Mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from coordinator.cli import main as fedcoord
from coordinator.config import JobConfig
from coordinator.job_keys import job_signing_key, with_signing_key
from coordinator.simulation import ROOT
from edge_client.errors import ConfigError, ProtocolError
from edge_client.protocol import Envelope, JobControl, Reassembler, decode, parse_chunk
from tests.coordinator.test_jobs_end_to_end import FAST_FLAGS
from tests.fixtures.brokers import mqtt_client

FORGED_ROUND = 10**9


def retained(broker, topic: str, timeout: float = 5.0) -> bytes:  # noqa: ANN001
    with mqtt_client(broker, "reader") as reader:
        reader.subscribe_wait(topic, qos=1)
        return reader.collector.wait_for(topic, 1, timeout)[0].payload


def retained_model(broker, job: str, timeout: float = 10.0) -> Envelope:  # noqa: ANN001
    """The job's retained model envelope, reassembled from its chunks."""
    base = f"fl/v1/{job}/model"
    with mqtt_client(broker, "model-reader") as reader:
        reader.subscribe_wait(f"{base}/#", qos=1)
        first = parse_chunk(reader.collector.wait_for(f"{base}/#", 1, timeout)[0].payload)
        chunks = reader.collector.wait_for(f"{base}/#", first.count, timeout)
    assembler = Reassembler()
    whole = [assembler.feed(base, m.payload) for m in chunks]
    return decode(next(w for w in whole if w is not None), expect_kind="model")


def test_a_job_reuses_its_key_and_unsigned_is_explicit(job_keys_dir):
    # Execute: two runs of one job, and a key made beforehand for another
    first = with_signing_key(JobConfig(job="twice"))
    second = with_signing_key(JobConfig(job="twice"))
    made = CliRunner().invoke(fedcoord, ["keys", "generate", "--job", "early"])
    # Assert
    assert first.signing_key == second.signing_key == str(job_keys_dir / "twice" / "signing.key")
    assert (job_keys_dir / "twice" / "signing.key").stat().st_mode & 0o077 == 0
    assert made.exit_code == 0 and "new key of job early" in made.output
    assert with_signing_key(JobConfig(job="early")).signing_key.startswith(str(job_keys_dir))
    assert with_signing_key(JobConfig(job="plain", unsigned=True)).signing_key is None
    with pytest.raises(ConfigError, match="unsigned and signing_key contradict"):
        JobConfig(unsigned=True, signing_key="k.key")


@pytest.mark.slow
def test_default_job_is_signed_and_its_boards_ignore_a_forged_announcement(
    mosquitto_broker, tmp_path
):
    # Prepare: the job's key exists before the job (as when boards were flashed with it)
    keys, _ = job_signing_key("signed")
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "coordinator.cli", "simulate", "--devices", "2"]
    cmd += ["--rounds", "3", "--job", "signed", "--broker", mosquitto_broker.url]
    cmd += ["--run-dir", str(run_dir), *FAST_FLAGS, "--max-retries", "0", "--round-timeout", "60"]
    with mqtt_client(mosquitto_broker, "forger") as forger:
        forger.subscribe_wait("fl/v1/signed/round", qos=1)
        forger.subscribe_wait("fl/v1/signed/status/+", qos=1)
        job = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            # Execute: once round 1 is open, publish a copy of its announcement for round
            # 10^9, unsigned: what a stranger on the broker would send to disable boards
            deadline = time.time() + 180
            real = None
            while real is None and time.time() < deadline and job.poll() is None:
                for m in forger.collector.matching("fl/v1/signed/round"):
                    ann = json.loads(m.payload)
                    if ann["round"] == 1 and ann["state"] == "open":
                        real = ann
                time.sleep(0.05)
            assert real is not None, "round 1 never opened"
            forged = {k: v for k, v in real.items() if k != "signature"}
            forged.update(round=FORGED_ROUND, deadline=time.time() + 600)
            forger.publish_wait("fl/v1/signed/round", json.dumps(forged), qos=1, retain=True)
            out, err = job.communicate(timeout=300)
        finally:
            job.kill()
        statuses = [json.loads(m.payload) for m in forger.collector.matching("fl/v1/+/status/+")]
    model = retained_model(mosquitto_broker, "signed")
    control = JobControl.from_json(retained(mosquitto_broker, "fl/v1/signed/control"))
    # Assert: signed with the job's key, which the simulated boards trusted
    assert job.returncode == 0, err.decode()[-3000:]
    assert f"signed with {keys.private}" in out.decode()
    assert model.meta["signature"]["key"] == keys.key_id
    assert control.signed is True and control.signature["key"] == keys.key_id
    # every round had both boards: none was disabled by the forged round
    assert "round   3/3  devices 2/2" in out.decode()
    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in metrics] == [1, 2, 3]
    assert not [s for s in statuses if s.get("round") == FORGED_ROUND]
    for progress in run_dir.glob("devices/*/progress.json"):
        assert json.loads(progress.read_text())["last_completed_round"] < FORGED_ROUND


def test_unsigned_job_says_so_in_its_log_and_control_message(
    mosquitto_broker, tmp_path, export_dir
):
    # Execute: an --unsigned job that finds no device (it gives up after 1 s)
    model_dir: Path = export_dir("mlp")
    r = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "start", "--unsigned", "--job", "plain"]
        + ["--broker", mosquitto_broker.url, "--model-dir", str(model_dir)]
        + ["--run-dir", str(tmp_path / "run"), "--wait-timeout", "1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    model = retained_model(mosquitto_broker, "plain")
    control = JobControl.from_json(retained(mosquitto_broker, "fl/v1/plain/control"))
    # Assert
    assert r.returncode == 1 and "only 0 of 1 devices online" in r.stderr
    assert "UNSIGNED (--unsigned)" in r.stdout
    assert "WARNING" in r.stderr and "UNSIGNED JOB" in r.stderr
    assert "signature" not in model.meta
    assert control.signed is False and control.signature is None


def test_job_control_says_whether_the_job_is_signed_and_operators_need_not():
    signed = JobControl("j", "running", 1.0, signed=True)
    unsigned = JobControl("j", "running", 1.0, signed=False)
    operator = JobControl("j", "paused", 2.0, "by alice")
    assert JobControl.from_json(signed.to_json()) == signed
    assert json.loads(unsigned.to_json())["signed"] is False
    assert (
        operator.to_json() == b'{"v":1,"job":"j","state":"paused","time":2.0,"detail":"by alice"}'
    )
    with pytest.raises(ProtocolError, match="signed must be true, false or absent"):
        JobControl.from_json(b'{"v":1,"job":"j","state":"running","time":1,"signed":"yes"}')
