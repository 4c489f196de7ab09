"""IDX files, the format of MNIST and Fashion-MNIST (plain or gzip-compressed).

Layout: 2 zero bytes, a type code, the number of dimensions, one big-endian uint32
per dimension, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import logging
import math
import re
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edge_client.data.dataset import Dataset
from edge_client.errors import DataError

log = logging.getLogger(__name__)

_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_READ_CHUNK = 1 << 20  # bytes per readinto() call

# Split name -> file-name prefixes used by the MNIST family ("t10k" is the test set).
_SPLIT_PREFIXES = {"train": ("train",), "test": ("t10k", "test")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a native-endian array of its shape."""
    path = Path(path)
    try:
        with _open(path) as f:
            header = _read_exact(f, 4, path, "header")
            if header[0] != 0 or header[1] != 0 or header[2] not in _TYPES:
                raise DataError(
                    f"{path} is not an IDX file (magic bytes {header.hex()}); "
                    "expected MNIST-style train-images-idx3-ubyte(.gz) files"
                )
            dtype, ndim = _TYPES[header[2]], header[3]
            if ndim == 0:
                raise DataError(f"{path}: IDX header declares 0 dimensions")
            dims_raw = _read_exact(f, 4 * ndim, path, "dimensions")
            shape = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
            _check_size(path, shape, dtype, isinstance(f, gzip.GzipFile))
            out = np.empty(shape, dtype=dtype)
            _fill(f, out, path)
            if f.read(1):
                raise DataError(
                    f"{path} holds more data than its header declares {shape}: the file is corrupt"
                )
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise DataError(f"IDX file not found: {path}") from None
        raise DataError(f"cannot read {path}: {exc}; the file is truncated or corrupt") from None
    return out.astype(dtype.newbyteorder("="), copy=False)


def load_idx(
    images_path: str | Path,
    labels_path: str | Path,
    *,
    label_names: Sequence[str] | None = None,
) -> Dataset:
    """Load an image file ``(N, H, W)`` or ``(N, H, W, C)`` and a label file ``(N,)``.

    Without ``label_names`` the classes are named ``"0" .. str(max label)``.
    """
    x = read_idx(images_path)
    y = read_idx(labels_path)
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DataError(
            f"{images_path}: expected uint8 images of shape (N, H, W), "
            f"got {x.dtype} of shape {x.shape}"
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{labels_path}: expected integer labels of shape (N,), got {y.dtype} {y.shape}"
        )
    if len(x) != len(y):
        raise DataError(
            f"{images_path} holds {len(x)} images but {labels_path} holds {len(y)} labels"
        )
    if x.ndim == 3:
        x = x[..., np.newaxis]  # (N, H, W) -> (N, H, W, 1)
    if label_names is None:
        label_names = [str(i) for i in range(int(y.max()) + 1)] if len(y) else ["0"]
    log.debug("loaded %d images %s from %s", len(x), x.shape[1:], images_path)
    return Dataset(x, y, tuple(label_names))


def find_idx_files(directory: str | Path, split: str) -> tuple[Path, Path] | None:
    """``(images, labels)`` files of ``split`` in ``directory``, or None if absent.

    Matches the usual names, e.g. ``train-images-idx3-ubyte.gz`` /
    ``t10k-labels-idx1-ubyte`` / ``train-images.idx3-ubyte``; prefers ``.gz``.
    """
    directory = Path(directory)
    if split not in _SPLIT_PREFIXES:
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    if not directory.is_dir():
        return None
    images, labels = [], []
    for p in sorted(directory.iterdir()):
        name = p.name.lower()
        if not p.is_file() or not name.startswith(_SPLIT_PREFIXES[split]):
            continue
        if re.search(r"images?[-._]idx3[-._]ubyte(\.gz)?$", name):
            images.append(p)
        elif re.search(r"labels?[-._]idx1[-._]ubyte(\.gz)?$", name):
            labels.append(p)
    if not images or not labels:
        return None
    pick = lambda ps: sorted(ps, key=lambda p: (not p.name.endswith(".gz"), p.name))[0]
    return pick(images), pick(labels)


def has_idx_files(directory: str | Path) -> bool:
    return any(find_idx_files(directory, split) for split in _SPLIT_PREFIXES)


def _open(path: Path) -> BinaryIO:
    f = path.open("rb")
    if f.read(2) == _GZIP_MAGIC:
        f.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    f.seek(0)
    return f


def _check_size(path: Path, shape: tuple[int, ...], dtype: np.dtype, compressed: bool) -> None:
    """Refuse a header that declares more data than the file can hold (before allocating)."""
    nbytes = math.prod(shape) * dtype.itemsize
    on_disk = path.stat().st_size
    limit = on_disk * 1100 if compressed else on_disk  # deflate never exceeds ~1032:1
    if nbytes > limit:
        raise DataError(
            f"{path} is truncated or corrupt: its header declares shape {shape} "
            f"({nbytes} bytes) but the file is only {on_disk} bytes"
        )


def _read_exact(f: BinaryIO, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise DataError(f"{path} is truncated: it ends inside the IDX {what}")
    return data


def _fill(f: BinaryIO, out: np.ndarray, path: Path) -> None:
    """Read exactly ``out.nbytes`` bytes into ``out`` without an extra copy."""
    view = memoryview(out.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        n = f.readinto(view[done : done + _READ_CHUNK])
        if not n:
            raise DataError(
                f"{path} is truncated: {done} of {len(view)} data bytes for shape {out.shape}; "
                "download or copy it again"
            )
        done += n
