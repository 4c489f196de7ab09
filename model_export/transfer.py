"""Frozen feature extractors for transfer learning (forward pass only on the board)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_client.errors import ConfigError
from model_export._tf import tf

MOBILENET_DEFAULT_SHAPE = (96, 96, 3)


def load_base(
    base_model: str, base_weights: str | None, input_shape: tuple[int, ...] | None
) -> tuple[tf.types.experimental.ConcreteFunction, tuple[int, ...], tuple[int, ...]]:
    """(frozen forward function, input shape, feature shape) for ``--base-model``.

    ``base_model`` is ``mobilenet_v2`` (Keras' MobileNetV2 without its top, average
    pooled; weights from ``base_weights`` if given, random otherwise: nothing is
    downloaded) or the path of a saved Keras model whose output are the features.
    """
    if base_model == "mobilenet_v2":
        shape = tuple(input_shape or MOBILENET_DEFAULT_SHAPE)
        if len(shape) != 3 or shape[2] != 3 or min(shape[:2]) < 32:
            raise ConfigError(
                f"mobilenet_v2 needs an input shape H,W,3 with H,W >= 32, got {shape}"
            )
        model = tf.keras.applications.MobileNetV2(
            input_shape=shape, include_top=False, weights=None, pooling="avg", alpha=0.35
        )
        if base_weights:
            _load_weights(model, base_weights)
    else:
        path = Path(base_model)
        if not path.exists():
            raise ConfigError(
                f"base model not found: {path} (give a .keras/.h5 file or mobilenet_v2)"
            )
        try:
            model = tf.keras.models.load_model(path, compile=False)
        except Exception as exc:  # Keras raises many types for unreadable files
            raise ConfigError(f"cannot load base model {path}: {exc}") from exc
        shape = tuple(int(d) for d in model.input_shape[1:])
        if input_shape is not None and tuple(input_shape) != shape:
            raise ConfigError(
                f"--input-shape {input_shape} differs from the base model's input {shape}"
            )
    model.trainable = False
    features = tuple(int(d) for d in model.output_shape[1:])
    features = (int(np.prod(features)),)
    return freeze(model, shape), shape, features


def freeze(model: tf.keras.Model, shape: tuple[int, ...]) -> tf.types.experimental.ConcreteFunction:
    """The model's inference pass with its weights folded in as constants.

    Left as variables, the base would be stored as resource variables the interpreter
    must initialise (and BatchNorm would not fold); frozen, the converter folds it into
    plain CONV_2D / DEPTHWISE_CONV_2D ops with constant filters that XNNPACK accelerates.
    """
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: model(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([None, *shape], tf.float32))
    return convert_variables_to_constants_v2(concrete)


def _load_weights(model: tf.keras.Model, path: str) -> None:
    if not Path(path).exists():
        raise ConfigError(f"base weights not found: {path}")
    try:
        model.load_weights(path)
    except Exception as exc:  # shape mismatch, wrong format
        raise ConfigError(f"cannot load base weights {path} into mobilenet_v2: {exc}") from exc
