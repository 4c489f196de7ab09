"""The edge client against real brokers: Mosquitto, the embedded broker, the board venv."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from test_client_support import ModelFiles, ScriptedCoordinator, envelopes, random_dataset

from edge_client.client import EdgeClient, mqtt_transport
from edge_client.config import ClientConfig
from edge_client.protocol import DeviceStatus, Envelope, Topics
from edge_client.transport import BrokerConfig
from tests.conftest import BOARD_PYTHON, ROOT
from tests.fixtures.brokers import FixtureClient, mqtt_client

JOB, DEVICE = "demo", "pi-01"
TOPICS = Topics(JOB)


def coordinator_of(client: FixtureClient) -> ScriptedCoordinator:
    client.subscribe_wait(f"{TOPICS.root}/update/+/#", qos=1)
    client.subscribe_wait(f"{TOPICS.root}/status/+", qos=1)
    return ScriptedCoordinator(lambda t, p, r: client.publish_wait(t, p, qos=1, retain=r), JOB)


def wait_for_updates(client: FixtureClient, n: int = 1, timeout: float = 30) -> list[Envelope]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = envelopes((m.topic, m.payload) for m in client.collector.matching("#"))
        if len(found) >= n:
            return found
        time.sleep(0.05)
    topics = [m.topic for m in client.collector.matching("#")]
    raise AssertionError(f"no update within {timeout} s; received {topics}")


def statuses(client: FixtureClient) -> list[DeviceStatus]:
    return [
        DeviceStatus.from_json(m.payload)
        for m in client.collector.matching(TOPICS.status(DEVICE))
        if m.payload
    ]


@contextmanager
def client_thread(client: EdgeClient) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=client.run, name="edge-client", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        client.stop()
        thread.join(15)


@pytest.fixture(scope="module")
def files(export_dir) -> ModelFiles:
    return ModelFiles.load(export_dir("mlp"))


def make_client(broker, files: ModelFiles, tmp_path, **kw: object) -> EdgeClient:
    config = ClientConfig(
        BrokerConfig(broker.host, broker.port),
        JOB,
        DEVICE,
        data_path="unused",
        state_dir=tmp_path / "state",
        max_chunk=300_000,  # the update travels in 3 chunks
        heartbeat_s=0.5,
        **kw,  # type: ignore[arg-type]
    )
    return EdgeClient(config, mqtt_transport(config), data=random_dataset(files.manifest))


def test_scripted_round_over_a_real_broker(any_broker, files, tmp_path):
    # Prepare
    with mqtt_client(any_broker, "coordinator") as coord_client:
        coord = coordinator_of(coord_client)
        ann = coord.start_round(files, round_=1, epochs=1)
        client = make_client(any_broker, files, tmp_path, exit_on_stop=True)
        # Execute
        with client_thread(client) as thread:
            (update,) = wait_for_updates(coord_client)
            coord.control("stopped")
            thread.join(15)
            # Assert
            assert not thread.is_alive(), "the client did not exit on a stopped job"
        assert (update.kind, update.sender, update.round, update.samples) == (
            "update",
            DEVICE,
            1,
            200,
        )
        assert update.meta["base_sha256"] == ann.global_sha256
        assert set(update.weights()) == set(files.initial)
        chunks = coord_client.collector.matching(f"{TOPICS.update(DEVICE)}/#")
        assert len(chunks) == 3 and not any(m.retain for m in chunks)
        time.sleep(0.2)
        states = [s.state for s in statuses(coord_client)]
        assert states[0] == "online" and "training" in states and states[-1] == "offline"


def test_client_resumes_after_a_broker_restart(mosquitto_broker, files, tmp_path):
    # Prepare: the client is connected and idle
    client = make_client(mosquitto_broker, files, tmp_path)
    with client_thread(client):
        time.sleep(0.5)
        # Execute: the broker restarts empty; the coordinator republishes everything
        mosquitto_broker.stop()
        time.sleep(0.5)
        mosquitto_broker.start()
        with mqtt_client(mosquitto_broker, "coordinator") as coord_client:
            coord = coordinator_of(coord_client)
            coord.start_round(files, round_=1)
            # Assert: reconnected, resubscribed (in on_connect) and trained
            (update,) = wait_for_updates(coord_client, timeout=40)
    assert update.round == 1 and update.sender == DEVICE


@pytest.mark.slow
@pytest.mark.board
def test_fedge_run_in_the_board_environment_on_fashion_mnist(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: the cnn, retained on the broker before the board starts
    if not BOARD_PYTHON.exists():
        pytest.fail(f"board environment missing: {BOARD_PYTHON}")
    files = ModelFiles.load(export_dir("cnn"))
    with mqtt_client(mosquitto_broker, "coordinator") as coord_client:
        coord = coordinator_of(coord_client)
        ann = coord.start_round(files, round_=1, epochs=1, lr=0.05)
        cmd = [
            str(BOARD_PYTHON), "-m", "edge_client.cli", "run",
            "--broker", mosquitto_broker.url, "--job", JOB, "--device-id", DEVICE,
            "--dataset", "fashion-mnist", "--partition", "sequential",
            "--num-partitions", "30", "--partition-index", "0",
            "--state-dir", str(tmp_path / "state"), "--heartbeat", "1", "--exit-on-stop",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            # Execute
            (update,) = wait_for_updates(coord_client, timeout=90)
            coord.control("stopped")
            _, stderr = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        # Assert
        assert proc.returncode == 0, stderr[-3000:]
        assert "Traceback" not in stderr
        assert (update.kind, update.sender, update.round, update.samples) == (
            "update",
            DEVICE,
            1,
            2000,
        )
        meta = update.meta
        assert meta["base_sha256"] == ann.global_sha256
        assert (meta["interpreter"], meta["interpreter_version"]) == ("tflite-runtime", "2.14.0")
        assert 0.2 < meta["accuracy"] <= 1.0  # one epoch on 2,000 images learns something
        time.sleep(0.2)
        assert statuses(coord_client)[-1].state == "offline"


def test_a_board_with_a_trusted_key_obeys_only_signed_control(mosquitto_broker, files, tmp_path):
    # Prepare: a board that trusts the job's key and leaves run() when the job stops
    from coordinator.pki import generate_signing_key
    from edge_client.protocol import JobControl
    from edge_client.signing import Signer

    made = generate_signing_key(tmp_path / "job-key")
    signer = Signer.from_file(made.private)
    stranger = Signer.from_file(generate_signing_key(tmp_path / "other-key").private)
    client = make_client(
        mosquitto_broker, files, tmp_path, trust_key=str(made.public), exit_on_stop=True
    )
    with mqtt_client(mosquitto_broker, "attacker") as attacker, client_thread(client) as thread:
        attacker.subscribe_wait(TOPICS.status(DEVICE), qos=1)
        attacker.collector.wait_for(TOPICS.status(DEVICE), timeout=30)  # the board is up
        stop = JobControl(JOB, "stopped", time.time() + 1, "forged")
        # Execute: a forged stop, unsigned and then signed by another key
        for forged in (stop.to_json(), stranger.control(stop)):
            attacker.publish_wait(TOPICS.control, forged, qos=1, retain=True)
        thread.join(3)
        # Assert: the board is still running; the job's own stop ends it
        assert thread.is_alive(), "a forged control message stopped the board"
        attacker.publish_wait(TOPICS.control, signer.control(stop), qos=1, retain=True)
        thread.join(20)
        assert not thread.is_alive(), "the signed stop did not stop the board"
        attacker.publish_wait(TOPICS.control, b"", qos=1, retain=True)  # clear the retained stop
