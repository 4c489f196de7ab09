"""On-device optimizers as plain arithmetic on resource variables.

Keras optimizers would convert to ops outside the builtin set; these are a few
``assign`` ops per weight. Slots live next to the weights in the .tflite file and
``set_weights`` resets them, so every round starts from the global weights with a
fresh optimizer (the usual FedAvg client).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge_client.errors import ConfigError
from model_export._tf import tf
from model_export.registry import OPTIMIZERS


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.05  # default learning rate; the train signature takes it per call
    momentum: float = 0.0  # SGD only; 0 disables the velocity slot
    beta1: float = 0.9  # Adam, as in Keras
    beta2: float = 0.999  # Adam, as in Keras
    epsilon: float = 1e-7  # Adam, as in Keras (so baselines match)
    prox_mu: float = 0.0  # FedProx: adds mu * (w - w_round_start) to each gradient

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(
                f"unknown optimizer {self.name!r}: choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.lr <= 0:
            raise ConfigError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.prox_mu < 0:
            raise ConfigError(f"FedProx mu must be >= 0, got {self.prox_mu}")

    def hyperparameters(self) -> dict[str, float]:
        keys = {"sgd": ("lr", "momentum"), "adam": ("lr", "beta1", "beta2", "epsilon")}[self.name]
        out = {k: float(getattr(self, k)) for k in keys}
        out["prox_mu"] = float(self.prox_mu)
        return out


class Optimizer(tf.Module):
    """Holds the slots of one optimizer and applies one update step."""

    def __init__(self, config: OptimizerConfig, weights: Mapping[str, tf.Variable]) -> None:
        super().__init__(name="optimizer")
        self.config = config
        self.slots: dict[str, list[tf.Variable]] = {}
        n_slots = {"sgd": 1 if config.momentum > 0 else 0, "adam": 2}[config.name]
        for name, var in weights.items():
            zeros = np.zeros(var.shape, np.float32)
            self.slots[name] = [tf.Variable(zeros, name=f"{name}_slot{i}") for i in range(n_slots)]
        # Step count as shape [1]: rank-0 tensors trip an aarch64 LiteRT bug (DESIGN.md).
        self.step = tf.Variable(np.zeros([1], np.float32), name="step")

    def reset(self) -> None:
        for slots in self.slots.values():
            for slot in slots:
                slot.assign(tf.zeros_like(slot))
        self.step.assign(tf.zeros_like(self.step))

    def apply(
        self, weights: Mapping[str, tf.Variable], grads: Sequence[tf.Tensor], lr: tf.Tensor
    ) -> None:
        """One step over ``weights`` (in order) with matching ``grads``; ``lr`` has shape [1]."""
        c = self.config
        self.step.assign_add(tf.ones_like(self.step))
        if c.name == "adam":
            t = self.step
            # Bias-corrected step size, Keras formulation.
            alpha = lr * tf.sqrt(1.0 - tf.pow(c.beta2, t)) / (1.0 - tf.pow(c.beta1, t))  # [1]
        for (name, var), g in zip(weights.items(), grads):
            slots = self.slots[name]
            if c.name == "sgd" and slots:
                v = slots[0]
                v.assign(c.momentum * v + g)
                var.assign_sub(lr * v)
            elif c.name == "sgd":
                var.assign_sub(lr * g)
            else:
                m, s = slots
                m.assign(c.beta1 * m + (1.0 - c.beta1) * g)
                s.assign(c.beta2 * s + (1.0 - c.beta2) * g * g)
                var.assign_sub(alpha * m / (tf.sqrt(s) + c.epsilon))
