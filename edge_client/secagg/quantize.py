"""Clip and quantize weighted updates into the ring Z_2^k; dequantize their sum.

A device's update ``u`` (float vector) with weight ``w`` (its sample count, an integer in
``[0, max_weight]``) becomes the integer vector::

    q = round(w * clip(u, -clip, clip) * scale)          # |q| <= Q = round(max_weight * clip * scale)
    encoded = [q..., w]  mod 2^k                          # the weight rides as the last coordinate

so the masked sum reveals ``sum_i w_i u_i`` and ``sum_i w_i`` (FedAvg's numerator and
denominator) and nothing per device. ``k`` is the smallest of 32 and 64 with
``n_devices * Q <= 2^(k-1) - 1`` (and ``n_devices * max_weight < 2^(k-1)``): the sum of any
``n_devices`` encoded vectors, read as a signed k-bit integer, is the exact integer sum.
numpy's uint32 / uint64 arithmetic wraps around, which is the ring's arithmetic.

Error bound: rounding moves each device's coordinate by at most ``1 / (2 * scale)``, so each
coordinate of the dequantized sum is within ``n / (2 * scale)`` of ``sum_i w_i clip(u_i)``
(:meth:`QuantConfig.sum_error_bound`; float64 arithmetic adds a negligible relative error).
Clipping is the only other change, and only for coordinates beyond the clip bound.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from edge_client.errors import ConfigError
from edge_client.secagg.errors import SecAggError


@dataclasses.dataclass(frozen=True)
class Ring:
    """Z_2^bits, bits 32 or 64, held in numpy's unsigned integers of that width."""

    bits: int

    def __post_init__(self) -> None:
        if self.bits not in (32, 64):
            raise ConfigError(f"ring size must be 32 or 64 bits, not {self.bits}")

    @property
    def dtype(self) -> np.dtype[np.unsignedinteger[Any]]:
        return np.dtype(np.uint32 if self.bits == 32 else np.uint64)

    def zeros(self, n: int) -> np.ndarray:
        return np.zeros(n, dtype=self.dtype)

    def check(self, vector: object, length: int, what: str) -> np.ndarray:
        """``vector`` as a ring vector of ``length``, or a clear error (a malformed input)."""
        if not isinstance(vector, np.ndarray) or vector.dtype != self.dtype:
            raise SecAggError(f"{what} is not a vector of {self.dtype} (ring Z_2^{self.bits})")
        if vector.shape != (length,):
            raise SecAggError(f"{what} has shape {vector.shape}, the round expects ({length},)")
        return vector


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """Fixed-point parameters of one round, public and the same on every device."""

    n_devices: int  # the most devices whose vectors may be summed
    clip: float  # each update coordinate is clipped to [-clip, clip]
    scale: float  # quanta per unit: the resolution is 1/scale
    max_weight: int = 1  # the largest weight (sample count) a device may report

    def __post_init__(self) -> None:
        if self.n_devices < 1 or self.max_weight < 1:
            raise ConfigError("secure aggregation needs n_devices >= 1 and max_weight >= 1")
        if not (self.clip > 0 and math.isfinite(self.clip)):
            raise ConfigError(f"the clip bound must be positive and finite, not {self.clip}")
        if not (self.scale > 0 and math.isfinite(self.scale)):
            raise ConfigError(f"the quantization scale must be positive, not {self.scale}")
        _ = self.ring  # fail now if no ring is big enough

    @property
    def q_max(self) -> int:
        """The largest |quantized coordinate| one device can send."""
        return round(self.max_weight * self.clip * self.scale)

    @property
    def ring(self) -> Ring:
        """The smallest ring (32 or 64 bits) in which the sum of n_devices cannot overflow."""
        need = 2 * self.n_devices * max(self.q_max, self.max_weight) + 2  # [-nQ, nQ] signed
        for bits in (32, 64):
            if need <= 2**bits:
                return Ring(bits)
        raise ConfigError(
            f"{self.n_devices} devices x clip {self.clip} x weight {self.max_weight} x scale "
            f"{self.scale} overflow a 64-bit ring: lower the scale or the clip bound"
        )

    def sum_error_bound(self, n: int) -> float:
        """Bound on |dequantized sum - sum of w_i * clip(u_i)| per coordinate, n devices."""
        return n / (2.0 * self.scale)


def quantize(update: np.ndarray, weight: int, cfg: QuantConfig) -> np.ndarray:
    """``[round(weight * clip(update) * scale)..., weight]`` in the ring. Shape (len + 1,)."""
    if not 0 <= weight <= cfg.max_weight or int(weight) != weight:
        raise ConfigError(f"weight {weight} is not an integer in [0, {cfg.max_weight}]")
    u = np.asarray(update, dtype=np.float64).ravel()
    if not np.all(np.isfinite(u)):
        raise ConfigError("the update holds NaN or infinity; it cannot be quantized")
    q = np.rint(weight * np.clip(u, -cfg.clip, cfg.clip) * cfg.scale).astype(np.int64)
    signed = np.append(q, np.int64(weight))
    return signed.astype(cfg.ring.dtype)  # two's complement: negatives wrap into the ring


def to_signed(vector: np.ndarray, ring: Ring) -> np.ndarray:
    """Ring elements read as signed k-bit integers (int64)."""
    return vector.astype(np.int32 if ring.bits == 32 else np.int64).astype(np.int64)


def dequantize_sum(total: np.ndarray, cfg: QuantConfig) -> tuple[np.ndarray, int]:
    """(sum_i w_i * clip(u_i) as float64, sum_i w_i) from the ring sum of quantized vectors."""
    signed = to_signed(total, cfg.ring)
    weight = int(signed[-1])
    if weight < 0:
        raise SecAggError("the aggregate's total weight is negative: the sum is corrupt")
    return signed[:-1].astype(np.float64) / cfg.scale, weight


def dequantize_mean(total: np.ndarray, cfg: QuantConfig) -> np.ndarray:
    """FedAvg's weighted mean ``sum w_i u_i / sum w_i`` from the ring sum."""
    values, weight = dequantize_sum(total, cfg)
    if weight == 0:
        raise SecAggError("the aggregate's total weight is 0: no samples to average")
    return values / weight
