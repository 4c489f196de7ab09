"""Round logic of the edge client against the in-memory bus and a scripted coordinator."""

from __future__ import annotations

import hashlib
import logging
import math

import numpy as np
import pytest
from test_client_support import DEVICE, ModelFiles, Rig, random_dataset

from edge_client.protocol import split, weights_sha256
from edge_client.protocol.chunking import _HEADER, CHUNK_MAGIC
from edge_client.runtime import Runtime
from edge_client.transport import Message


@pytest.fixture(scope="module")
def files(export_dir) -> ModelFiles:
    return ModelFiles.load(export_dir("mlp"))


@pytest.fixture
def rig(files, tmp_path) -> Rig:
    return Rig.create(files, tmp_path)


# -- the happy path ------------------------------------------------------------------------


def test_selected_device_trains_and_publishes_a_valid_update(rig):
    # Prepare
    ann = rig.coord.start_round(rig.files, round_=3, epochs=2, lr=0.05)
    client = rig.client()
    # Execute
    rig.drain(client)
    # Assert
    (update,) = rig.updates()
    assert (update.kind, update.job, update.round, update.sender) == ("update", "demo", 3, DEVICE)
    assert update.samples == 200
    meta = update.meta
    assert meta["base_sha256"] == ann.global_sha256
    assert math.isfinite(meta["loss"]) and 0.0 <= meta["accuracy"] <= 1.0
    assert meta["epochs"] == 2 and meta["lr"] == 0.05 and meta["duration_s"] >= 0
    assert (meta["interpreter"], meta["interpreter_version"]) == (
        rig.runtime.name,
        rig.runtime.version,
    )
    weights = update.weights()
    assert list(weights) == list(rig.files.initial)
    assert all(weights[k].shape == v.shape for k, v in rig.files.initial.items())
    assert any(not np.array_equal(weights[k], v) for k, v in rig.files.initial.items())
    states = [s.state for s in rig.statuses()]
    assert states == ["online", "training", "idle"]
    assert rig.statuses()[-1].round == 3
    assert client.state.last_completed_round(rig.files.manifest.sha256) == 3


def test_local_data_is_never_published(rig):
    data = random_dataset(rig.files.manifest, seed=7)
    rig.coord.start_round(rig.files)
    rig.drain(rig.client(data=data))
    assert rig.updates()
    samples = [data.x[i].tobytes()[:256] for i in range(0, 200, 20)]
    device_payloads = [m.payload for m in rig.bus.published if DEVICE in m.topic]
    assert not any(s in p for s in samples for p in device_payloads)


def test_global_weights_arriving_after_the_announcement_are_waited_for(rig, caplog):
    # Prepare: announce weights the device does not hold yet
    caplog.set_level(logging.INFO)
    later = rig.files.shifted(0.01)

    rig.coord.model(rig.files.tflite, rig.files.manifest)
    rig.coord.global_weights(rig.files.initial)
    rig.coord.announce(
        1, [DEVICE], model_sha256=rig.files.manifest.sha256, global_sha256=weights_sha256(later)
    )
    client = rig.client()
    # Execute
    rig.drain(client)
    # Assert: waits, then trains once the announced weights arrive
    assert rig.updates() == []
    assert "round 1: waiting for global weights" in caplog.text
    rig.coord.global_weights(later)
    rig.drain(client)
    (update,) = rig.updates()
    assert update.meta["base_sha256"] == weights_sha256(later)


def test_not_selected_device_publishes_no_update(rig, caplog):
    caplog.set_level(logging.INFO)
    rig.coord.start_round(rig.files, selected=["pi-02"])
    rig.drain(rig.client())
    assert rig.updates() == []
    assert "round 1: this device is not selected" in caplog.text
    assert [s.state for s in rig.statuses()] == ["online"]


def test_duplicate_announcements_and_messages_train_once(rig):
    ann = rig.coord.start_round(rig.files)
    client = rig.client()
    rig.drain(client)
    # QoS 1 duplicates and retained copies of everything
    rig.coord.model(rig.files.tflite, rig.files.manifest)
    rig.coord.global_weights(rig.files.initial)
    for _ in range(2):
        rig.coord.publish(rig.coord.topics.round, ann.to_json(), True)
    rig.drain(client)
    assert len(rig.updates()) == 1


# -- bad input -------------------------------------------------------------------------------


def test_round_for_another_job_is_ignored_with_a_log(rig, caplog):
    caplog.set_level(logging.INFO)
    files = rig.files
    rig.coord.model(files.tflite, files.manifest)
    sha = rig.coord.global_weights(files.initial)
    rig.coord.announce(
        1, [DEVICE], model_sha256=files.manifest.sha256, global_sha256=sha, job="other"
    )
    client = rig.client()
    client.transport._deliver(  # type: ignore[attr-defined]
        Message("fl/v1/other/round", rig.bus.retained_for("fl/v1/demo/round")[0].payload)
    )
    rig.drain(client)
    assert rig.updates() == []
    assert "ignoring a round announcement for job 'other'" in caplog.text
    assert "belongs to another job" in caplog.text


