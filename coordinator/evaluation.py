"""Score global weights on a held-out test set through the TFLite interpreter."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge_client.data import DATASETS, Dataset, Normalization, check_labels, load_dataset, load_path
from edge_client.trainable_model import EvalResult, TrainableModel

log = logging.getLogger(__name__)


def load_test_set(spec: str) -> Dataset:
    """A data set name (its test split) or a path (its test split when it has one)."""
    if spec.replace("_", "-").lower() in DATASETS or not Path(spec).exists():
        return load_dataset(spec, "test")
    return load_path(spec, "test")


class Evaluator:
    """Holds one interpreter and the normalised test set; ``evaluate(weights)``."""

    def __init__(self, model: TrainableModel, test: Dataset) -> None:
        check_labels(test, model.manifest.classes)
        norm = Normalization.from_dict(model.manifest.normalization)
        self.model = model
        self.x = norm(test.x)  # (N, H, W, C) float32
        self.y = test.y.astype(np.int32)  # (N,)
        self.samples = len(test)
        log.info("evaluating on %d test samples", self.samples)

    def twin(self, model: TrainableModel) -> Evaluator:
        """The same test set (shared, read-only) through another interpreter, for another
        thread: an interpreter is not shared between threads."""
        twin = copy.copy(self)  # shares x and y
        twin.model = model
        return twin

    def evaluate(self, weights: Mapping[str, np.ndarray]) -> EvalResult:
        self.model.set_weights(weights)
        return self.model.evaluate(self.x, self.y)

    def predict(self, weights: Mapping[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        self.model.set_weights(weights)
        return self.model.predict(x)
