"""PNG plots of a run's metrics (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():  # noqa: ANN202 - matplotlib.pyplot
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(
    path: Path,
    series: Mapping[str, tuple[Sequence[float], Sequence[float | None]]],
    *,
    title: str,
    ylabel: str,
    percent: bool = False,
) -> Path:
    """One line per series: name -> (x, y); None values are skipped."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, (x, y) in series.items():
        pts = [(a, b) for a, b in zip(x, y) if b is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(
                xs, [100 * v for v in ys] if percent else ys, marker="o", markersize=3, label=name
            )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel("round")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def bytes_per_round(path: Path, metrics: Sequence[Mapping[str, Any]]) -> Path:
    plt = _pyplot()
    rounds = [m["round"] for m in metrics]
    up = np.array([m["bytes_up"] for m in metrics]) / 1e6
    down = np.array([m["bytes_down"] for m in metrics]) / 1e6
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    width = 0.4
    ax.bar(np.array(rounds) - width / 2, up, width, label="up (updates)")
    ax.bar(np.array(rounds) + width / 2, down, width, label="down (global weights)")
    ax.set_title("Bytes per round (all devices)")
    ax.set_xlabel("round")
    ax.set_ylabel("MB")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def prediction_grid(
    path: Path,
    images: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    label_names: Sequence[str],
    *,
    columns: int = 6,
) -> Path:
    """Test images with predicted label and confidence: blue when correct, red when wrong.

    images (N, H, W, C) uint8; labels (N,); probabilities (N, classes).
    """
    plt = _pyplot()
    n = len(images)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.9, rows * 2.2), dpi=110)
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        ax.imshow(
            img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None
        )
        pred = int(np.argmax(probabilities[i]))
        ok = pred == int(labels[i])
        text = f"{label_names[pred]} {100 * probabilities[i][pred]:.0f}%"
        if not ok:
            text += f"\n(true: {label_names[int(labels[i])]})"
        ax.set_title(text, color="tab:blue" if ok else "tab:red", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
