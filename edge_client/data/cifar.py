"""The official CIFAR-10 "python version": ``cifar-10-batches-py/``.

The directory holds ``data_batch_1`` .. ``data_batch_5`` (train), ``test_batch`` and
``batches.meta``. They are Python 2 pickles, and a pickle can run arbitrary code, so
they are read with :class:`RestrictedUnpickler`: it builds dicts, lists, bytes,
numbers and plain numeric numpy arrays, and refuses every other global (``os.system``
and friends), so a tampered batch file fails with a DataError instead of running.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from edge_client.data.dataset import Dataset
from edge_client.errors import DataError

log = logging.getLogger(__name__)

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
META = "batches.meta"
SUBDIR = "cifar-10-batches-py"  # name of the directory in the official archive
LABEL_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_SIDE = 32  # CIFAR images are 32x32 RGB, stored as 3 planes of 1024 bytes per row


def _safe_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return dtype


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles of bytes with protocol < 3 call _codecs.encode(text, "latin1").
    if encoding.lower() not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"encoding {encoding!r} is not allowed")
    return text.encode("latin1")


_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's _reconstruct, any version
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the few globals a CIFAR batch needs."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def read_batch(path: str | Path) -> dict[str, Any]:
    """Unpickle one batch file safely; byte-string keys are decoded to str."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            obj = RestrictedUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"CIFAR batch file not found: {path}") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as exc:
        raise DataError(f"{path} is not a valid CIFAR-10 python batch: {exc}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path} is not a valid CIFAR-10 python batch: not a dict")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def find_batch_dir(path: str | Path) -> Path | None:
    """The batches directory at ``path`` or ``path/cifar-10-batches-py``, else None."""
    path = Path(path)
    for candidate in (path, path / SUBDIR):
        if (candidate / META).is_file() or (candidate / TEST_BATCHES[0]).is_file():
            return candidate
    return None


def load_cifar_batches(directory: str | Path, split: str = "train") -> Dataset:
    """Load the train (5 batches, 50,000 images) or test (10,000) split as uint8 RGB."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    directory = Path(directory)
    found = find_batch_dir(directory)
    if found is None:
        raise DataError(
            f"{directory} is not a CIFAR-10 python batches directory "
            f"(expected {META}, data_batch_1..5 and test_batch)"
        )
    names = TRAIN_BATCHES if split == "train" else TEST_BATCHES
    present = [n for n in names if (found / n).is_file()]
    if len(present) < len(names):
        missing = ", ".join(n for n in names if n not in present)
        raise DataError(f"{found} is missing CIFAR-10 batch file(s): {missing}")
    xs, ys = [], []
    for name in present:
        x, y = _decode(read_batch(found / name), found / name)
        xs.append(x)
        ys.append(y)
    label_names = _label_names(found)
    log.debug("loaded CIFAR-10 %s split from %s", split, found)
    return Dataset(np.concatenate(xs), np.concatenate(ys), label_names)


def _decode(batch: dict[str, Any], path: Path) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get("data"), batch.get("labels", batch.get("fine_labels"))
    if not isinstance(data, np.ndarray) or labels is None:
        raise DataError(f"{path} lacks the 'data' array or the 'labels' list")
    plane = _SIDE * _SIDE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * plane:
        raise DataError(
            f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(data) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: expected {len(data)} integer labels, got {y.dtype} {y.shape}")
    # (N, 3072) -> (N, 3, 32, 32) channel planes -> (N, 32, 32, 3)
    x = data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y.astype(np.int64)


def _label_names(directory: Path) -> tuple[str, ...]:
    if not (directory / META).is_file():
        return LABEL_NAMES
    names = read_batch(directory / META).get("label_names")
    if not isinstance(names, list) or not names:
        raise DataError(f"{directory / META} lacks the 'label_names' list")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)
