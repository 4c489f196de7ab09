"""Job control against a real Mosquitto (issue 16, item 5): a control message for another job,
an unsigned or foreign-signed one in a signed job, and a pause that never ends must not steer
the job; the dashboard's admins still pause and resume it (signed with the job's key), and the
dashboard shows who paused, when, and when the pause ends by itself."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from coordinator.config import JobConfig
from coordinator.dashboard.app import create_app
from coordinator.dashboard.auth import AuthConfig
from coordinator.dashboard.routes.control import dashboard_control
from coordinator.monitoring.follower import JobFollower
from coordinator.monitoring.view import JobView
from coordinator.pki import generate_signing_key
from coordinator.run_dir import RunDir
from coordinator.server import Coordinator, JobError, ModelBundle
from edge_client.data import load_dataset
from edge_client.manifest import Manifest
from edge_client.messaging import ControlReceived
from edge_client.protocol import DeviceStatus, JobControl, Topics
from edge_client.signing import Signer
from edge_client.trainable_model import TrainableModel
from edge_client.transport import BrokerConfig, MqttTransport
from tests.coordinator.fleet_support import TrainingDevice, mqtt_device
from tests.fixtures.brokers import FixtureClient, MosquittoProcess, mqtt_client

ADMIN = "admin-secret-1234"
_names = itertools.count(1)


@pytest.fixture(scope="module")
def bundle(export_dir) -> ModelBundle:
    d = export_dir("mlp")
    tflite, manifest = (d / "model.tflite").read_bytes(), Manifest.load(d / "manifest.json")
    return ModelBundle(tflite, manifest, TrainableModel(tflite, manifest).get_weights())


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[str, Signer, Signer]:
    """(the job's private key file, its signer, a stranger's signer)."""
    made = generate_signing_key(tmp_path_factory.mktemp("job-key"))
    other = generate_signing_key(tmp_path_factory.mktemp("other-key"))
    return str(made.private), Signer.from_file(made.private), Signer.from_file(other.private)


@dataclass
class RunningJob:
    job: str
    coordinator: Coordinator
    transport: MqttTransport
    thread: threading.Thread
    outcome: dict[str, Any] = field(default_factory=dict)
    devices: list[TrainingDevice] = field(default_factory=list)

    def finish(self, timeout: float) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the job did not finish within {timeout} s"
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["state"]

    @property
    def topics(self) -> Topics:
        return Topics(self.job)

    def close(self) -> None:
        for device in self.devices:
            device.stop()
        self.coordinator.control_state = "stopped"  # ends a job left waiting
        self.thread.join(10)
        self.transport.close()


@pytest.fixture
def jobs():
    started: list[RunningJob] = []
    yield started
    for job in started:
        job.close()


def start_job(
    jobs: list[RunningJob],
    broker: MosquittoProcess,
    bundle: ModelBundle,
    tmp_path,
    **settings: Any,
) -> RunningJob:
    name = f"ctl{next(_names)}"  # a job of its own: no retained messages of another test
    defaults: dict[str, Any] = {
        "rounds": 1, "min_devices": 1, "min_results": 1, "round_timeout": 60,
        "wait_timeout": 120, "epochs": 1, "lr": 0.05,
    }  # fmt: skip
    config = JobConfig(job=name, **{**defaults, **settings})
    transport = MqttTransport(BrokerConfig.from_url(broker.url), f"coordinator-{name}")
    transport.connect()
    run_dir = RunDir(tmp_path / "run")
    run_dir.create({}, resume=True)
    coordinator = Coordinator(config, transport, bundle, run_dir)
    job = RunningJob(name, coordinator, transport, threading.Thread(target=lambda: None))

    def run() -> None:
        try:
            job.outcome["state"] = coordinator.run()
        except BaseException as exc:  # surfaced by finish()
            job.outcome["error"] = exc

    job.thread = threading.Thread(target=run, daemon=True)
    job.thread.start()
    jobs.append(job)
    return job


def coordinator_handled(operator: FixtureClient, job: RunningJob, name: str) -> None:
    """Publish a device status after the messages already sent, and wait until the
    coordinator has seen it: everything the operator published before was handled too.
    (Retained, so that it also reaches a coordinator still subscribing.)"""
    status = DeviceStatus(name, "offline", time.time())
    operator.publish_wait(job.topics.status(name), status.to_json(), qos=1, retain=True)
    deadline = time.monotonic() + 20
    while name not in job.coordinator.devices:
        assert time.monotonic() < deadline, "the coordinator never read the operator's messages"
        time.sleep(0.05)


def retained_control(broker: MosquittoProcess, job: RunningJob, timeout: float = 20) -> bytes:
    """The job's control message the broker holds once the coordinator's own republished
    state reached it (it publishes asynchronously: a reader may first get the forgery)."""
    deadline = time.monotonic() + timeout
    while True:
        with mqtt_client(broker, "reader") as reader:
            reader.subscribe_wait(job.topics.control, 1)
            (msg,) = reader.collector.wait_for(job.topics.control)
        held = JobControl.from_json(msg.payload)
        if (held.job, held.state) == (job.job, job.coordinator.control_state):
            return msg.payload
        assert time.monotonic() < deadline, f"the broker still holds {held}"
        time.sleep(0.2)


def wait_state(job: RunningJob, state: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while job.coordinator.control_state != state:
        assert time.monotonic() < deadline, f"the job never became {state}"
        time.sleep(0.05)


def test_a_control_message_for_another_job_does_not_steer_this_one(
    mosquitto_broker, bundle, tmp_path, jobs, caplog
):
    # Prepare: a job waiting for devices
    caplog.set_level(logging.WARNING, logger="coordinator")
    job = start_job(jobs, mosquitto_broker, bundle, tmp_path)
    with mqtt_client(mosquitto_broker, "operator") as operator:
        coordinator_handled(operator, job, "probe-1")
        # Execute: another job's pause and stop, on this job's control topic
        for state in ("paused", "stopped"):
            other = JobControl("other-job", state, time.time() + 1, "meant for another job")
            operator.publish_wait(job.topics.control, other.to_json(), qos=1, retain=True)
        coordinator_handled(operator, job, "probe-2")
    # Assert: ignored, said so, and the job's own state is on the broker again
    assert job.coordinator.control_state == "running"
    assert "ignoring a control message for job 'other-job'" in caplog.text
    restored = JobControl.from_json(retained_control(mosquitto_broker, job))
    assert (restored.job, restored.state) == (job.job, "running")


@pytest.mark.parametrize("forgery", ["unsigned", "signed by another key", "tampered"])
def test_a_signed_job_obeys_only_control_signed_with_its_key(
    mosquitto_broker, bundle, keys, tmp_path, jobs, caplog, forgery
):
    # Prepare
    caplog.set_level(logging.WARNING, logger="coordinator")
    key_file, signer, stranger = keys
    job = start_job(jobs, mosquitto_broker, bundle, tmp_path, signing_key=key_file)
    pause = JobControl(job.job, "paused", time.time() + 1, "forged")
    raw = {
        "unsigned": pause.to_json(),
        "signed by another key": stranger.control(pause),
        "tampered": signer.control(dataclasses.replace(pause, state="running")).replace(
            b'"state":"running"', b'"state":"paused"'
        ),
    }[forgery]
    with mqtt_client(mosquitto_broker, "operator") as operator:
        coordinator_handled(operator, job, "probe-1")
        # Execute
        operator.publish_wait(job.topics.control, raw, qos=1, retain=True)
        coordinator_handled(operator, job, "probe-2")
        # Assert: ignored, with the reason, and the job's signed state is back on the broker
        assert job.coordinator.control_state == "running"
        assert "ignoring a control message" in caplog.text
        restored = signer.verifier().control(retained_control(mosquitto_broker, job))
        assert restored.state == "running"
        # Execute: the same pause signed with the job's key is obeyed
        operator.publish_wait(job.topics.control, signer.control(pause), qos=1, retain=True)
        wait_state(job, "paused")


def test_a_stop_ends_a_job_waiting_for_devices_at_once(mosquitto_broker, bundle, tmp_path, jobs):
    # Prepare: a job waiting for devices that never come (wait_timeout 120 s)
    job = start_job(jobs, mosquitto_broker, bundle, tmp_path)
    with mqtt_client(mosquitto_broker, "operator") as operator:
        coordinator_handled(operator, job, "probe-1")
        # Execute: the operator stops it
        stop = JobControl(job.job, "stopped", time.time() + 1, "no boards today")
        operator.publish_wait(job.topics.control, stop.to_json(), qos=1, retain=True)
        # Assert: it ends within seconds, saying why, not at its wait_timeout
        with pytest.raises(JobError, match="stopped by the operator while waiting for devices"):
            job.finish(10)


def test_a_pause_ends_by_itself_after_max_pause_and_says_so(
    mosquitto_broker, bundle, tmp_path, jobs, caplog
):
    # Prepare: two rounds, a pause of at most 2 s, one device
    caplog.set_level(logging.WARNING, logger="coordinator")
    job = start_job(jobs, mosquitto_broker, bundle, tmp_path, rounds=2, max_pause=2.0)
    train = load_dataset("fashion-mnist", "train")
    d = bundle.manifest
    model = TrainableModel(bundle.tflite, d, num_threads=1)
    device = mqtt_device(mosquitto_broker.url, job.job, "d0", model, train.subset(np.arange(200)))
    with mqtt_client(mosquitto_broker, "watcher") as watcher:
        watcher.subscribe_wait(job.topics.control, 1)
        coordinator_handled(watcher, job, "probe-1")
        # Execute: pause (as the dashboard does), then bring the device online
        paused_at = time.time()
        pause = JobControl(job.job, "paused", paused_at, "maintenance", by="dashboard admin at ::1")
        watcher.publish_wait(job.topics.control, pause.to_json(), qos=1, retain=True)
        wait_state(job, "paused")
        device.start()
        job.devices.append(device)
        state = job.finish(120)
        controls = [
            JobControl.from_json(m.payload) for m in watcher.collector.matching(job.topics.control)
        ]
    # Assert: the job resumed by itself and finished both rounds
    assert state.round == 2 and state.finished
    accepted = [c for c in controls if c.state == "paused" and c.until is not None]
    assert accepted, "the coordinator never published the pause it accepted with its end"
    assert accepted[0].by == "dashboard admin at ::1" and accepted[0].time == paused_at
    assert accepted[0].until == pytest.approx(paused_at + 2.0, abs=2.0)
    resumed = [c for c in controls if c.state == "running" and c.by == "coordinator"]
    assert resumed and "max-pause" in resumed[0].detail
    assert "resuming the job: paused by dashboard admin at ::1" in caplog.text


def test_the_dashboard_pauses_a_signed_job_and_shows_who_paused_and_until_when(
    mosquitto_broker, bundle, keys, tmp_path, jobs
):
    # Prepare: a signed job and a dashboard that holds the job's key
    key_file, signer, _ = keys
    job = start_job(jobs, mosquitto_broker, bundle, tmp_path, signing_key=key_file, max_pause=600.0)
    view = JobView(job.job, broker=mosquitto_broker.url)
    follower = JobFollower(view, BrokerConfig.from_url(mosquitto_broker.url), signer=signer).start()
    try:
        follower.wait_idle()
        app = create_app(view, AuthConfig(ADMIN), control=dashboard_control(follower))
        client = app.test_client()
        headers = {"Authorization": f"Bearer {ADMIN}"}
        # Execute
        r = client.post("/api/control", json={"state": "paused"}, headers=headers)
        wait_state(job, "paused")
        deadline = time.monotonic() + 20
        while (view.snapshot()["control"] or {}).get("until") is None:
            assert time.monotonic() < deadline, "the dashboard never saw the accepted pause"
            time.sleep(0.05)
        shown = client.get("/api/state", headers=headers).get_json()["control"]
        # Assert
        assert r.status_code == 200, r.get_json()
        assert shown["state"] == "paused" and shown["by"] == "dashboard admin at 127.0.0.1"
        assert shown["until"] == pytest.approx(shown["time"] + 600.0, abs=5.0)
        assert shown["signed"] is True
        # Execute: resume
        r = client.post("/api/control", json={"state": "running"}, headers=headers)
        wait_state(job, "running")
        assert r.status_code == 200
    finally:
        follower.stop()


def test_a_dashboard_without_the_key_refuses_to_control_a_signed_job(
    mosquitto_broker, bundle, keys, tmp_path, jobs
):
    key_file, _signer, _ = keys
    job = start_job(jobs, mosquitto_broker, bundle, tmp_path, signing_key=key_file)
    view = JobView(job.job, broker=mosquitto_broker.url)
    follower = JobFollower(view, BrokerConfig.from_url(mosquitto_broker.url)).start()
    try:
        deadline = time.monotonic() + 20
        while not (view.snapshot()["control"] or {}).get("signed"):
            assert time.monotonic() < deadline, "the dashboard never saw the signed control"
            time.sleep(0.05)
        app = create_app(view, AuthConfig(ADMIN), control=dashboard_control(follower))
        r = app.test_client().post(
            "/api/control", json={"state": "paused"}, headers={"Authorization": f"Bearer {ADMIN}"}
        )
        assert r.status_code == 409
        assert "signing key" in r.get_json()["error"]
    finally:
        follower.stop()


def test_the_dashboard_marks_an_unsigned_job():
    # Prepare: what a coordinator run with --unsigned publishes, and what a signed one does
    unsigned = JobView("plain", broker="mqtt://test:1883")
    signed = JobView("safe", broker="mqtt://test:1883")
    for view, flag in ((unsigned, "false"), (signed, "true")):
        raw = f'{{"v":1,"job":"{view.job}","state":"running","time":1.0,"signed":{flag}}}'
        view.apply(ControlReceived(JobControl.from_json(raw), raw=raw.encode()))
    headers = {"Authorization": f"Bearer {ADMIN}"}
    # Execute
    shown = {
        view.job: create_app(view, AuthConfig(ADMIN))
        .test_client()
        .get("/api/state", headers=headers)
        for view in (unsigned, signed)
    }
    page = create_app(unsigned, AuthConfig(ADMIN)).test_client().get("/", headers=headers)
    # Assert
    assert shown["plain"].get_json()["control"]["unsigned_job"] is True
    assert shown["safe"].get_json()["control"]["unsigned_job"] is False
    assert 'id="job-unsigned"' in page.get_data(as_text=True)
