"""An experiment file end to end: simulated run, centralized baseline, Markdown report."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from coordinator.simulation import ROOT

TINY = """
[experiment]
name = "tiny"
baseline = true

[fleet]
devices = 2
dataset = "fashion-mnist"
partition = "sequential"

[job]
rounds = 2
model = "mlp"
optimizer = "sgd"
lr = 0.05
epochs = 1
eval_devices = true
"""


def blue_and_red_pixels(png) -> tuple[int, int]:
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    blue = np.abs(rgb - np.array([31, 119, 180])).sum(axis=2) < 60
    red = np.abs(rgb - np.array([214, 39, 40])).sum(axis=2) < 60
    return int(blue.sum()), int(red.sum())


def test_experiment_runs_baseline_and_report(tmp_path):
    # Prepare
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    # Execute
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator.cli",
            "experiment",
            str(spec),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    # Assert
    assert r.returncode == 0, r.stderr[-3000:]
    root = tmp_path / "out/tiny"
    summary = json.loads((root / "summary.json").read_text())
    [v] = summary["variants"]
    assert v["federated_accuracy"] > 0.7 and v["centralized_accuracy"] > 0.7
    baseline = json.loads((root / "run/baseline.json").read_text())
    assert baseline["rounds"] == [1, 2]
    assert baseline["samples"] == [60_000, 120_000]  # the same sample passes as the federated run
    report = (root / "run/report/report.md").read_text()
    for section in (
        "## Accuracy and loss",
        "## Devices",
        "## Traffic",
        "## Predictions",
        "| sim-00 |",
    ):
        assert section in report
    assert "centralized baseline" in report
    devices_line = next(line for line in report.splitlines() if line.startswith("| sim-00 |"))
    assert devices_line.count("%") == 2  # training and test accuracy of its own model
    for png in ("accuracy.png", "loss.png", "device_accuracy.png", "bytes.png", "predictions.png"):
        assert (root / "run/report" / png).stat().st_size > 5_000
    blue, red = blue_and_red_pixels(root / "run/report/predictions.png")
    assert blue > 100  # correct predictions are labelled in blue
    assert "tiny" in r.stdout and "centralized" in r.stdout


def test_report_of_a_directory_without_results_is_a_clear_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "report", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 1
    assert "is not a run directory with results" in r.stderr
    assert "Traceback" not in r.stderr
