"""Shared fixtures: exported models (built once per session), the board environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
BOARD_PYTHON = Path(os.environ.get("EDGEFL_BOARD_PYTHON", ROOT / ".venv-board/bin/python"))

# Broker fixtures: a real Mosquitto on a free port, the embedded broker, both.
from tests.fixtures.brokers import *  # noqa: E402, F403

# Emulated Raspberry Pi OS boards (aarch64, armhf) for the `emulated` tests.
from tests.fixtures.emulation import emulated_board  # noqa: E402, F401


@pytest.fixture(scope="session", autouse=True)
def job_keys_dir(tmp_path_factory: pytest.TempPathFactory):
    """Jobs sign with their own key by default: keep those keys out of the user's ~/.config
    (subprocesses inherit the variable)."""
    path = tmp_path_factory.mktemp("job-keys")
    saved = os.environ.get("EDGEFL_KEYS_DIR")
    os.environ["EDGEFL_KEYS_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("EDGEFL_KEYS_DIR", None)
    else:
        os.environ["EDGEFL_KEYS_DIR"] = saved


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory: pytest.TempPathFactory):
    """Export a model once per (architecture, optimizer) per session: ``export_dir("cnn")``."""
    cache: dict[tuple, Path] = {}

    def make(arch: str = "cnn", optimizer: str = "sgd", lr: float | None = None, **kw) -> Path:
        key = (arch, optimizer, lr, tuple(sorted(kw.items())))
        if key not in cache:
            from model_export.export import ExportConfig, export_model
            from model_export.optimizers import OptimizerConfig

            rate = lr if lr is not None else (0.001 if optimizer == "adam" else 0.05)
            out = tmp_path_factory.mktemp(f"export-{arch}-{optimizer}")
            export_model(ExportConfig(arch, optimizer=OptimizerConfig(optimizer, rate), **kw), out)
            cache[key] = out
        return cache[key]

    return make


def run_board(
    code: str, *args: str, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run Python code in the board environment (tflite-runtime 2.14, numpy<2, no TensorFlow)."""
    if not BOARD_PYTHON.exists():
        pytest.fail(f"board environment missing: {BOARD_PYTHON} (run scripts/setup.sh)")
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [str(BOARD_PYTHON), "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


@pytest.fixture(scope="session")
def board() -> object:
    return run_board


def python_has(module: str, python: str = sys.executable) -> bool:
    r = subprocess.run([python, "-c", f"import {module}"], capture_output=True)
    return r.returncode == 0
