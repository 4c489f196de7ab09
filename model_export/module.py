"""The trainable TensorFlow module whose signatures become the .tflite model.

Signatures (all inputs rank >= 1, see the aarch64 note in DESIGN.md):

- ``train(x: (B, *input) f32, y: (B,) i32, lr: (1,) f32) -> {loss: f32}`` with a static
  batch size B (the conv filter gradient folds the batch into channels);
- ``infer(x: (N, *input) f32) -> {probabilities: (N, classes) f32}``;
- ``evaluate(x: (N, *input) f32, y: (N,) i32) -> {loss: f32 mean, correct: i32}``;
- ``get_weights() -> {name: tensor}`` and ``set_weights(**{name: tensor}) -> {count: i32}``.
  ``set_weights`` also records the round-start weights (FedProx anchor) and resets the
  optimizer slots.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from model_export import architectures, ops
from model_export._tf import tf
from model_export.optimizers import Optimizer, OptimizerConfig


class TrainableModule(tf.Module):
    def __init__(
        self,
        hidden: tuple[architectures.Layer, ...],
        input_shape: tuple[int, ...],
        classes: int,
        batch_size: int,
        optimizer: OptimizerConfig,
        params: Mapping[str, np.ndarray],
        base: tf.types.experimental.ConcreteFunction | None = None,
    ) -> None:
        super().__init__(name="trainable")
        self.spec = architectures.full_spec(hidden, classes)
        self.input_shape = tuple(input_shape)
        self.classes = classes
        self.batch_size = batch_size
        self.base = base
        self.weights = {k: tf.Variable(v, name=k) for k, v in params.items()}
        self.anchor = {k: tf.Variable(v, name=f"{k}_anchor") for k, v in params.items()}
        self.optimizer = Optimizer(optimizer, self.weights)
        self.prox_mu = optimizer.prox_mu

    # -- graph pieces -------------------------------------------------------------
    def features(self, x: tf.Tensor) -> tf.Tensor:
        """Input of the trainable part: x itself, or the frozen base's features."""
        if self.base is None:
            return x
        feats = self.base(x)
        feats = feats[0] if isinstance(feats, (list, tuple)) else feats
        size = int(np.prod(feats.shape[1:]))
        return tf.stop_gradient(tf.reshape(feats, [-1, size]))

    def logits(self, x: tf.Tensor) -> tf.Tensor:
        return architectures.forward(self.spec, self.weights, self.features(x))

    def train_step(self, x: tf.Tensor, y: tf.Tensor, lr: tf.Tensor) -> dict[str, tf.Tensor]:
        onehot = tf.one_hot(y, self.classes, dtype=tf.float32)  # (B, K)
        feats = self.features(x)
        variables = list(self.weights.values())
        with tf.GradientTape() as tape:
            logits = architectures.forward(self.spec, self.weights, feats)
            loss = ops.softmax_cross_entropy(logits, onehot)
        grads = tape.gradient(loss, variables)
        if self.prox_mu > 0:
            grads = [
                g + self.prox_mu * (w - self.anchor[k])
                for (k, w), g in zip(self.weights.items(), grads)
            ]
        self.optimizer.apply(self.weights, grads, lr)
        return {"loss": loss}

    # -- signatures -----------------------------------------------------------------
    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        b, shape = self.batch_size, list(self.input_shape)
        train = tf.function(
            self.train_step,
            input_signature=[
                tf.TensorSpec([b, *shape], tf.float32, name="x"),
                tf.TensorSpec([b], tf.int32, name="y"),
                tf.TensorSpec([1], tf.float32, name="lr"),
            ],
        )
        infer = tf.function(
            lambda x: {"probabilities": tf.nn.softmax(self.logits(x))},
            input_signature=[tf.TensorSpec([None, *shape], tf.float32, name="x")],
        )
        evaluate = tf.function(
            self._evaluate,
            input_signature=[
                tf.TensorSpec([None, *shape], tf.float32, name="x"),
                tf.TensorSpec([None], tf.int32, name="y"),
            ],
        )
        get_weights = tf.function(
            lambda: {k: tf.identity(v) for k, v in self.weights.items()}, input_signature=[]
        )
        set_weights = tf.function(
            self._set_weights,
            input_signature=[
                tf.TensorSpec(v.shape, tf.float32, name=k) for k, v in self.weights.items()
            ],
        )
        return {
            "train": train.get_concrete_function(),
            "infer": infer.get_concrete_function(),
            "evaluate": evaluate.get_concrete_function(),
            "get_weights": get_weights.get_concrete_function(),
            "set_weights": set_weights.get_concrete_function(),
        }

    def _evaluate(self, x: tf.Tensor, y: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = self.logits(x)
        loss = ops.softmax_cross_entropy(logits, tf.one_hot(y, self.classes, dtype=tf.float32))
        hits = tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), y), tf.int32)
        return {"loss": loss, "correct": tf.reduce_sum(hits)}

    def _set_weights(self, *tensors: tf.Tensor) -> dict[str, tf.Tensor]:
        for (k, var), t in zip(self.weights.items(), tensors):
            var.assign(t)
            self.anchor[k].assign(t)
        self.optimizer.reset()
        return {"count": tf.constant([len(tensors)], tf.int32)}
