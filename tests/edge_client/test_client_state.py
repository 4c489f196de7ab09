"""The client's state directory, its configuration and local data handling."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from test_client_support import ModelFiles, random_dataset

from edge_client.config import ClientConfig, default_state_dir
from edge_client.data import Dataset, save_npz
from edge_client.errors import ConfigError, DataError, ModelError
from edge_client.local_training import (
    RoundSettings,
    check_data_fits,
    load_local_data,
    round_settings,
    train_local,
)
from edge_client.protocol import weights_sha256
from edge_client.state import NO_ROUND, ClientState
from edge_client.trainable_model import TrainableModel
from edge_client.transport import BrokerConfig


@pytest.fixture(scope="module")
def files(export_dir) -> ModelFiles:
    return ModelFiles.load(export_dir("mlp"))


def config(**kw: object) -> ClientConfig:
    base: dict[str, object] = {"broker": BrokerConfig(), "job": "demo", "device_id": "pi-01"}
    if "dataset" not in kw:
        base["data_path"] = "data.npz"
    return ClientConfig(**{**base, **kw})  # type: ignore[arg-type]


# -- state directory ------------------------------------------------------------------------


def test_model_global_and_progress_survive_a_restart(tmp_path, files):
    state = ClientState(tmp_path / "s")
    weights = files.shifted(0.5)
    sha = weights_sha256(weights)
    state.save_model(files.tflite, files.manifest)
    state.save_global(weights, sha, 4)
    state.save_completed_round(3, files.manifest.sha256, sha)
    again = ClientState(tmp_path / "s")
    tflite, manifest = again.load_model()
    saved = again.load_global()
    assert tflite == files.tflite and manifest == files.manifest
    assert (saved.sha256, saved.round, list(saved.weights)) == (sha, 4, list(weights))
    assert all(np.array_equal(saved.weights[k], weights[k]) for k in weights)
    assert again.last_completed_round(files.manifest.sha256) == 3
    assert again.last_completed_round("0" * 64) == NO_ROUND  # progress of another model
    assert not list((tmp_path / "s").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_empty_state_directory(tmp_path):
    state = ClientState(tmp_path / "new" / "nested")
    assert state.load_model() is None and state.load_global() is None
    assert state.last_completed_round(None) == NO_ROUND


def test_corrupt_state_files_are_ignored_with_a_warning(tmp_path, files, caplog):
    state = ClientState(tmp_path)
    state.save_model(files.tflite, files.manifest)
    state.model_path.write_bytes(files.tflite[:1000])  # torn write from an older version
    state.global_path.write_bytes(b"PK\x03\x04 not really a zip")
    state.progress_path.write_text("{")
    assert state.load_model() is None
    assert state.load_global() is None
    assert state.last_completed_round(files.manifest.sha256) == NO_ROUND
    assert caplog.text.count("ignoring") == 3


def test_global_weights_whose_digest_changed_are_ignored(tmp_path, files, caplog):
    state = ClientState(tmp_path)
    state.save_global(files.initial, "0" * 64, 1)
    assert state.load_global() is None
    assert "digest does not match" in caplog.text


def test_global_weights_file_never_needs_pickle(tmp_path, files):
    state = ClientState(tmp_path)
    state.save_global(files.initial, weights_sha256(files.initial), 1)
    with np.load(state.global_path, allow_pickle=False) as f:
        assert all(f[k].dtype != object for k in f.files)


def test_unwritable_state_directory_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot create the state directory"):
        ClientState(blocker / "sub")


# -- configuration --------------------------------------------------------------------------


def test_default_state_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert default_state_dir("demo", "pi-01") == tmp_path / "edgefl" / "demo" / "pi-01"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert str(config().resolved_state_dir).endswith(".local/state/edgefl/demo/pi-01")


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"job": "a/b"}, "invalid job id"),
        ({"device_id": "pi 01"}, "invalid device id"),
        ({"dataset": "mnist", "data_path": "x"}, "exactly one source"),
        ({"dataset": None, "data_path": None}, "exactly one source"),
        ({"partition": "halves", "num_partitions": 2}, "unknown partition"),
        ({"partition": "iid", "num_partitions": 2, "partition_index": 2}, "partition index 2"),
        ({"heartbeat_s": -1.0}, "heartbeat"),
        ({"max_chunk": 100}, "max chunk"),
        ({"prefix": "fl/#"}, "invalid topic prefix"),
        ({"num_threads": 0}, "threads"),
    ],
)
def test_invalid_config_is_one_clear_error(kw, message):
    with pytest.raises(ConfigError, match=message):
        config(**kw)


def test_config_repr_hides_the_password():
    cfg = config(broker=BrokerConfig(username="u", password="s3cret-pw"))
    assert "s3cret-pw" not in repr(cfg)


# -- local data -----------------------------------------------------------------------------


def _npz(tmp_path, files, n=300, classes=10):
    ds = random_dataset(files.manifest, n=n, classes=classes)
    path = tmp_path / "train.npz"
    save_npz(path, ds)
    return path, ds


def test_load_local_data_takes_one_partition(tmp_path, files):
    path, ds = _npz(tmp_path, files)
    part = load_local_data(
        config(data_path=str(path), partition="sequential", num_partitions=3, partition_index=1)
    )
    assert len(part) == 100
    np.testing.assert_array_equal(part.x, ds.x[100:200])


def test_missing_or_empty_data_fails_fast(tmp_path):
    with pytest.raises(DataError, match="data path not found"):
        load_local_data(config(data_path=str(tmp_path / "nope")))
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 28, 28, 1), np.uint8), y=np.zeros(0, np.int64))
    with pytest.raises(DataError, match="empty"):
        load_local_data(config(data_path=str(empty)))


def test_check_data_fits_names_the_problem(files):
    with pytest.raises(DataError, match=r"label 1[01] at index \d+ is outside \[0, 10\)"):
        check_data_fits(random_dataset(files.manifest, classes=12), files.manifest)
    rgb = Dataset(np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64), ("a",))
    with pytest.raises(DataError, match=r"shape \(32, 32, 3\), the model expects \(28, 28, 1\)"):
        check_data_fits(rgb, files.manifest)
    assert check_data_fits(random_dataset(files.manifest), files.manifest).scale == 1 / 255


def test_round_settings_defaults_and_errors(files):
    assert round_settings({}, files.manifest) == RoundSettings(
        1, files.manifest.hyperparameters["lr"]
    )
    assert round_settings({"epochs": 3, "lr": 0.5}, files.manifest) == RoundSettings(3, 0.5)
    for bad in ({"epochs": 1.5}, {"epochs": True}, {"lr": "fast"}, {"lr": 0}):
        with pytest.raises(ModelError, match="invalid hyperparameter"):
            round_settings(bad, files.manifest)


def test_train_local_is_reproducible_and_learns(files):
    ds = random_dataset(files.manifest, n=96)
    norm = check_data_fits(ds, files.manifest)
    runs = []
    for _ in range(2):
        model = TrainableModel(files.tflite, files.manifest)
        model.set_weights(files.initial)
        runs.append(train_local(model, ds, RoundSettings(5, 0.05), norm, rng=1))
    a, b = runs
    assert a.loss == b.loss and a.samples == 96 and a.batches_per_epoch == 3 and a.epochs == 5
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    assert a.accuracy is not None and a.accuracy > 0.2  # memorising 96 random images


def test_progress_file_is_plain_json(tmp_path, files):
    state = ClientState(tmp_path)
    state.save_completed_round(7, files.manifest.sha256, "1" * 64)
    body = json.loads(state.progress_path.read_text())
    assert body["last_completed_round"] == 7 and body["model_sha256"] == files.manifest.sha256


def test_no_warning_logged_for_a_fresh_directory(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    ClientState(tmp_path).last_completed_round(None)
    assert caplog.text == ""
