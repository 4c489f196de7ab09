"""Aggregation as pure numpy functions and small strategy classes.

Streaming: a strategy folds each accepted update into a running weighted sum as it
arrives, so memory is O(model), not O(devices x model).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

import numpy as np

Weights = dict[str, np.ndarray]


def weighted_average(updates: Iterable[tuple[Mapping[str, np.ndarray], int]]) -> Weights:
    """FedAvg: sum_i n_i * w_i / sum_i n_i, tensor by tensor (reference implementation)."""
    acc = WeightedSum()
    for weights, n in updates:
        acc.add(weights, n)
    return acc.mean()


class WeightedSum:
    """Running sum_i n_i * w_i in float64 and sum_i n_i: the streaming core of FedAvg."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.total = 0
        self.count = 0

    def add(self, weights: Mapping[str, np.ndarray], samples: int) -> None:
        if samples <= 0:
            raise ValueError("an update needs a positive sample count")
        for name, w in weights.items():
            contribution = np.asarray(w, np.float64) * samples
            if name in self.sums:
                self.sums[name] += contribution
            else:
                self.sums[name] = contribution
        self.total += samples
        self.count += 1

    def mean(self) -> Weights:
        if not self.total:
            raise ValueError("no updates to average")
        return {k: (v / self.total).astype(np.float32) for k, v in self.sums.items()}


def server_momentum_step(
    global_weights: Mapping[str, np.ndarray],
    average: Mapping[str, np.ndarray],
    velocity: Mapping[str, np.ndarray] | None,
    server_lr: float,
    momentum: float,
) -> tuple[Weights, Weights]:
    """FedAvgM: v = beta*v + (w - avg); w' = w - eta*v. Returns (new weights, new velocity)."""
    new_w: Weights = {}
    new_v: Weights = {}
    for k, w in global_weights.items():
        delta = w.astype(np.float64) - average[k]  # pseudo-gradient
        v = delta if velocity is None else momentum * velocity[k].astype(np.float64) + delta
        new_v[k] = v.astype(np.float32)
        new_w[k] = (w - server_lr * v).astype(np.float32)
    return new_w, new_v


class Strategy(Protocol):
    """What the round loop needs: fold updates in, then produce the next global weights."""

    name: str

    def begin(self, global_weights: Mapping[str, np.ndarray]) -> None: ...

    def accept(self, weights: Mapping[str, np.ndarray], samples: int) -> None: ...

    def finish(self) -> Weights: ...

    def state(self) -> dict[str, np.ndarray]: ...

    def load_state(self, state: Mapping[str, np.ndarray]) -> None: ...


class Stateless:
    """For strategies that keep nothing across rounds (their checkpoints add no arrays)."""

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        pass


class FedAvg(Stateless):
    """Sample-weighted average of the client weights (McMahan et al.)."""

    name = "fedavg"

    def __init__(self) -> None:
        self._sum = WeightedSum()
        self._global: Mapping[str, np.ndarray] = {}

    def begin(self, global_weights: Mapping[str, np.ndarray]) -> None:
        self._sum = WeightedSum()
        self._global = global_weights

    def accept(self, weights: Mapping[str, np.ndarray], samples: int) -> None:
        self._sum.add(weights, samples)

    def finish(self) -> Weights:
        return self._sum.mean()


class FedProx(FedAvg):
    """FedAvg on the server; the proximal term mu lives in the exported model's train step."""

    name = "fedprox"


class FedAvgM(FedAvg):
    """FedAvg with server momentum (Hsu et al. 2019)."""

    name = "fedavgm"

    def __init__(self, server_lr: float = 1.0, momentum: float = 0.9) -> None:
        super().__init__()
        self.server_lr, self.momentum = server_lr, momentum
        self._velocity: Weights | None = None

    def finish(self) -> Weights:
        new, self._velocity = server_momentum_step(
            self._global, self._sum.mean(), self._velocity, self.server_lr, self.momentum
        )
        return new

    def state(self) -> dict[str, np.ndarray]:
        return {f"velocity/{k}": v for k, v in (self._velocity or {}).items()}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        velocity = {
            k.split("/", 1)[1]: np.asarray(v) for k, v in state.items() if k.startswith("velocity/")
        }
        self._velocity = velocity or None
