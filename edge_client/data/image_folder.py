"""Image folders: ``<root>/<class name>/<image>.png|jpg|jpeg``.

Classes are the sub-directories sorted by name (label 0 is the first); images inside
a class are read in file-name order. All images must have the same size (nothing is
resized). Pillow is needed only here and is imported lazily, so a board that trains
on IDX or .npz data does not need it.
"""

from __future__ import annotations

import io
import logging
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from edge_client.data.dataset import Dataset
from edge_client.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})  # Pillow modes without colour
_MODES = {1: "L", 3: "RGB"}  # channels -> Pillow mode
PROGRESS_EVERY_S = 5.0  # seconds between progress log lines on long loads


def require_pillow() -> ModuleType:
    """Return ``PIL.Image`` or raise a DataError that says how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise DataError(
            "reading PNG/JPEG images needs Pillow: run `pip install pillow` "
            "(or install the client with its `images` extra)"
        ) from None
    return Image


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def decode_image(data: bytes | Path, channels: int, name: str) -> np.ndarray:
    """Decode one PNG/JPEG (bytes or a path) to ``(H, W, channels)`` uint8."""
    image_mod = require_pillow()
    if channels not in _MODES:
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with image_mod.open(source) as im:
            arr = np.asarray(im.convert(_MODES[channels]), dtype=np.uint8)
    except (OSError, ValueError, image_mod.DecompressionBombError) as exc:
        raise DataError(f"cannot decode image {name}: {exc}") from None
    return arr.reshape(arr.shape[0], arr.shape[1], channels)  # (H, W) -> (H, W, 1) for "L"


def guess_channels(data: bytes | Path, name: str) -> int:
    """1 if the image is stored as grayscale, else 3."""
    image_mod = require_pillow()
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    try:
        with image_mod.open(source) as im:
            return 1 if im.mode in _GRAY_MODES else 3
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {name}: {exc}") from None


def list_image_folder(root: str | Path) -> tuple[tuple[str, ...], list[tuple[int, Path]]]:
    """Class names and ``(label, file)`` pairs of an image folder, without decoding."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[int, Path]] = []
    for label, name in enumerate(classes):
        images = sorted(p for p in (root / name).iterdir() if p.is_file() and is_image_file(p))
        files.extend((label, p) for p in images)
    if not classes or not files:
        raise DataError(
            f"{root} holds no images: expected <root>/<class name>/<image>.png|jpg|jpeg"
        )
    return tuple(classes), files


def is_image_folder(root: str | Path) -> bool:
    """True if ``root`` has a class sub-directory that holds at least one image."""
    root = Path(root)
    if not root.is_dir():
        return False
    return any(
        sub.is_dir()
        and not sub.name.startswith(".")
        and any(p.is_file() and is_image_file(p) for p in sub.iterdir())
        for sub in root.iterdir()
    )


def load_image_folder(root: str | Path, *, channels: int | None = None) -> Dataset:
    """Decode every image under ``root`` into a :class:`Dataset`.

    ``channels`` is 1 (convert to grayscale) or 3 (RGB); None takes 1 if the first
    image is grayscale, else 3. Images of a different size than the first one fail
    with a DataError naming the file.
    """
    classes, files = list_image_folder(root)
    require_pillow()
    first = files[0][1]
    if channels is None:
        channels = guess_channels(first, str(first))
    h, w, c = decode_image(first, channels, str(first)).shape
    x = np.empty((len(files), h, w, c), dtype=np.uint8)  # (N, H, W, C)
    y = np.empty(len(files), dtype=np.int64)  # (N,)
    last_log = time.monotonic()
    for i, (label, path) in enumerate(files):
        arr = decode_image(path, channels, str(path))
        if arr.shape != (h, w, c):
            raise DataError(
                f"{path} is {arr.shape[1]}x{arr.shape[0]} but {first} is {w}x{h}: "
                "all images must have the same size (resize them first)"
            )
        x[i], y[i] = arr, label
        if time.monotonic() - last_log > PROGRESS_EVERY_S:
            log.info("decoded %d/%d images from %s", i + 1, len(files), root)
            last_log = time.monotonic()
    log.debug("loaded %d images of %d classes from %s", len(files), len(classes), root)
    return Dataset(x, y, classes)
