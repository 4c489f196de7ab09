"""From a board's trained weights to its quantized vector, and from the ring sum back to weights.

Both sides agree on the layout: the change ``trained - global`` of every tensor, flattened in
C order and concatenated in the model manifest's weight order (float64), then the weight as
the last coordinate (``quantize``). The global weights are the ones the boards decoded (in the
job's ``encoding``), so ``global + dequantize_mean(sum)`` is FedAvg's weighted mean of the
trained weights up to the quantization bound.

:func:`choose_quantization` picks the scale: the largest power of two for which the sum of
``n`` vectors fits the 32-bit ring, or the 64-bit ring when 32 bits would leave the heaviest
board fewer than 2^15 quanta over ``[-clip, clip]`` (more than 32,768 boards).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from edge_client.errors import ConfigError
from edge_client.protocol.secagg import SecAggParams
from edge_client.secagg.errors import SecAggError
from edge_client.secagg.quantize import QuantConfig, dequantize_sum, quantize

MIN_QUANTA = 2**15  # quanta over [-clip, clip] for the heaviest board before choosing 64 bits


def choose_quantization(n_devices: int, max_weight: int, clip: float) -> QuantConfig:
    """The round's QuantConfig: 32-bit ring when it keeps MIN_QUANTA, else 64-bit."""
    for bits in (32, 64):
        limit = 2 ** (bits - 1) - 1
        exponent = math.floor(math.log2(limit / (n_devices * max_weight * clip)))
        while True:
            cfg = QuantConfig(n_devices, clip, 2.0**exponent, max_weight)
            if 2 * n_devices * max(cfg.q_max, max_weight) + 2 <= 2**bits:
                break
            exponent -= 1
        if cfg.ring.bits == bits and (bits == 64 or cfg.q_max >= MIN_QUANTA):
            return cfg
    raise ConfigError(  # pragma: no cover - 2^63 / (n * w * clip) < 1 is absurd
        f"{n_devices} devices x weight {max_weight} x clip {clip} do not fit a 64-bit ring"
    )


def quant_config(params: SecAggParams) -> QuantConfig:
    """The announced quantization; refuses parameters whose ring is not the announced one."""
    cfg = QuantConfig(params.n_devices, params.clip, params.scale, params.max_weight)
    if cfg.ring.bits != params.bits:
        raise SecAggError(
            f"the announced ring of {params.bits} bits does not fit the announced "
            f"quantization (it needs {cfg.ring.bits}): refusing the round"
        )
    return cfg


def flat_change(
    trained: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], names: Sequence[str]
) -> np.ndarray:
    """``trained - base`` of every tensor in ``names`` order, flattened (float64). Shape (P,)."""
    missing = [n for n in names if n not in trained or n not in base]
    if missing:
        raise ConfigError(f"the weights lack tensors {missing} of the model")
    parts = [
        np.asarray(trained[n], np.float64).ravel() - np.asarray(base[n], np.float64).ravel()
        for n in names
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def clip_l2(change: np.ndarray, bound: float) -> np.ndarray:
    """``change`` scaled to an L2 norm of at most ``bound`` (0: unchanged)."""
    if bound <= 0:
        return change
    norm = float(np.linalg.norm(change))
    return change if norm <= bound else change * (bound / norm)


def encode_change(change: np.ndarray, weight: int, cfg: QuantConfig) -> tuple[np.ndarray, int]:
    """(quantized ring vector of shape (P + 1,), number of coordinates the clip changed)."""
    clipped = int(np.count_nonzero(np.abs(change) > cfg.clip))
    return quantize(change, weight, cfg), clipped


def mean_weights(
    total: np.ndarray,
    cfg: QuantConfig,
    base: Mapping[str, np.ndarray],
    names: Sequence[str],
) -> tuple[dict[str, np.ndarray], int]:
    """(``base + sum w_i c_i / sum w_i`` as float32 tensors, ``sum w_i``) from the ring sum."""
    values, weight = dequantize_sum(total, cfg)
    if weight <= 0:
        raise SecAggError("the aggregate's total weight is not positive: nothing to average")
    mean = values / weight
    out: dict[str, np.ndarray] = {}
    pos = 0
    for n in names:
        b = np.asarray(base[n])
        size = b.size
        out[n] = (b.astype(np.float64) + mean[pos : pos + size].reshape(b.shape)).astype(np.float32)
        pos += size
    if pos != mean.shape[0]:
        raise SecAggError(f"the aggregate has {mean.shape[0]} values, the model {pos}")
    return out, weight
