"""Split one data set across simulated devices: pure numpy, seeded, reproducible.

Schemes (``parse_scheme`` reads them from strings such as ``"dirichlet:0.5"``):

- ``iid``: shuffle, then cut into ``num_devices`` parts.
- ``dirichlet:ALPHA``: for each class, draw device shares from Dir(ALPHA) and deal
  that class's samples accordingly. Small ALPHA (0.1) is very skewed, large (100)
  is close to iid. Draws are repeated (up to ``MAX_DIRICHLET_DRAWS`` times) until
  every device holds at least ``min_samples``; otherwise a DataError says so.
- ``shards:K``: sort by label, cut into ``num_devices * K`` shards, give K random
  shards to each device (McMahan et al.; K=2 is the classic 2-label split). A
  device holds at most K labels when shards align with classes (equal class sizes
  divisible by the shard size, e.g. Fashion-MNIST with 5 or 10 devices); a shard
  that straddles a class boundary adds one more label.
- ``sequential``: contiguous blocks in file order (the Fashion-MNIST paper:
  60,000 images -> 5 x 12,000). Only as balanced as the file order is: CIFAR-10
  from the JPEG archive is sorted by class.

Every scheme is disjoint and covers every sample: when ``N`` is not divisible by
the number of parts, the first ``N % parts`` parts get one sample more. Each
device's indices are returned sorted ascending (int64); shuffle when training.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from edge_client.errors import DataError

log = logging.getLogger(__name__)

KINDS = ("iid", "dirichlet", "shards", "sequential")
MAX_DIRICHLET_DRAWS = 100  # redraws before giving up on the minimum size
DEFAULT_MIN_SAMPLES = 10  # per device, dirichlet only (other schemes are balanced)
_USAGE = "use iid, dirichlet:ALPHA, shards:K or sequential"


@dataclass(frozen=True)
class PartitionScheme:
    kind: str  # one of KINDS
    alpha: float | None = None  # dirichlet concentration, > 0
    shards: int | None = None  # shards per device, >= 1

    def __str__(self) -> str:
        if self.kind == "dirichlet":
            return f"dirichlet:{self.alpha:g}"
        if self.kind == "shards":
            return f"shards:{self.shards}"
        return self.kind


def parse_scheme(text: str | PartitionScheme) -> PartitionScheme:
    """``"iid"``, ``"dirichlet:0.5"``, ``"shards:2"`` or ``"sequential"`` -> scheme."""
    if isinstance(text, PartitionScheme):
        return text
    raw = str(text).strip()
    kind, sep, arg = raw.partition(":")
    kind = kind.strip().lower()
    if kind in ("iid", "sequential"):
        if sep:
            raise DataError(f"partition {raw!r} takes no argument: use {kind!r}")
        return PartitionScheme(kind)
    if kind == "dirichlet":
        try:
            alpha = float(arg)
        except ValueError:
            raise DataError(
                f"partition {raw!r} needs a number: dirichlet:ALPHA, e.g. dirichlet:0.5"
            ) from None
        if not np.isfinite(alpha) or alpha <= 0:
            raise DataError(f"partition {raw!r}: ALPHA must be a positive number, e.g. 0.5")
        return PartitionScheme("dirichlet", alpha=alpha)
    if kind == "shards":
        try:
            shards = int(arg)
        except ValueError:
            raise DataError(
                f"partition {raw!r} needs an integer: shards:K, e.g. shards:2"
            ) from None
        if shards < 1:
            raise DataError(f"partition {raw!r}: K must be at least 1")
        return PartitionScheme("shards", shards=shards)
    raise DataError(f"unknown partition {raw!r}: {_USAGE}")


def partition(
    labels: np.ndarray,
    num_devices: int,
    scheme: str | PartitionScheme,
    seed: int = 0,
    *,
    min_samples: int = DEFAULT_MIN_SAMPLES,
) -> list[np.ndarray]:
    """Index arrays, one per device, that split ``labels`` by ``scheme``.

    Same inputs and seed give the same split. ``min_samples`` (dirichlet only) is
    capped at ``N // num_devices``.
    """
    spec = parse_scheme(scheme)
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    n = len(y)
    if isinstance(num_devices, bool) or not isinstance(num_devices, (int, np.integer)):
        raise DataError(f"num_devices must be an integer, got {num_devices!r}")
    if num_devices < 1:
        raise DataError(f"num_devices must be at least 1, got {num_devices}")
    if n < num_devices:
        raise DataError(f"cannot split {n} samples across {num_devices} devices: use fewer")
    rng = np.random.default_rng(seed)
    if spec.kind == "iid":
        parts = np.array_split(rng.permutation(n), num_devices)
    elif spec.kind == "sequential":
        parts = np.array_split(np.arange(n), num_devices)
    elif spec.kind == "shards":
        parts = _shards(y, num_devices, spec.shards or 1, rng)
    else:
        parts = _dirichlet(
            y, num_devices, spec.alpha or 1.0, rng, min(min_samples, n // num_devices)
        )
    return [np.sort(p).astype(np.int64) for p in parts]


def _shards(y: np.ndarray, num_devices: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    num_shards = num_devices * k
    if num_shards > len(y):
        raise DataError(
            f"shards:{k} needs {num_shards} shards but there are only {len(y)} samples: "
            "use a smaller K or fewer devices"
        )
    perm = rng.permutation(len(y))  # random order inside each class
    order = perm[np.argsort(y[perm], kind="stable")]  # sorted by label
    shards = np.array_split(order, num_shards)
    owner = rng.permutation(num_shards)  # shard owner[i] goes to device i // k
    return [
        np.concatenate([shards[s] for s in owner[d * k : (d + 1) * k]]) for d in range(num_devices)
    ]


def _dirichlet(
    y: np.ndarray, num_devices: int, alpha: float, rng: np.random.Generator, min_size: int
) -> list[np.ndarray]:
    classes = np.unique(y)
    by_class = [np.flatnonzero(y == c) for c in classes]
    smallest = 0
    for attempt in range(1, MAX_DIRICHLET_DRAWS + 1):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_devices)]
        for idx in by_class:
            idx = rng.permutation(idx)
            shares = rng.dirichlet(np.full(num_devices, alpha))  # (num_devices,)
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
            for d, piece in enumerate(np.split(idx, cuts)):
                parts[d].append(piece)
        merged = [np.concatenate(p) for p in parts]
        smallest = min(len(p) for p in merged)
        if smallest >= min_size:
            log.debug(
                "dirichlet:%g accepted on draw %d (smallest device %d)", alpha, attempt, smallest
            )
            return merged
    raise DataError(
        f"dirichlet:{alpha:g} left a device with only {smallest} samples (< {min_size}) in "
        f"{MAX_DIRICHLET_DRAWS} draws: use a larger ALPHA or fewer devices"
    )


def label_histogram(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """``(num_devices, num_classes)`` int64 sample counts: how skewed a split is."""
    y = np.asarray(labels)
    return np.stack([np.bincount(y[p], minlength=num_classes) for p in parts]).astype(np.int64)
