"""Byzantine-robust aggregation and clipping as pure numpy functions.

Every function works on update *deltas* (trained weights minus the round's global
weights), flattened to one float32 vector per device and stacked into a matrix
``deltas`` of shape (n, d): n devices, d parameters. None of them uses sample counts:
a device's claimed count is one more thing a hostile device can lie about, so each
device gets one vote.

- :func:`coordinate_median`: per parameter, the median of the n values (Yin et al. 2018).
- :func:`trimmed_mean`: per parameter, drop the k largest and k smallest values, average
  the rest, k = floor(trim_ratio * n) (Yin et al. 2018).
- :func:`krum_scores`, :func:`krum`, :func:`multi_krum`: score each update by the sum of
  squared distances to its n - f - 2 nearest neighbours; Krum keeps the lowest score,
  Multi-Krum averages the m lowest (Blanchard et al. 2017), one-shot scoring.
- :func:`clip_by_norm`: scale a delta down to an L2 norm of at most ``max_norm``.

The median and trimmed mean work column block by column block (``block`` parameters at
a time) so their scratch memory is O(n x block) on top of the deltas themselves; Krum
accumulates an n x n Gram matrix the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

DEFAULT_BLOCK_BYTES = 32 << 20  # scratch budget of one column block (float64 copies)

Deltas = np.ndarray | Sequence[np.ndarray]
"""An (n, d) matrix, or n rows of d values each (so callers need not stack a copy)."""


def _blocks(n: int, d: int, block: int | None) -> Iterator[tuple[int, int]]:
    size = block or max(1024, DEFAULT_BLOCK_BYTES // (8 * max(n, 1)))
    for start in range(0, d, size):
        yield start, min(d, start + size)


def _shape(deltas: Deltas) -> tuple[int, int]:
    if isinstance(deltas, np.ndarray):
        if deltas.ndim != 2 or deltas.shape[0] == 0:
            raise ValueError(f"deltas must be a non-empty (n, d) matrix, got {deltas.shape}")
        return deltas.shape[0], deltas.shape[1]
    if not deltas or any(np.ndim(r) != 1 or len(r) != len(deltas[0]) for r in deltas):
        raise ValueError("deltas must be a non-empty list of equally long vectors")
    return len(deltas), len(deltas[0])


def _cols(deltas: Deltas, a: int, b: int) -> np.ndarray:
    """Columns [a, b) of every row as float64 (n, b - a): the only scratch copy."""
    if isinstance(deltas, np.ndarray):
        return deltas[:, a:b].astype(np.float64)
    return np.stack([np.asarray(r[a:b], np.float64) for r in deltas])


def coordinate_median(deltas: Deltas, *, block: int | None = None) -> np.ndarray:
    """Per-coordinate median of ``deltas`` (n, d) -> (d,) float32 (mean of the middle two
    when n is even)."""
    n, d = _shape(deltas)
    out = np.empty(d, np.float32)
    for a, b in _blocks(n, d, block):
        out[a:b] = np.median(_cols(deltas, a, b), axis=0)  # (b - a,)
    return out


def trim_count(n: int, trim_ratio: float) -> int:
    """How many values trimmed_mean drops at each end: floor(ratio * n), keeping >= 1."""
    if not 0 <= trim_ratio < 0.5:
        raise ValueError(f"trim_ratio must be in [0, 0.5), got {trim_ratio}")
    return min(math.floor(trim_ratio * n), (n - 1) // 2)


def trimmed_mean(deltas: Deltas, trim_ratio: float, *, block: int | None = None) -> np.ndarray:
    """Per-coordinate mean after dropping the k largest and k smallest values,
    k = :func:`trim_count` (n, d) -> (d,) float32."""
    n, d = _shape(deltas)
    k = trim_count(n, trim_ratio)
    out = np.empty(d, np.float32)
    for a, b in _blocks(n, d, block):
        s = np.sort(_cols(deltas, a, b), axis=0)  # (n, b - a), ascending per column
        out[a:b] = s[k : n - k].mean(axis=0)
    return out


def pairwise_sq_distances(deltas: Deltas, *, block: int | None = None) -> np.ndarray:
    """Squared L2 distances between the rows of ``deltas`` (n, d) -> (n, n) float64."""
    n, d = _shape(deltas)
    gram = np.zeros((n, n), np.float64)
    for a, b in _blocks(n, d, block):
        xb = _cols(deltas, a, b)  # (n, b - a)
        gram += xb @ xb.T
    sq = np.diag(gram)
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    np.fill_diagonal(dist, 0.0)
    return np.maximum(dist, 0.0)  # rounding can make a tiny distance negative


def krum_neighbours(n: int, f: int) -> int:
    """Neighbours each Krum score sums over: n - f - 2, at least 1 and at most n - 1."""
    return max(1, min(n - 1, n - f - 2))


def krum_scores(deltas: Deltas, f: int, *, block: int | None = None) -> np.ndarray:
    """Krum score of each row: the sum of its squared distances to its n - f - 2 nearest
    other rows (n,) float64. Krum's guarantee needs n >= 2f + 3."""
    if f < 0:
        raise ValueError(f"the number of Byzantine devices must be >= 0, got {f}")
    dist = pairwise_sq_distances(deltas, block=block)
    n = dist.shape[0]
    if n == 1:
        return np.zeros(1)
    k = krum_neighbours(n, f)
    others = np.sort(dist + np.diag(np.full(n, np.inf)), axis=1)[:, :k]  # (n, k) nearest
    return others.sum(axis=1)


def multi_krum_select(
    deltas: Deltas, f: int, m: int | None = None, *, block: int | None = None
) -> np.ndarray:
    """Indices of the ``m`` rows with the lowest Krum scores (default m = n - f, at least
    1), ascending by score; ties keep the lower index."""
    scores = krum_scores(deltas, f, block=block)
    n = len(scores)
    count = n - f if m is None else m
    count = max(1, min(n, count))
    return np.argsort(scores, kind="stable")[:count]


def krum(deltas: Deltas, f: int, *, block: int | None = None) -> np.ndarray:
    """The single row with the lowest Krum score (d,) float32."""
    (best,) = multi_krum_select(deltas, f, 1, block=block)
    return np.asarray(deltas[best], np.float32)


def multi_krum(
    deltas: Deltas, f: int, m: int | None = None, *, block: int | None = None
) -> np.ndarray:
    """Plain mean of the ``m`` rows with the lowest Krum scores (d,) float32."""
    chosen = np.sort(multi_krum_select(deltas, f, m, block=block))
    total = np.zeros(_shape(deltas)[1], np.float64)
    for i in chosen:
        total += deltas[i]
    return (total / len(chosen)).astype(np.float32)


def clip_by_norm(delta: np.ndarray, max_norm: float) -> tuple[np.ndarray, float]:
    """``delta * min(1, max_norm / ||delta||)`` and the original L2 norm."""
    if max_norm <= 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    norm = float(np.linalg.norm(delta.astype(np.float64)))
    if norm <= max_norm:
        return delta, norm
    return (delta * (max_norm / norm)).astype(delta.dtype), norm
