"""The fleet simulator's board-side hook: a slowed board trains for real, then waits
``(factor - 1)`` x the compute it measured (edge_client/pacing.py)."""

from __future__ import annotations

import time

import pytest
from test_client_support import ModelFiles, random_dataset

from edge_client.errors import ConfigError
from edge_client.local_training import RoundSettings, check_data_fits, train_local
from edge_client.pacing import ENV, Pacer, slowdown_from_env
from edge_client.trainable_model import TrainableModel


@pytest.fixture(scope="module")
def files(export_dir) -> ModelFiles:
    return ModelFiles.load(export_dir("mlp"))


def timed_training(files: ModelFiles) -> tuple[float, float]:
    """(wall time of train_local, process CPU time it used)."""
    ds = random_dataset(files.manifest, n=3200)
    model = TrainableModel(files.tflite, files.manifest)
    model.set_weights(files.initial)
    cpu0, t0 = time.process_time(), time.monotonic()
    train_local(model, ds, RoundSettings(3, 0.05), check_data_fits(ds, files.manifest), rng=1)
    return time.monotonic() - t0, time.process_time() - cpu0


@pytest.mark.slow
def test_a_slowed_board_takes_its_factor_in_wall_time_but_not_in_cpu(files, monkeypatch):
    # Prepare: the same training at full speed, then at a slow-down factor of 4
    monkeypatch.delenv(ENV, raising=False)
    timed_training(files)  # warm up the interpreter
    fast_wall, fast_cpu = timed_training(files)
    monkeypatch.setenv(ENV, "4")
    # Execute
    slow_wall, slow_cpu = timed_training(files)
    # Assert: it took 4x its compute (compute: CPU time, which on a machine loaded by other
    # work is less than the wall time), unless this machine made it slower, and used no more
    # CPU than before
    assert slow_wall > 0.9 * 4 * slow_cpu, (slow_wall, slow_cpu)
    assert slow_wall < 1.5 * max(fast_wall, 4 * slow_cpu) + 0.5, (fast_wall, slow_wall, slow_cpu)
    assert slow_cpu < 2.0 * fast_cpu + 0.05, (fast_cpu, slow_cpu)


def test_the_factor_comes_from_the_environment_and_is_checked(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert slowdown_from_env() == 1.0 and Pacer().factor == 1.0
    monkeypatch.setenv(ENV, "2.5")
    assert Pacer().factor == 2.5
    for bad in ("fast", "0.5", "nan"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ConfigError, match=ENV):
            slowdown_from_env()


def test_pacer_waits_until_factor_times_the_compute_has_passed():
    t0 = time.monotonic()
    pacer = Pacer(3.0)
    end = time.process_time() + 0.05
    while time.process_time() < end:  # 50 ms of compute (CPU time: this machine may be busy)
        pass
    busy = time.monotonic() - t0
    pacer.tick(flush=True)
    took = time.monotonic() - t0
    assert 0.045 < pacer.compute_s < 0.1
    assert 0.14 < took < max(0.3, busy + 0.05), (busy, took)
    assert abs(pacer.waited_s - (took - busy)) < 0.02
