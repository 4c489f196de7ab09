"""Assemble the report of one run directory (optionally with a centralized baseline)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.report import plots
from coordinator.run_dir import RunDir
from edge_client.data import Normalization
from edge_client.errors import ConfigError
from edge_client.trainable_model import TrainableModel

log = logging.getLogger(__name__)
GRID_IMAGES = 24


@dataclass(frozen=True)
class Report:
    path: Path  # report.md
    figures: tuple[Path, ...]


def load_metrics(run: Path) -> list[dict[str, Any]]:
    p = run / "metrics.jsonl"
    if not p.exists():
        raise ConfigError(f"{run} is not a run directory with results: {p} not found")
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def per_device(
    metrics: Sequence[Mapping[str, Any]], key: str
) -> dict[str, tuple[list[int], list[Any]]]:
    out: dict[str, tuple[list[int], list[Any]]] = {}
    for m in metrics:
        for dev, d in sorted(m.get("devices", {}).items()):
            xs, ys = out.setdefault(dev, ([], []))
            xs.append(m["round"])
            ys.append(d.get(key))
    return out


def device_table(metrics: Sequence[Mapping[str, Any]]) -> str:
    """Per-device training accuracy and (when evaluated) test accuracy of its last update."""
    last: dict[str, Mapping[str, Any]] = {}
    for m in metrics:
        last.update(m.get("devices", {}))
    lines = [
        "| device | samples | training accuracy | test accuracy (its own model) | interpreter |",
        "|---|---|---|---|---|",
    ]
    for dev, d in sorted(last.items()):
        acc = f"{100 * d['accuracy']:.2f} %" if d.get("accuracy") is not None else "-"
        test = f"{100 * d['test_accuracy']:.2f} %" if d.get("test_accuracy") is not None else "-"
        lines.append(
            f"| {dev} | {d.get('samples', 0):,} | {acc} | {test} | {d.get('interpreter', '')} |"
        )
    return "\n".join(lines)


def build_report(
    run_path: str | Path, out_dir: str | Path | None = None, baseline: Path | None = None
) -> Report:
    run = Path(run_path)
    out = Path(out_dir) if out_dir else run / "report"
    out.mkdir(parents=True, exist_ok=True)
    metrics = load_metrics(run)
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    rounds = [m["round"] for m in metrics]
    base = json.loads(baseline.read_text()) if baseline and baseline.exists() else None
    acc_series = {"federated (global model)": (rounds, [m["accuracy"] for m in metrics])}
    loss_series = {"federated (global model)": (rounds, [m["loss"] for m in metrics])}
    if base:
        acc_series["centralized baseline"] = (base["rounds"], base["accuracy"])
        loss_series["centralized baseline"] = (base["rounds"], base["loss"])
    figs = [
        plots.curves(
            out / "accuracy.png",
            acc_series,
            title="Test accuracy per round",
            ylabel="accuracy (%)",
            percent=True,
        ),
        plots.curves(
            out / "loss.png", loss_series, title="Test loss per round", ylabel="cross-entropy"
        ),
        plots.curves(
            out / "device_accuracy.png",
            per_device(metrics, "accuracy"),
            title="Local training accuracy per device",
            ylabel="accuracy (%)",
            percent=True,
        ),
        plots.bytes_per_round(out / "bytes.png", metrics),
    ]
    grid = _grid(run, config, out / "predictions.png")
    if grid:
        figs.append(grid)
    md = _markdown(run, config, metrics, base, [f.name for f in figs])
    (out / "report.md").write_text(md)
    return Report(out / "report.md", tuple(figs))


def _grid(run: Path, config: Mapping[str, Any], path: Path) -> Path | None:
    from coordinator.evaluation import load_test_set

    rd = RunDir(run)
    if not config.get("test_data") or not (rd.model_dir / "manifest.json").exists():
        return None
    state = rd.load_state(config.get("job", ""))
    weights, _ = rd.load_weights(state)
    model = TrainableModel.from_dir(rd.model_dir)
    model.set_weights(weights)
    test = load_test_set(config["test_data"])
    idx = np.random.default_rng(0).choice(len(test), GRID_IMAGES, replace=False)
    x = Normalization.from_dict(model.manifest.normalization)(test.x[idx])
    probs = model.predict(x)
    return plots.prediction_grid(path, test.x[idx], test.y[idx], probs, model.manifest.label_names)


def _markdown(
    run: Path,
    config: Mapping[str, Any],
    metrics: Sequence[Mapping[str, Any]],
    base: Mapping[str, Any] | None,
    figures: Sequence[str],
) -> str:
    final = metrics[-1]
    best = max(metrics, key=lambda m: m["accuracy"] or 0)
    lines = [f"# Federated run `{config.get('job', run.name)}`", ""]
    lines += [
        f"- rounds: {len(metrics)}; strategy {config.get('strategy', '?')}; model {config.get('model', '?')} "
        f"({config.get('optimizer', '?')}, lr {config.get('lr', '?')}); local epochs {config.get('epochs', '?')}",
        f"- final global test accuracy: **{_pct(final['accuracy'])}** (best {_pct(best['accuracy'])} at round {best['round']})",
        f"- bytes per round: {final['bytes_up'] / 1e6:.2f} MB up, {final['bytes_down'] / 1e6:.2f} MB down",
        f"- wall time: {sum(m['duration_s'] for m in metrics):.0f} s over {len(metrics)} rounds",
    ]
    if base:
        lines.append(
            f"- centralized baseline (same model, same sample passes, same interpreter): "
            f"**{_pct(base['accuracy'][-1])}**"
        )
    lines += [
        "",
        "## Accuracy and loss",
        "",
        "![accuracy](accuracy.png)",
        "",
        "![loss](loss.png)",
        "",
        "## Devices",
        "",
        device_table(metrics),
        "",
        "![device accuracy](device_accuracy.png)",
        "",
        "## Traffic",
        "",
        "![bytes](bytes.png)",
        "",
    ]
    if "predictions.png" in figures:
        lines += [
            "## Predictions of the final global model",
            "",
            "Random test images; blue: correct, red: wrong (with the true label).",
            "",
            "![predictions](predictions.png)",
            "",
        ]
    lines += [
        "## Rounds",
        "",
        "| round | accuracy | loss | devices | up MB | down MB | s |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in metrics:
        lines.append(
            f"| {m['round']} | {_pct(m['accuracy'])} | {_num(m['loss'])} "
            f"| {len(m['participants'])}/{len(m['selected'])} | {m['bytes_up'] / 1e6:.2f} | {m['bytes_down'] / 1e6:.2f} | {m['duration_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f} %"
