"""Batch index generators.

The exported model's ``train`` signature has a static batch size (the filter
gradient turns the batch into a channel dimension), so every training batch must
be full. :func:`train_batches` covers every sample once per epoch and fills the
last partial batch with extra samples drawn at random from the rest of the data
set (so those few samples are seen twice that epoch; with fewer samples than one
batch, the padding repeats samples). For evaluation, :func:`padded_batches` pads
with copies of the last index instead and says how many rows are real, so the
padding never counts in a metric.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edge_client.errors import DataError

RngLike = np.random.Generator | int | None


def as_rng(rng: RngLike) -> np.random.Generator:
    """A Generator from a Generator, a seed, or None (fresh OS entropy)."""
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def num_batches(n: int, batch_size: int, *, drop_remainder: bool = False) -> int:
    _check(n, batch_size, allow_empty=True)
    return n // batch_size if drop_remainder else -(-n // batch_size)


def iterate_batches(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    rng: RngLike = None,
    drop_remainder: bool = False,
) -> Iterator[np.ndarray]:
    """Index arrays over ``range(n)``; the last one is short unless ``drop_remainder``.

    ``rng`` (a Generator or a seed) orders the samples when ``shuffle`` is set.
    """
    _check(n, batch_size, allow_empty=True)
    order = as_rng(rng).permutation(n) if shuffle else np.arange(n, dtype=np.int64)
    stop = n - n % batch_size if drop_remainder else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def train_batches(n: int, batch_size: int, rng: RngLike = None) -> Iterator[np.ndarray]:
    """One shuffled epoch of full ``(batch_size,)`` index batches covering every sample.

    The last partial batch is padded with indices sampled without replacement
    from the samples not already in it (with replacement if ``n < batch_size``).
    """
    _check(n, batch_size, allow_empty=False)
    gen = as_rng(rng)
    order = gen.permutation(n)
    full = n - n % batch_size
    for start in range(0, full, batch_size):
        yield order[start : start + batch_size]
    if full == n:
        return
    rest = order[full:]
    need = batch_size - len(rest)
    others = order[:full]  # every sample not in the partial batch
    if len(others) >= need:
        pad = gen.choice(others, size=need, replace=False)
    else:
        pad = gen.choice(order, size=need, replace=True)
    yield np.concatenate([rest, pad])


def padded_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """``(indices, valid)`` in order; the last batch repeats its last index to fill.

    Only the first ``valid`` rows of each batch are real samples.
    """
    _check(n, batch_size, allow_empty=True)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n), dtype=np.int64)
        valid = len(idx)
        if valid < batch_size:
            idx = np.concatenate([idx, np.full(batch_size - valid, idx[-1], dtype=np.int64)])
        yield idx, valid


def _check(n: int, batch_size: int, *, allow_empty: bool) -> None:
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}")
    if n < 0 or (n == 0 and not allow_empty):
        raise DataError(f"cannot make training batches from {n} samples: the data set is empty")
