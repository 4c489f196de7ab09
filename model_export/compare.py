"""Interpreter training vs Keras ``fit`` on the same data, order, weights and optimizer.

The check behind "on-device training is real training": the exported model, trained
batch by batch through the TFLite interpreter, must score like its Keras twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_client.data import Dataset, Normalization
from edge_client.trainable_model import TrainableModel
from model_export.baseline import keras_twin
from model_export.export import ExportResult


@dataclass(frozen=True)
class Comparison:
    interpreter_accuracy: float
    keras_accuracy: float
    train_samples: int
    test_samples: int
    runtime: str

    @property
    def gap_points(self) -> float:
        return 100 * abs(self.interpreter_accuracy - self.keras_accuracy)


def compare_with_keras(
    result: ExportResult,
    train: Dataset,
    test: Dataset,
    *,
    epochs: int = 1,
    seed: int = 0,
    runtime: str | None = None,
) -> Comparison:
    m = result.manifest
    norm = Normalization.from_dict(m.normalization)
    b = m.batch_size
    n = len(train) - len(train) % b  # whole batches only, so both see exactly the same steps
    order = np.random.default_rng(seed).permutation(len(train))[:n]
    x, y = norm(train.x[order]), train.y[order].astype(np.int32)  # (n, H, W, C), (n,)
    xt, yt = norm(test.x), test.y.astype(np.int32)
    lr = float(m.hyperparameters["lr"])

    keras = keras_twin(result)  # same initial weights and optimizer
    interp = TrainableModel(result.tflite, m, runtime=runtime)
    for _ in range(epochs):
        for i in range(0, n, b):
            interp.train_batch(x[i : i + b], y[i : i + b], lr)
        keras.fit(x, y, batch_size=b, epochs=1, shuffle=False, verbose=0)
    keras_acc = float(keras.evaluate(xt, yt, verbose=0, batch_size=256)[1])
    return Comparison(interp.evaluate(xt, yt).accuracy, keras_acc, n, len(test), interp.describe())
