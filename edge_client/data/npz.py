"""NumPy ``.npz`` archives: the simplest way to hand a board its own data.

Keys: ``x`` and ``y`` (or ``x_train``/``y_train`` and ``x_test``/``y_test``), and
optionally ``label_names`` (an array of strings). Images are ``(N, H, W)`` or
``(N, H, W, C)``. Pickled (object) arrays are refused: a data file must not be able
to run code.

Pixel types, decided here once:

- uint8 is used as is;
- other integer types must hold values in 0..255 and are cast to uint8;
- floats in [0, 1] are taken as already scaled and mapped back to 0..255
  (``round(x * 255)``); floats outside [0, 1] are refused, because guessing whether
  they are 0..255 pixels or normalized values silently breaks training.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from edge_client.data.dataset import Dataset
from edge_client.errors import DataError

log = logging.getLogger(__name__)


def load_npz(path: str | Path, split: str = "train") -> Dataset:
    """Load images and labels from an ``.npz`` file (see the module notes for keys)."""
    path = Path(path)
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(f"{path} is a single .npy array; save x and y with np.savez instead")
        with loaded as npz:
            keys = set(npz.files)
            x_key, y_key = _pick_keys(path, keys, split)
            x, y = npz[x_key], npz[y_key]
            names = npz["label_names"] if "label_names" in keys else None
    except FileNotFoundError:
        raise DataError(f"npz file not found: {path}") from None
    except ValueError as exc:  # raised for object arrays when allow_pickle=False
        raise DataError(f"{path}: {exc}; save plain numeric arrays (no Python objects)") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path} as .npz: {exc}") from None
    x = to_uint8_images(x, str(path))
    y = _to_labels(y, str(path))
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} images in {x_key!r} but {len(y)} labels in {y_key!r}")
    if len(y) == 0:
        raise DataError(f"{path}: {x_key!r} holds no images")
    label_names = _label_names(names, y, str(path))
    log.debug("loaded %d images %s from %s", len(x), x.shape[1:], path)
    return Dataset(x, y, label_names)


def save_npz(path: str | Path, ds: Dataset, **extra: np.ndarray) -> Path:
    """Write ``ds`` (keys ``x``, ``y``, ``label_names`` plus ``extra``) atomically.

    The data goes to a temporary file in the same directory that is renamed over
    ``path`` only when complete, so readers never see a half-written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"x": ds.x, "y": ds.y, "label_names": np.asarray(ds.label_names, dtype=str)}
    arrays.update(extra)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)  # uncompressed: loads fast, JPEG sources are lossy anyway
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a cache is shared by the user's processes
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def to_uint8_images(x: np.ndarray, source: str) -> np.ndarray:
    """``(N, H, W[, C])`` pixels of any numeric type -> ``(N, H, W, C)`` uint8."""
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]  # (N, H, W) -> (N, H, W, 1)
    if x.ndim != 4:
        raise DataError(
            f"{source}: images must have shape (N, H, W) or (N, H, W, C), got {x.shape}"
        )
    if x.dtype == np.uint8:
        return x
    if x.size == 0:
        return x.astype(np.uint8)
    if x.dtype == np.bool_ or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{source}: images must be numbers, got dtype {x.dtype}")
    lo, hi = x.min(), x.max()
    if np.issubdtype(x.dtype, np.integer):
        if lo < 0 or hi > 255:
            raise DataError(f"{source}: integer pixels must lie in 0..255, found {lo}..{hi}")
        return x.astype(np.uint8)
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
        raise DataError(
            f"{source}: float pixels must lie in [0, 1] (found {lo:g}..{hi:g}); "
            "store raw uint8 pixels 0..255 instead"
        )
    return np.rint(x * 255.0).astype(np.uint8)


def _pick_keys(path: Path, keys: set[str], split: str) -> tuple[str, str]:
    for x_key, y_key in (("x", "y"), (f"x_{split}", f"y_{split}")):
        if x_key in keys and y_key in keys:
            return x_key, y_key
    found = ", ".join(sorted(keys)) or "none"
    raise DataError(
        f"{path} has no images/labels for split {split!r} (keys: {found}); "
        f"store them as 'x' and 'y' or 'x_{split}' and 'y_{split}'"
    )


def _to_labels(y: np.ndarray, source: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # (N, 1) -> (N,)
    if y.ndim != 1:
        raise DataError(
            f"{source}: labels must have shape (N,), got {y.shape}; store class indices, "
            "not one-hot vectors"
        )
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.rint(y)):
        return y.astype(np.int64)
    raise DataError(f"{source}: labels must be integer class indices, got dtype {y.dtype}")


def _label_names(names: np.ndarray | None, y: np.ndarray, source: str) -> tuple[str, ...]:
    if names is None:
        return tuple(str(i) for i in range(max(int(y.max()) + 1, 1)))
    names = np.asarray(names)
    if names.ndim != 1 or names.size == 0:
        raise DataError(f"{source}: label_names must be a non-empty 1-D array of strings")
    return tuple(str(n) for n in names.tolist())
