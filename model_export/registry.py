"""The architecture registry: every model ``fedcoord export`` can build, readable without
TensorFlow (this module imports only the standard library).

``fedcoord export --model`` and ``fedcoord start --model`` take their choices and help from
here, the job file is validated against it (``coordinator.config``), and
``model_export.architectures`` builds the layers listed here. A new architecture is one
:class:`Architecture` entry (a tuple of layers); its builders need no change unless it needs a
new kind of layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_client.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")  # on-device optimizers (model_export.optimizers)


@dataclass(frozen=True)
class Conv:
    """Convolution + ReLU. Strided convolutions replace pooling (no MaxPoolGrad)."""

    filters: int
    kernel: int = 3
    stride: int = 1
    padding: str = "same"  # "same" or "valid", as in Keras


@dataclass(frozen=True)
class Dense:
    """Fully connected layer; ReLU unless it is the last layer (logits)."""

    units: int


@dataclass(frozen=True)
class Flatten:
    pass


Layer = Conv | Dense | Flatten


@dataclass(frozen=True)
class Architecture:
    name: str
    summary: str  # a few words for --help
    input_shape: tuple[int, int, int]  # default (H, W, C) of one sample
    # The hidden layers (the logits layer is added for the number of classes); None: the
    # layers come from a base model given at export time (transfer).
    layers: tuple[Layer, ...] | None


_ENTRIES = (
    # Two hidden layers of 200 units: the "2NN" of the MNIST FedAvg experiments.
    Architecture("mlp", "2x200 dense", (28, 28, 1), (Flatten(), Dense(200), Dense(200))),
    # Small conv net for 28x28x1; two stride-2 convs halve the image twice.
    Architecture(
        "cnn",
        "small conv net, 28x28x1",
        (28, 28, 1),
        (Conv(16, 5, 2), Conv(32, 5, 2), Flatten(), Dense(128)),
    ),
    # Lightweight conv net for 32x32x3 (CIFAR-10) that trains in minutes on a CPU.
    Architecture(
        "cifar_cnn",
        "lightweight conv net, 32x32x3",
        (32, 32, 3),
        (
            Conv(32, 3, 1),
            Conv(32, 3, 2),
            Conv(64, 3, 1),
            Conv(64, 3, 2),
            Conv(128, 3, 2),
            Flatten(),
            Dense(128),
        ),
    ),
    Architecture("transfer", "frozen --base-model + trainable head", (96, 96, 3), None),
)
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in _ENTRIES}
ARCHITECTURE_NAMES: tuple[str, ...] = tuple(ARCHITECTURES)
# What a job can export by name (transfer needs a base model: export it, then --model-dir).
JOB_ARCHITECTURES: tuple[str, ...] = tuple(a.name for a in _ENTRIES if a.layers is not None)


def get_architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURE_NAMES)
        raise ConfigError(f"unknown architecture {name!r}: choose one of {known}")
    return ARCHITECTURES[name]


def architecture_help(names: tuple[str, ...] = ARCHITECTURE_NAMES) -> str:
    """``name (summary), ...`` for --help."""
    return ", ".join(f"{n} ({ARCHITECTURES[n].summary})" for n in names)
