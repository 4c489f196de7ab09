"""The in-memory data set every loader returns: raw uint8 pixels plus int64 labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge_client.errors import DataError


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays with == is ambiguous
class Dataset:
    """Images and labels of one split, kept as raw pixels until a batch is normalized.

    Construction validates and canonicalizes: ``x`` must be ``(N, H, W, C)`` uint8,
    ``y`` is converted to int64 ``(N,)``, every label must index ``label_names``.
    """

    x: np.ndarray  # (N, H, W, C) uint8 raw pixels
    y: np.ndarray  # (N,) int64 labels in [0, len(label_names))
    label_names: tuple[str, ...]

    def __post_init__(self) -> None:
        x = np.asarray(self.x)
        y = np.asarray(self.y)
        if x.dtype != np.uint8:
            raise DataError(f"images must be uint8 pixels 0..255, got dtype {x.dtype}")
        if x.ndim != 4:
            raise DataError(
                f"images must have shape (N, H, W, C), got {x.shape}; "
                "add a channel axis for grayscale images"
            )
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]  # (N, 1) -> (N,)
        if y.ndim != 1:
            raise DataError(f"labels must have shape (N,), got {y.shape}")
        if not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
            raise DataError(f"labels must be integers, got dtype {y.dtype}")
        if len(x) != len(y):
            raise DataError(f"{len(x)} images but {len(y)} labels: the counts must match")
        if len(x) == 0:
            raise DataError("the data set is empty: it needs at least one image")
        names = tuple(str(name) for name in self.label_names)
        if not names:
            raise DataError("label_names is empty: name at least one class")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y.astype(np.int64, copy=False))
        object.__setattr__(self, "label_names", names)
        _check_range(self.y, len(names), f"{len(names)} label names")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return (
            f"Dataset(n={len(self)}, sample_shape={self.sample_shape}, "
            f"num_classes={self.num_classes})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of one image."""
        _, h, w, c = self.x.shape
        return (int(h), int(w), int(c))

    def subset(self, indices: np.ndarray | Sequence[int]) -> Dataset:
        """A new data set holding ``x[indices]`` and ``y[indices]`` (copies)."""
        idx = np.asarray(indices)
        if idx.dtype == np.bool_:
            raise DataError("subset() takes integer indices, not a boolean mask")
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise DataError(f"subset() takes a 1-D array of integer indices, got {idx.shape}")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise DataError(f"subset index out of range for a data set of {len(self)} samples")
        return Dataset(self.x[idx], self.y[idx], self.label_names)

    def class_counts(self) -> np.ndarray:
        """``(num_classes,)`` int64: how many samples carry each label."""
        return np.bincount(self.y, minlength=self.num_classes).astype(np.int64)


def check_labels(ds: Dataset, num_classes: int) -> None:
    """Raise :class:`DataError` naming the first label outside ``[0, num_classes)``.

    Use it to check local data against the model's number of classes.
    """
    if num_classes < 1:
        raise DataError(f"num_classes must be at least 1, got {num_classes}")
    _check_range(ds.y, num_classes, f"a model with {num_classes} classes")


def _check_range(y: np.ndarray, num_classes: int, what: str) -> None:
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"label {int(y[i])} at index {i} is outside [0, {num_classes}) "
            f"({bad.size} bad labels in all): it does not fit {what}"
        )
