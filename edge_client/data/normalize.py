"""Turn raw uint8 pixels into the float32 input a model expects.

Data sets stay uint8 in memory (4x smaller than float32, which matters on a board);
batches are normalized right before they are fed to the interpreter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_client.errors import DataError

DEFAULT_SCALE = 1.0 / 255.0  # uint8 pixels -> [0, 1]
DEFAULT_CHUNK = 4096  # samples per chunk: 4096 x 32x32x3 float32 is 48 MiB at most


def normalize(
    x: np.ndarray,
    *,
    scale: float = DEFAULT_SCALE,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    chunk_size: int = DEFAULT_CHUNK,
) -> np.ndarray:
    """Return float32 ``(x * scale - mean) / std`` with mean/std per channel (last axis).

    ``mean`` and ``std`` hold one value for all channels or one per channel.
    Work goes in chunks of ``chunk_size`` samples (first axis), so the only large
    allocation is the float32 result.
    """
    x = np.asarray(x)
    if x.ndim == 0:
        raise DataError("normalize() needs an array of samples, got a scalar")
    channels = int(x.shape[-1])
    mean_arr = _per_channel(mean, "mean", channels)
    std_arr = _per_channel(std, "std", channels)
    _check_scale(scale)
    if np.any(std_arr == 0):
        raise DataError("std must not contain 0: it divides the pixels")
    if chunk_size < 1:
        raise DataError(f"chunk_size must be at least 1, got {chunk_size}")
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, x.shape[0], chunk_size):
        part = out[start : start + chunk_size]
        np.multiply(x[start : start + chunk_size], np.float32(scale), out=part, dtype=np.float32)
        part -= mean_arr
        part /= std_arr
    return out


@dataclass(frozen=True)
class Normalization:
    """How a model wants its pixels: ``(x * scale - mean) / std`` per channel.

    The defaults map uint8 pixels to [0, 1]. Stored in the model manifest as a dict
    with the keys ``scale``, ``mean`` and ``std``.
    """

    scale: float = DEFAULT_SCALE
    mean: tuple[float, ...] = (0.0,)  # one value for all channels, or one per channel
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        _check_scale(self.scale)
        object.__setattr__(self, "scale", float(self.scale))
        for name in ("mean", "std"):
            values = _as_floats(getattr(self, name), name)
            object.__setattr__(self, name, values)
        if any(s == 0.0 for s in self.std):
            raise DataError("std must not contain 0: it divides the pixels")
        if len(self.mean) > 1 and len(self.std) > 1 and len(self.mean) != len(self.std):
            raise DataError(
                f"mean has {len(self.mean)} values but std has {len(self.std)}: "
                "give one value or one per channel for each"
            )

    def __call__(self, x: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
        return self.apply(x, chunk_size=chunk_size)

    def apply(self, x: np.ndarray, *, chunk_size: int = DEFAULT_CHUNK) -> np.ndarray:
        """float32 normalized copy of ``x`` (see :func:`normalize`)."""
        return normalize(x, scale=self.scale, mean=self.mean, std=self.std, chunk_size=chunk_size)

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Normalization:
        """Inverse of :meth:`to_dict`; missing keys take the defaults, unknown keys fail."""
        if not isinstance(data, Mapping):
            raise DataError(f"normalization must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - {"scale", "mean", "std"})
        if unknown:
            raise DataError(
                f"unknown normalization key(s) {', '.join(map(repr, unknown))}: "
                "use scale, mean and std"
            )
        return cls(**dict(data))


def _as_floats(values: Any, name: str) -> tuple[float, ...]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = (values,)
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a number or a list of numbers, got {values!r}") from None
    if not floats:
        raise DataError(f"{name} must hold at least one value")
    if not all(math.isfinite(v) for v in floats):
        raise DataError(f"{name} must be finite numbers, got {values!r}")
    return floats


def _per_channel(values: Sequence[float], name: str, channels: int) -> np.ndarray:
    floats = _as_floats(values, name)
    if len(floats) not in (1, channels):
        raise DataError(
            f"{name} has {len(floats)} values but the images have {channels} channels: "
            f"give 1 value or {channels}"
        )
    return np.asarray(floats, dtype=np.float32)


def _check_scale(scale: Any) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating)):
        raise DataError(f"scale must be a number, got {scale!r}")
    if not math.isfinite(float(scale)) or float(scale) == 0.0:
        raise DataError(f"scale must be a finite non-zero number, got {scale!r}")
