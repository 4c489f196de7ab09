"""Network architectures as small layer lists, built three ways from one spec.

A spec is a tuple of layers (``model_export.registry`` lists them by name). The same spec gives
- initial parameters (seeded Glorot-uniform kernels, zero biases) as numpy arrays,
- the forward pass with builtin-gradient primitives (``model_export.ops``), which is
  what gets converted to TFLite,
- the forward pass with plain ``tf.nn`` ops (autodiff reference for the gradient
  check), and an equivalent Keras model (baseline for accuracy and speed).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_client.errors import ConfigError
from model_export import ops, registry
from model_export._tf import tf
from model_export.registry import Conv, Dense, Flatten, Layer

__all__ = ["Conv", "Dense", "Flatten", "Layer"]  # re-exported: the layer kinds of a spec


def get_spec(name: str) -> tuple[Layer, ...]:
    """The hidden layers of a registered architecture (not transfer: it has a base model)."""
    layers = registry.get_architecture(name).layers
    if layers is None:
        raise ConfigError(f"architecture {name!r} is built around a base model, not a layer list")
    return layers


def full_spec(hidden: tuple[Layer, ...], classes: int) -> tuple[Layer, ...]:
    """The hidden layers plus the logits layer."""
    return (*hidden, Dense(classes))


def _conv_out(size: int, layer: Conv) -> int:
    if layer.padding == "same":
        return -(-size // layer.stride)
    return (size - layer.kernel) // layer.stride + 1


def param_shapes(
    spec: tuple[Layer, ...], input_shape: tuple[int, ...]
) -> dict[str, tuple[int, ...]]:
    """Ordered parameter names and shapes: ``conv1_kernel``, ``conv1_bias``, ``dense1_...``."""
    shapes: dict[str, tuple[int, ...]] = {}
    shape = tuple(input_shape)
    n_conv = n_dense = 0
    for layer in spec:
        if isinstance(layer, Conv):
            if len(shape) != 3:
                raise ConfigError(f"a conv layer needs an image input (H, W, C), got {shape}")
            n_conv += 1
            h, w = _conv_out(shape[0], layer), _conv_out(shape[1], layer)
            if h < 1 or w < 1:
                raise ConfigError(f"input shape {input_shape} is too small for this architecture")
            shapes[f"conv{n_conv}_kernel"] = (layer.kernel, layer.kernel, shape[2], layer.filters)
            shapes[f"conv{n_conv}_bias"] = (layer.filters,)
            shape = (h, w, layer.filters)
        elif isinstance(layer, Flatten):
            shape = (int(np.prod(shape)),)
        else:
            if len(shape) != 1:
                raise ConfigError("a dense layer needs a flat input: put Flatten() before it")
            n_dense += 1
            shapes[f"dense{n_dense}_kernel"] = (shape[0], layer.units)
            shapes[f"dense{n_dense}_bias"] = (layer.units,)
            shape = (layer.units,)
    return shapes


def init_params(shapes: Mapping[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    """Glorot-uniform kernels and zero biases, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    params: dict[str, np.ndarray] = {}
    for name, shape in shapes.items():
        if name.endswith("_bias"):
            params[name] = np.zeros(shape, np.float32)
            continue
        receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        params[name] = rng.uniform(-limit, limit, shape).astype(np.float32)
    return params


def forward(
    spec: tuple[Layer, ...],
    params: Mapping[str, tf.Tensor],
    x: tf.Tensor,
    *,
    reference: bool = False,
) -> tf.Tensor:
    """Logits (N, classes) for x (N, ...). ``reference`` uses plain tf.nn ops (autodiff)."""
    n_conv = n_dense = 0
    last = len(spec) - 1
    for i, layer in enumerate(spec):
        if isinstance(layer, Conv):
            n_conv += 1
            k, b = params[f"conv{n_conv}_kernel"], params[f"conv{n_conv}_bias"]
            if reference:
                pad = layer.padding.upper()
                x = tf.nn.relu(tf.nn.conv2d(x, k, layer.stride, pad) + b)
            else:
                x = ops.relu(ops.conv2d(x, k, b, layer.stride, layer.padding))
        elif isinstance(layer, Flatten):
            x = tf.reshape(x, [-1, int(np.prod(x.shape[1:]))])
        else:
            n_dense += 1
            k, b = params[f"dense{n_dense}_kernel"], params[f"dense{n_dense}_bias"]
            x = tf.matmul(x, k) + b if reference else ops.dense(x, k, b)
            if i != last:
                x = tf.nn.relu(x) if reference else ops.relu(x)
    return x


def keras_model(spec: tuple[Layer, ...], input_shape: tuple[int, ...]) -> tf.keras.Model:
    """The same network as a Keras model (for baselines); weights set separately."""
    layers: list[tf.keras.layers.Layer] = [tf.keras.Input(input_shape)]
    last = len(spec) - 1
    for i, layer in enumerate(spec):
        if isinstance(layer, Conv):
            layers.append(
                tf.keras.layers.Conv2D(
                    layer.filters, layer.kernel, layer.stride, layer.padding, activation="relu"
                )
            )
        elif isinstance(layer, Flatten):
            layers.append(tf.keras.layers.Flatten())
        else:
            layers.append(tf.keras.layers.Dense(layer.units, None if i == last else "relu"))
    return tf.keras.Sequential(layers)
