"""An experiment file end to end: simulated run, centralized baseline, Markdown report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


BLUE, RED = np.array([31, 119, 180]), np.array([214, 39, 40])  # matplotlib tab:blue, tab:red


def panel_colours(png: Path, rows: int, columns: int) -> list[str]:
    """The title colour of each panel of a prediction grid, row by row: "blue", "red", or
    "unclear" (never right). A panel is its image (dark: the images have black backgrounds)
    and the title above it, up to the previous image; columns are equal."""
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    blue = np.abs(rgb - BLUE).sum(axis=2) < 60
    red = np.abs(rgb - RED).sum(axis=2) < 60
    image_rows = (rgb.max(axis=2) < 40).sum(axis=1) > rgb.shape[1] // 4
    ends = [  # bottom edge of each row of images: no dark image pixel for 20 rows below it
        y
        for y in range(1, len(image_rows))
        if image_rows[y - 1] and not image_rows[y : y + 20].any()
    ]
    assert len(ends) == rows, f"found {len(ends)} rows of images, expected {rows}"
    tops = [0, *ends[:-1]]
    w = rgb.shape[1] / columns
    colours = []
    for top, bottom in zip(tops, ends):
        for c in range(columns):
            cell = (slice(top, bottom), slice(round(c * w), round((c + 1) * w)))
            b, d = int(blue[cell].sum()) > 20, int(red[cell].sum()) > 20
            colours.append({(True, False): "blue", (False, True): "red"}.get((b, d), "unclear"))
    return colours


def expected_colours(run: Path) -> list[str]:
    """Recompute the report's grid predictions from the run directory: blue right, red wrong."""
    from coordinator.evaluation import load_test_set
    from coordinator.report.build import GRID_IMAGES
    from coordinator.run_dir import RunDir
    from edge_client.data import Normalization
    from edge_client.trainable_model import TrainableModel

    rd = RunDir(run)
    config = json.loads((run / "config.json").read_text())
    weights, _ = rd.load_weights(rd.load_state(config["job"]))
    model = TrainableModel.from_dir(rd.model_dir)
    model.set_weights(weights)
    test = load_test_set(config["test_data"])
    idx = np.random.default_rng(0).choice(len(test), GRID_IMAGES, replace=False)
    predicted = model.predict(Normalization.from_dict(model.manifest.normalization)(test.x[idx]))
    return ["blue" if ok else "red" for ok in predicted.argmax(axis=1) == test.y[idx]]


def test_prediction_grid_titles_right_in_blue_and_wrong_in_red(tmp_path):
    # Prepare: 12 images, predictions wrong at 1, 4, 7 and 10
    from coordinator.report.plots import prediction_grid

    images = np.zeros((12, 28, 28, 1), np.uint8)  # black backgrounds, as in the data sets
    images[:, 6:22, 8:20] = np.arange(12, dtype=np.uint8)[:, None, None, None] * 20 + 30
    labels = np.arange(12) % 3
    predicted = labels.copy()
    predicted[[1, 4, 7, 10]] = (labels[[1, 4, 7, 10]] + 1) % 3
    probabilities = np.full((12, 3), 0.1)
    probabilities[np.arange(12), predicted] = 0.8
    # Execute
    png = prediction_grid(tmp_path / "grid.png", images, labels, probabilities, ["a", "b", "c"])
    # Assert
    expected = ["red" if i in (1, 4, 7, 10) else "blue" for i in range(12)]
    assert panel_colours(png, rows=2, columns=6) == expected


@pytest.mark.slow
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
    # each of the 24 predictions (6 x 4 panels) in blue when right, red when wrong
    colours = panel_colours(root / "run/report/predictions.png", rows=4, columns=6)
    assert colours == expected_colours(root / "run")
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
