"""The edge client over time: deadlines, heartbeats, job control, restarts, the Last Will."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from test_client_support import DEVICE, ModelFiles, Rig

from edge_client.config import ClientConfig
from edge_client.protocol import DeviceStatus, Topics
from edge_client.transport import BrokerConfig


@pytest.fixture(scope="module")
def files(export_dir) -> ModelFiles:
    return ModelFiles.load(export_dir("mlp"))


@pytest.fixture
def rig(files, tmp_path) -> Rig:
    return Rig.create(files, tmp_path)


def test_past_deadline_is_not_trained(rig, caplog):
    caplog.set_level(logging.INFO)
    rig.coord.start_round(rig.files, deadline=time.time() - 1)
    rig.drain(rig.client())
    assert rig.updates() == []
    assert "round 1: its deadline has passed" in caplog.text


def test_deadline_passing_during_training_is_reported(rig):
    class Clock:  # one second per reading: training outlives the deadline
        now = time.time()

        def __call__(self) -> float:
            Clock.now += 1.0
            return Clock.now

    clock = Clock()
    rig.coord.start_round(rig.files, deadline=clock.now + 60, epochs=40)
    rig.drain(rig.client(clock=clock))
    (failure,) = rig.updates()
    assert failure.kind == "failure" and "passed during training" in failure.reason


def test_heartbeats_continue_during_training(rig):
    rig.coord.start_round(rig.files, epochs=5)
    rig.drain(rig.client(heartbeat_s=1e-6))
    training = [s for s in rig.statuses() if s.state == "training"]
    assert len(training) > 3
    assert all(s.round == 1 for s in training)
    assert training[-1].time > training[0].time


def test_restart_from_the_state_directory_does_not_retrain_a_completed_round(rig, caplog):
    # Prepare: a first run completes round 1 and shuts down cleanly
    caplog.set_level(logging.INFO)
    rig.coord.start_round(rig.files)
    first = rig.client()
    rig.drain(first)
    first.close()
    assert rig.statuses()[-1].state == "offline"
    # Execute: a new process with the same state directory, broker state still retained
    second = rig.client()
    assert second.holdings.model_sha256 == rig.files.manifest.sha256  # from disk
    assert second.holdings.global_sha256 is not None
    assert second.last_completed == 1
    rig.drain(second)
    # Assert: the retained round 1 is not trained again; the saved update is resent as is
    sent, again = rig.updates()
    assert (sent.round, again.round) == (1, 1) and sent.sha256 == again.sha256
    assert "resent the update already computed" in caplog.text
    assert "training" not in [s.state for s in rig.statuses()[4:]]
    sha = rig.coord.global_weights(rig.files.shifted(0.001), 2)
    rig.coord.announce(2, [DEVICE], model_sha256=rig.files.manifest.sha256, global_sha256=sha)
    rig.drain(second)
    assert [u.round for u in rig.updates()] == [1, 1, 2]


def test_a_reannounced_round_gets_the_same_update_without_retraining(rig, caplog):
    # Prepare: round 1 trained; the coordinator retries it (new attempt, new deadline)
    caplog.set_level(logging.INFO)
    ann = rig.coord.start_round(rig.files)
    client = rig.client()
    rig.drain(client)
    # Execute
    rig.coord.announce(
        1,
        [DEVICE],
        model_sha256=ann.model_sha256,
        global_sha256=ann.global_sha256,
        deadline=ann.deadline + 10,
        attempt=1,
    )
    rig.drain(client)
    # Assert: the coordinator's dedupe sees the same key; the device did not train twice
    first, second = rig.updates()
    assert first.sha256 == second.sha256
    assert [s.state for s in rig.statuses()].count("training") == 1
    # the same round from other global weights is a different round: trained, not skipped
    other = rig.coord.global_weights(rig.files.shifted(0.001), 1)
    rig.coord.announce(
        1,
        [DEVICE],
        model_sha256=ann.model_sha256,
        global_sha256=other,
        deadline=ann.deadline + 20,
    )
    rig.drain(client)
    third = rig.updates()[2]
    assert (len(rig.updates()), third.round, third.meta["base_sha256"]) == (3, 1, other)
    assert [s.state for s in rig.statuses()].count("training") == 2


def test_a_completed_round_whose_saved_update_is_gone_is_skipped(rig, caplog):
    # Prepare: round 1 sent, then the saved update lost (a full disk, a manual cleanup)
    caplog.set_level(logging.INFO)
    ann = rig.coord.start_round(rig.files)
    client = rig.client()
    rig.drain(client)
    client.state.update_path.unlink()
    # Execute: the same round again (a new attempt)
    rig.coord.announce(
        1, [DEVICE], model_sha256=ann.model_sha256, global_sha256=ann.global_sha256,
        deadline=ann.deadline + 10,
    )  # fmt: skip
    rig.drain(client)
    # Assert
    assert len(rig.updates()) == 1
    assert "round 1: already completed" in caplog.text


def test_paused_job_starts_no_round_until_running(rig):
    client = rig.client()
    client.start()
    rig.coord.control("paused")
    rig.coord.start_round(rig.files)
    rig.drain(client)
    assert rig.updates() == []
    rig.coord.control("running")
    rig.drain(client)
    assert len(rig.updates()) == 1


def test_stop_control_ends_run_with_exit_on_stop(rig):
    # Prepare: a stale "stopped" left by a previous run must not stop the new one
    rig.coord.control("stopped", at=time.time() - 3600)
    client = rig.client(exit_on_stop=True)
    result: list[int] = []
    thread = threading.Thread(target=lambda: result.append(client.run()), daemon=True)
    # Execute
    thread.start()
    rig.coord.start_round(rig.files)
    deadline = time.monotonic() + 20
    while not rig.updates() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert thread.is_alive()
    rig.coord.control("stopped")
    thread.join(10)
    # Assert
    assert not thread.is_alive() and result == [0]
    assert len(rig.updates()) == 1
    last = rig.statuses()[-1]
    assert (last.state, last.detail) == ("offline", "stopped")


def test_stop_control_without_exit_on_stop_keeps_waiting(rig):
    client = rig.client()
    client.start()
    rig.coord.control("stopped")
    rig.drain(client)
    assert not client.stopping
    assert (rig.statuses()[-1].state, rig.statuses()[-1].detail) == ("idle", "job stopped")


def test_stop_aborts_training_between_batches(rig):
    rig.coord.start_round(rig.files, epochs=50)
    client = rig.client()
    original = client._between_batches

    def stop_soon(ann, done):  # a SIGTERM arriving mid-training
        client.stop()
        original(ann, done)

    client._between_batches = stop_soon  # type: ignore[method-assign]
    rig.drain(client)
    (failure,) = rig.updates()
    assert failure.kind == "failure" and "shutting down" in failure.reason


def test_last_will_is_a_retained_offline_status(rig):
    from edge_client.client import mqtt_transport

    cfg = ClientConfig(BrokerConfig(), "demo", DEVICE, data_path="x", state_dir=rig.tmp)
    transport = mqtt_transport(cfg)
    status = DeviceStatus.from_json(transport._client._will_payload)  # paho keeps the Will here
    assert (status.device, status.state, status.detail) == (DEVICE, "offline", "connection lost")
    assert transport._client._will_retain and transport._client._will_topic.decode() == (
        Topics("demo").status(DEVICE)
    )
