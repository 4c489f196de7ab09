"""Image folders packed in a tar archive: ``<top>/<split>/<class>/<image>.jpg|png``.

Images are decoded straight from the (gzip) stream, nothing is unpacked to disk.
Labels come from the class names of all splits together, sorted, so train and
test agree. Within a split, samples are ordered by (class, file name), i.e. sorted
by label: shuffle or partition before training.
"""

from __future__ import annotations

import logging
import tarfile
import time
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

import numpy as np

from edge_client.data.dataset import Dataset
from edge_client.data.image_folder import (
    IMAGE_SUFFIXES,
    PROGRESS_EVERY_S,
    decode_image,
    require_pillow,
)
from edge_client.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


def load_image_tar(
    path: str | Path, *, channels: int = 3, splits: Iterable[str] = SPLITS
) -> dict[str, Dataset]:
    """Decode every image of ``splits`` in the archive, one pass over the stream.

    Returns ``{split: Dataset}`` for each split found. Raises DataError if the
    archive is unreadable, holds no such images, or has images of mixed sizes.
    """
    require_pillow()
    path = Path(path)
    wanted = set(splits)
    # split -> list of (class name, file name, (H, W, C) uint8 pixels)
    found: dict[str, list[tuple[str, str, np.ndarray]]] = {}
    try:
        size = path.stat().st_size
        with path.open("rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            last_log = time.monotonic()
            count = 0
            for member in tar:
                key = _member_key(member, wanted)
                if key is None:
                    continue
                f = tar.extractfile(member)
                if f is None:
                    continue
                split, cls, name = key
                arr = decode_image(f.read(), channels, f"{path}:{member.name}")
                found.setdefault(split, []).append((cls, name, arr))
                count += 1
                if time.monotonic() - last_log > PROGRESS_EVERY_S:
                    log.info(
                        "decoding %s: %d images, %.0f%% of the archive read",
                        path.name,
                        count,
                        100.0 * raw.tell() / max(size, 1),
                    )
                    last_log = time.monotonic()
    except FileNotFoundError:
        raise DataError(f"archive not found: {path}") from None
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {path}: {exc}; the archive is truncated or corrupt") from None
    if not found:
        raise DataError(
            f"{path} holds no images under <top>/<split>/<class>/ for split(s) "
            f"{', '.join(sorted(wanted))}"
        )
    classes = tuple(sorted({cls for items in found.values() for cls, _, _ in items}))
    out = {split: _stack(path, split, items, classes) for split, items in sorted(found.items())}
    log.info(
        "decoded %s: %s",
        path.name,
        ", ".join(f"{split} {len(ds)}" for split, ds in out.items()),
    )
    return out


def _member_key(member: tarfile.TarInfo, wanted: set[str]) -> tuple[str, str, str] | None:
    """``(split, class, file)`` for an image member in a wanted split, else None."""
    if not member.isfile():
        return None
    parts = PurePosixPath(member.name).parts
    if len(parts) < 3:
        return None
    split, cls, name = parts[-3:]
    if split not in wanted or name.startswith(".") or cls.startswith("."):
        return None
    if PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return split, cls, name


def _stack(
    path: Path, split: str, items: list[tuple[str, str, np.ndarray]], classes: tuple[str, ...]
) -> Dataset:
    items.sort(key=lambda item: (item[0], item[1]))
    shape = items[0][2].shape
    label_of = {cls: i for i, cls in enumerate(classes)}
    x = np.empty((len(items), *shape), dtype=np.uint8)  # (N, H, W, C)
    y = np.empty(len(items), dtype=np.int64)  # (N,)
    for i, (cls, name, arr) in enumerate(items):
        if arr.shape != shape:
            raise DataError(
                f"{path}:{split}/{cls}/{name} has shape {arr.shape} but the first image "
                f"has {shape}: all images must have the same size"
            )
        x[i], y[i] = arr, label_of[cls]
    return Dataset(x, y, classes)