def test_model_whose_sha256_does_not_match_its_manifest_is_refused(rig, caplog):
    # Prepare: one byte of the model flipped in transit or at the source
    tampered = bytearray(rig.files.tflite)
    tampered[len(tampered) // 2] ^= 0xFF
    loaded: list[bytes] = []

    class SpyInterpreter:
        def __init__(self, model_content: bytes, num_threads: int | None = None) -> None:
            loaded.append(model_content)
            self._real = rig.runtime.interpreter_class(model_content=model_content)

        def __getattr__(self, name):
            return getattr(self._real, name)

    spy = Runtime(rig.runtime.name, rig.runtime.version, SpyInterpreter)
    rig.runtime = spy
    rig.coord.model(bytes(tampered), rig.files.manifest)
    sha = rig.coord.global_weights(rig.files.initial)
    rig.coord.announce(1, [DEVICE], model_sha256=rig.files.manifest.sha256, global_sha256=sha)
    # Execute
    rig.drain(rig.client())
    # Assert: refused before the interpreter saw it, reported as a failure, no update
    assert bytes(tampered) not in loaded
    (failure,) = rig.updates()
    assert failure.kind == "failure" and failure.round == 1 and failure.sender == DEVICE
    assert "refused" in failure.reason and "manifest says" in failure.reason
    assert "model" in caplog.text and "refused" in caplog.text
    assert rig.statuses()[-1].state == "failed"


def test_a_refused_model_keeps_the_last_good_one(rig):
    client = rig.client()
    rig.coord.model(rig.files.tflite, rig.files.manifest)
    rig.drain(client)
    tampered = bytearray(rig.files.tflite)
    tampered[100] ^= 0xFF
    rig.coord.model(bytes(tampered), rig.files.manifest)
    sha = rig.coord.global_weights(rig.files.initial)
    rig.coord.announce(1, [DEVICE], model_sha256=rig.files.manifest.sha256, global_sha256=sha)
    rig.drain(client)
    (update,) = rig.updates()
    assert update.kind == "update"


def test_labels_out_of_range_are_reported_as_a_failure(rig):
    data = random_dataset(rig.files.manifest, classes=12, seed=3)  # the model has 10 classes
    rig.coord.start_round(rig.files)
    rig.drain(rig.client(data=data))
    (failure,) = rig.updates()
    assert failure.kind == "failure"
    assert "local data does not fit the model" in failure.reason
    assert "outside [0, 10)" in failure.reason
    assert rig.statuses()[-1].state == "failed"


@pytest.mark.parametrize(
    "hyperparams, reason",
    [({"epochs": 0}, "invalid hyperparameter epochs"), ({"lr": -1}, "invalid hyperparameter lr")],
)
def test_invalid_hyperparameters_are_reported(rig, hyperparams, reason):
    rig.coord.start_round(rig.files, **hyperparams)
    rig.drain(rig.client())
    (failure,) = rig.updates()
    assert failure.kind == "failure" and reason in failure.reason


def test_diverging_training_is_reported_not_sent(rig):
    rig.coord.start_round(rig.files, lr=1e30, epochs=3)
    rig.drain(rig.client())
    (failure,) = rig.updates()
    assert failure.kind == "failure" and "diverged" in failure.reason


def _chunk(index: int, count: int, total: int, data: bytes) -> bytes:
    digest = hashlib.sha256(data).digest()
    return (
        _HEADER.pack(CHUNK_MAGIC, 1, b"\0\0\0", b"x" * 16, index, count, total, digest, digest)
        + data
    )


def test_malformed_truncated_and_oversized_messages_are_dropped(rig, caplog):
    # Prepare
    client = rig.client(max_message_bytes=4_000_000)
    t = rig.coord.topics
    good = split(b"\x01" * 5000, 2000)
    bad = [
        (f"{t.model}/0", b"garbage, not a chunk"),
        (f"{t.model}/0", good[0][:-10]),  # truncated chunk
        (f"{t.global_weights}/0", _chunk(0, 2, 10**9, b"y" * 1000)),  # oversized message
        (f"{t.model}/007", good[0]),  # non-canonical chunk index
        (f"{t.global_weights}/1", good[0]),  # chunk index does not match the topic
        (f"{t.global_weights}/0", split(b"not an envelope")[0]),  # complete, not an envelope
        (t.round, b'{"v":1,"job":"demo"'),  # truncated JSON
        (t.round, b'{"v":1,"job":"demo","round":-1}'),  # invalid announcement
        (t.control, b'{"v":2,"job":"demo","state":"stopped","time":0}'),
        (f"{t.root}/bogus", b"?"),
    ]
    # Execute
    for topic, payload in bad:
        client.transport._deliver(Message(topic, payload))  # type: ignore[attr-defined]
    rig.drain(client)
    rig.coord.start_round(rig.files)
    rig.drain(client)
    # Assert: each logged and dropped; the client still trains the real round
    assert client.inbox.rejected >= 9
    assert "exceeds the reassembly limit" in caplog.text
    assert "truncated JSON" in caplog.text or "not valid UTF-8 JSON" in caplog.text
    (update,) = rig.updates()
    assert update.kind == "update"


def test_global_weights_that_do_not_fit_the_model_are_reported(rig):
    wrong = dict(rig.files.initial)
    name = next(iter(wrong))
    wrong[name] = np.zeros((3, 3), np.float32)
    rig.coord.model(rig.files.tflite, rig.files.manifest)
    sha = rig.coord.global_weights(wrong)
    rig.coord.announce(1, [DEVICE], model_sha256=rig.files.manifest.sha256, global_sha256=sha)
    rig.drain(rig.client())
    (failure,) = rig.updates()
    assert failure.kind == "failure"
    assert f"set_weights: {name} has shape (3, 3)" in failure.reason
