"""Self-checks every export runs before it writes a file.

1. Gradients of the builtin-only graph equal TensorFlow autodiff on a random batch.
2. In the TFLite interpreter: weights round-trip bit-identically, the first train
   step's loss equals TensorFlow's, and a few steps lower the loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge_client.errors import ModelError
from edge_client.manifest import Manifest
from edge_client.trainable_model import TrainableModel
from model_export import architectures, ops
from model_export._tf import tf
from model_export.module import TrainableModule

TRAIN_CHECK_STEPS = 5


class GradientCheckError(ModelError):
    """The builtin-only gradients differ from TensorFlow autodiff."""


class TrainingCheckError(ModelError):
    """The converted model does not train in the interpreter."""


@dataclass(frozen=True)
class CheckReport:
    gradient_max_rel_error: float
    interpreter_loss_error: float
    loss_before: float
    loss_after: float

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


def random_batch(module: TrainableModule, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (module.batch_size, *module.input_shape)).astype(np.float32)
    y = rng.integers(0, module.classes, module.batch_size).astype(np.int32)
    return x, y


def gradient_errors(module: TrainableModule, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Per weight: max |g - g_autodiff| / max |g_autodiff| on one batch."""
    feats = module.features(tf.constant(x))
    params: Mapping[str, tf.Variable] = module.weights
    variables = list(params.values())
    with tf.GradientTape() as tape:
        logits = architectures.forward(module.spec, params, feats)
        loss = ops.softmax_cross_entropy(logits, tf.one_hot(y, module.classes))
    ours = tape.gradient(loss, variables)
    with tf.GradientTape() as tape:
        logits = architectures.forward(module.spec, params, feats, reference=True)
        ref_loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    ref = tape.gradient(ref_loss, variables)
    errors = {}
    for name, g, r in zip(params, ours, ref):
        scale = float(tf.reduce_max(tf.abs(r))) + 1e-12
        errors[name] = float(tf.reduce_max(tf.abs(g - r))) / scale
    return errors


def check_gradients(module: TrainableModule, tolerance: float, seed: int = 0) -> float:
    x, y = random_batch(module, seed)
    errors = gradient_errors(module, x, y)
    worst = max(errors, key=errors.__getitem__)
    if errors[worst] > tolerance:
        raise GradientCheckError(
            f"gradient check failed: {worst} differs from TensorFlow autodiff by "
            f"{errors[worst]:.2e} (relative; tolerance {tolerance:.0e})"
        )
    return errors[worst]


def reference_loss(module: TrainableModule, x: np.ndarray, y: np.ndarray) -> float:
    logits = architectures.forward(
        module.spec, module.weights, module.features(tf.constant(x)), reference=True
    )
    return float(tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)))


def check_interpreter(
    module: TrainableModule, tflite: bytes, manifest: Manifest, lr: float, seed: int = 0
) -> tuple[float, float, float]:
    """Returns (relative loss error vs TF, loss before, loss after a few steps)."""
    model = TrainableModel(tflite, manifest)
    initial = model.get_weights()
    model.set_weights(initial)
    again = model.get_weights()
    for name, arr in initial.items():
        if arr.tobytes() != again[name].tobytes():
            raise TrainingCheckError(
                f"weights do not round-trip: set_weights(get_weights()) changed {name}"
            )
    x, y = random_batch(module, seed + 1)
    expected = reference_loss(module, x, y)
    losses = [model.train_batch(x, y, lr) for _ in range(TRAIN_CHECK_STEPS)]
    after = model.evaluate(x, y).loss
    loss_error = abs(losses[0] - expected) / max(abs(expected), 1e-6)
    if not np.isfinite(losses[0]) or loss_error > 1e-3:
        raise TrainingCheckError(
            f"the interpreter's loss {losses[0]:.5f} differs from TensorFlow's {expected:.5f}: conversion bug"
        )
    if not np.isfinite(after) or after >= losses[0]:
        raise TrainingCheckError(
            f"{TRAIN_CHECK_STEPS} training steps in the interpreter did not lower the loss "
            f"({losses[0]:.4f} -> {after:.4f}); is the learning rate {lr} too high?"
        )
    return loss_error, losses[0], after
