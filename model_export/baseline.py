"""Keras twins of exported models: same architecture, initial weights and optimizer.

Used for the accuracy comparison (interpreter training vs Keras ``fit``) and the
throughput benchmark. Coordinator-side only (needs TensorFlow).
"""

from __future__ import annotations

from edge_client.trainable_model import TrainableModel
from model_export import architectures
from model_export._tf import tf
from model_export.export import ExportResult


def keras_twin(result: ExportResult) -> tf.keras.Model:
    m = result.manifest
    if m.architecture == "transfer":
        raise NotImplementedError("no Keras twin for transfer models")
    spec = architectures.full_spec(architectures.get_spec(m.architecture), m.classes)
    model = architectures.keras_model(spec, tuple(m.input_shape))
    weights = TrainableModel(result.tflite, m).get_weights()
    model.set_weights([weights[w.name] for w in m.weights])
    h = m.hyperparameters
    if m.optimizer == "adam":
        opt = tf.keras.optimizers.Adam(h["lr"], h["beta1"], h["beta2"], h["epsilon"])
    else:
        opt = tf.keras.optimizers.SGD(h["lr"], momentum=h.get("momentum", 0.0))
    model.compile(
        opt, tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"]
    )
    return model
