"""Centralized baseline: the same exported model, trained through the same interpreter on
the pooled data for the same number of sample passes as a federated run.

For every federated round the baseline trains on as many samples as all devices of that
round did together (samples x local epochs), then evaluates, so the two curves share
their x axis.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.evaluation import load_test_set
from coordinator.report.build import load_metrics
from coordinator.run_dir import RunDir
from edge_client.data import (
    DATASETS,
    Dataset,
    Normalization,
    load_dataset,
    load_path,
    train_batches,
)
from edge_client.errors import ConfigError
from edge_client.trainable_model import TrainableModel

log = logging.getLogger(__name__)


def load_train_set(spec: str) -> Dataset:
    if spec.replace("_", "-").lower() in DATASETS or not Path(spec).exists():
        return load_dataset(spec, "train")
    return load_path(spec, "train")


def centralized_baseline(
    run_path: str | Path, *, seed: int = 0, runtime: str | None = None
) -> dict[str, Any]:
    run = Path(run_path)
    cfg = json.loads((run / "config.json").read_text())
    if not cfg.get("test_data"):
        raise ConfigError(f"{run} has no test data set: the baseline needs one (--test-data)")
    metrics = load_metrics(run)
    model = TrainableModel.from_dir(RunDir(run).model_dir, runtime=runtime)
    norm = Normalization.from_dict(model.manifest.normalization)
    train, test = load_train_set(cfg["test_data"]), load_test_set(cfg["test_data"])
    xt, yt = norm(test.x), test.y.astype(np.int32)
    b, lr, epochs = model.manifest.batch_size, float(cfg["lr"]), int(cfg["epochs"])
    rng = np.random.default_rng(seed)
    stream = _batch_stream(len(train), b, rng)
    out: dict[str, Any] = {
        "rounds": [],
        "accuracy": [],
        "loss": [],
        "samples": [],
        "lr": lr,
        "batch_size": b,
    }
    seen = 0
    for m in metrics:
        todo = int(m["samples"]) * epochs  # sample passes of this federated round
        for _ in range(-(-todo // b)):
            idx = next(stream)
            model.train_batch(norm(train.x[idx]), train.y[idx], lr)
        seen += todo
        result = model.evaluate(xt, yt)
        out["rounds"].append(m["round"])
        out["accuracy"].append(result.accuracy)
        out["loss"].append(result.loss)
        out["samples"].append(seen)
        log.info(
            "baseline after round %d equivalent: accuracy %.2f %%",
            m["round"],
            100 * result.accuracy,
        )
    (run / "baseline.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def _batch_stream(n: int, batch: int, rng: np.random.Generator):  # noqa: ANN202 - Iterator[ndarray]
    while True:
        yield from train_batches(n, batch, rng)
