"""Named data sets (``fashion-mnist``, ``mnist``, ``cifar10``) and format sniffing.

Where a named data set is looked for, first match wins:

1. ``data_dir`` when given: ``data_dir/<name>/`` then ``data_dir`` itself, and
   nowhere else (a wrong explicit path must fail, not fall back silently);
2. ``$EDGEFL_DATA_DIR/<name>/`` (cifar10: ``$EDGEFL_DATA_DIR`` holding
   ``cifar10-jpg.tar.gz``, ``cifar10/`` or ``cifar-10-batches-py/``);
3. the defaults: ``/usr/share/datasets/fashion-mnist`` (Debian package
   ``dataset-fashion-mnist``), ``<repo>/../shared/data/...`` and ``/work/shared/data/...``.

CIFAR-10 ships as a tar of 60,000 JPEGs; it is decoded once (about 10 s) into
``$EDGEFL_CACHE_DIR/cifar10/{train,test}.npz`` (default ``~/.cache/edgefl``). The
cache remembers which archive it came from and is rebuilt when that file changes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_client.data import cifar, idx, image_folder, image_tar, npz
from edge_client.data.dataset import Dataset, check_labels
from edge_client.errors import DataError

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
DATA_DIR_ENV = "EDGEFL_DATA_DIR"
CACHE_DIR_ENV = "EDGEFL_CACHE_DIR"
CIFAR10_TAR = "cifar10-jpg.tar.gz"
_REPO_SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
_WORK_SHARED = Path("/work/shared/data")


@dataclass(frozen=True)
class DatasetSpec:
    """What the toolkit knows about a named data set."""

    name: str
    label_names: tuple[str, ...]
    sample_shape: tuple[int, int, int]  # (H, W, C)
    sizes: tuple[int, int]  # (train, test) samples
    subdirs: tuple[str, ...]  # directory names looked for under a data root
    defaults: tuple[Path, ...]  # default roots, searched last
    missing_hint: str  # how to get the data, shown when it is not found


DATASETS: dict[str, DatasetSpec] = {
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        label_names=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        sample_shape=(28, 28, 1),
        sizes=(60_000, 10_000),
        subdirs=("fashion-mnist", "fashion_mnist"),
        defaults=(Path("/usr/share/datasets/fashion-mnist"),),
        missing_hint="install it with `sudo apt-get install dataset-fashion-mnist` or put the "
        f"four IDX files (train-images-idx3-ubyte.gz, ...) in ${DATA_DIR_ENV}/fashion-mnist/",
    ),
    "mnist": DatasetSpec(
        name="mnist",
        label_names=tuple(str(i) for i in range(10)),
        sample_shape=(28, 28, 1),
        sizes=(60_000, 10_000),
        subdirs=("mnist",),
        defaults=(_REPO_SHARED / "mnist", _WORK_SHARED / "mnist"),
        missing_hint="put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        f"t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in ${DATA_DIR_ENV}/mnist/",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        label_names=cifar.LABEL_NAMES,
        sample_shape=(32, 32, 3),
        sizes=(50_000, 10_000),
        subdirs=(),  # looked for as files/directories by _find_cifar10
        defaults=(_REPO_SHARED, _WORK_SHARED),
        missing_hint=f"put {CIFAR10_TAR} (or the official cifar-10-batches-py/ directory) "
        f"in ${DATA_DIR_ENV} or ../shared/data/",
    ),
}
_ALIASES = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10"}


def dataset_names() -> tuple[str, ...]:
    return tuple(DATASETS)


def get_spec(name: str) -> DatasetSpec:
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}: use one of {', '.join(DATASETS)}")
    return DATASETS[key]


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | Path | None = None,
    num_classes: int | None = None,
) -> Dataset:
    """Load a named data set's ``split`` ("train" or "test") as raw uint8 pixels.

    With ``num_classes`` (the model's), labels outside ``[0, num_classes)`` fail.
    """
    spec = get_spec(name)
    _check_split(split)
    roots = _roots(spec, data_dir)
    if spec.name == "cifar10":
        ds = _load_cifar10(spec, split, roots, explicit=data_dir is not None)
    else:
        ds = _load_idx_dataset(spec, split, roots)
    if num_classes is not None:
        check_labels(ds, num_classes)
    return ds


def load_path(
    path: str | Path,
    split: str = "train",
    *,
    channels: int | None = None,
    num_classes: int | None = None,
) -> Dataset:
    """Load a user's data by sniffing its format.

    ``path`` may be an ``.npz`` file, a tar of ``<split>/<class>/`` images, a directory
    of IDX files, a CIFAR-10 python batches directory, a directory holding
    ``<split>.npz``, or an image folder (``<path>/<split>/<class>/`` or
    ``<path>/<class>/``; the latter has no splits and serves every split).
    ``channels`` applies to images only (None: as stored). With ``num_classes``
    (the model's), labels outside ``[0, num_classes)`` fail.
    """
    ds = _sniff(path, split, channels)
    if num_classes is not None:
        check_labels(ds, num_classes)
    return ds


def _sniff(path: str | Path, split: str, channels: int | None) -> Dataset:
    _check_split(split)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path not found: {p}")
    if p.is_file():
        return _load_file(p, split, channels)
    if cifar.find_batch_dir(p):
        return cifar.load_cifar_batches(p, split)
    files = idx.find_idx_files(p, split)
    if files:
        return idx.load_idx(*files)
    if idx.has_idx_files(p):
        raise DataError(f"{p} holds IDX files but none for the {split!r} split")
    if (p / f"{split}.npz").is_file():
        return npz.load_npz(p / f"{split}.npz", split)
    if image_folder.is_image_folder(p / split):
        return image_folder.load_image_folder(p / split, channels=channels)
    if any((p / s).is_dir() for s in SPLITS) and not image_folder.is_image_folder(p):
        raise DataError(f"{p} has no {split!r} split (expected {p / split}/<class>/<images>)")
    if image_folder.is_image_folder(p):
        if split != "train":
            log.warning("%s has no split directories: using all of its images as %r", p, split)
        return image_folder.load_image_folder(p, channels=channels)
    raise DataError(
        f"cannot tell the data format of {p}: expected a .npz file, IDX files, a CIFAR-10 "
        "batches directory or an image folder <class>/<image>.png|jpg"
    )


def cache_dir() -> Path:
    """``$EDGEFL_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgefl``, else ``~/.cache/edgefl``."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "edgefl"


def build_cifar10_cache(archive: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Decode a CIFAR-10 JPEG tar once into ``{split}.npz`` files; returns their paths."""
    archive = Path(archive).resolve()
    out = Path(out_dir) if out_dir is not None else cache_dir() / "cifar10"
    start = time.monotonic()
    log.info("decoding %s into %s (once; ~10 s on a desktop CPU)", archive, out)
    stamp = _source_stamp(archive)
    paths = {}
    for split, ds in image_tar.load_image_tar(archive, channels=3).items():
        paths[split] = npz.save_npz(out / f"{split}.npz", ds, source=stamp)
    log.info("cached CIFAR-10 in %s in %.1f s", out, time.monotonic() - start)
    return paths


def _load_file(p: Path, split: str, channels: int | None) -> Dataset:
    name = p.name.lower()
    if name.endswith(".npz"):
        return npz.load_npz(p, split)
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        datasets = image_tar.load_image_tar(
            p, channels=3 if channels is None else channels, splits=(split,)
        )
        if split not in datasets:
            raise DataError(f"{p} has no {split!r} split (found: {', '.join(datasets)})")
        return datasets[split]
    if "idx" in name and "ubyte" in name:
        raise DataError(f"{p} is a single IDX file: pass the directory holding images and labels")
    raise DataError(f"cannot tell the data format of {p}: expected a .npz or .tar(.gz) file")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")


def _roots(spec: DatasetSpec, data_dir: str | Path | None) -> list[Path]:
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return [root / sub for sub in spec.subdirs] + [root]
    roots: list[Path] = []
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        env_root = Path(env).expanduser()
        roots += [env_root / sub for sub in spec.subdirs] if spec.subdirs else [env_root]
    roots += list(spec.defaults)
    return list(dict.fromkeys(roots))  # drop duplicates, keep order


def _not_found(spec: DatasetSpec, split: str, roots: list[Path]) -> DataError:
    looked = ", ".join(str(r) for r in roots)
    return DataError(
        f"{spec.name} {split} data not found (looked in {looked}); {spec.missing_hint}"
    )


def _load_idx_dataset(spec: DatasetSpec, split: str, roots: list[Path]) -> Dataset:
    for root in roots:
        files = idx.find_idx_files(root, split)
        if files:
            log.info("loading %s %s from %s", spec.name, split, root)
            ds = idx.load_idx(*files)
            return Dataset(ds.x, ds.y, spec.label_names)
    raise _not_found(spec, split, roots)


def _load_cifar10(spec: DatasetSpec, split: str, roots: list[Path], explicit: bool) -> Dataset:
    for root in roots:
        loader = _find_cifar10(root, split)
        if loader is not None:
            return _with_spec_labels(loader(), spec)
    cached = cache_dir() / "cifar10" / f"{split}.npz"
    if cached.is_file() and not explicit:
        log.info("CIFAR-10 archive not found: using the cache %s as is", cached)
        return _with_spec_labels(npz.load_npz(cached), spec)
    raise _not_found(spec, split, roots)


def _with_spec_labels(ds: Dataset, spec: DatasetSpec) -> Dataset:
    """Relabel by class name, so a source missing a class keeps the canonical indices."""
    if ds.label_names == spec.label_names:
        return ds
    index = {name: i for i, name in enumerate(spec.label_names)}
    unknown = [name for name in ds.label_names if name not in index]
    if unknown:
        raise DataError(
            f"unknown {spec.name} class(es) {', '.join(map(repr, unknown))}: "
            f"expected {', '.join(spec.label_names)}"
        )
    mapping = np.asarray([index[name] for name in ds.label_names], dtype=np.int64)
    return Dataset(ds.x, mapping[ds.y], spec.label_names)


def _find_cifar10(root: Path, split: str) -> Callable[[], Dataset] | None:
    """A loader for the first CIFAR-10 form found in ``root``, else None."""
    archive = root if root.is_file() else root / CIFAR10_TAR
    if archive.is_file():
        return lambda: _cached_cifar10(archive, split)
    batches = cifar.find_batch_dir(root)
    if batches is not None:
        return lambda: cifar.load_cifar_batches(batches, split)
    for folder in (root / "cifar10" / split, root / split):
        if image_folder.is_image_folder(folder):
            return lambda: image_folder.load_image_folder(folder, channels=3)
    return None


def _cached_cifar10(archive: Path, split: str) -> Dataset:
    out = cache_dir() / "cifar10"
    path = out / f"{split}.npz"
    if not _cache_valid(path, archive):
        with _build_lock(out):
            if not _cache_valid(path, archive):  # another process may have built it
                build_cifar10_cache(archive, out)
    return npz.load_npz(path)


def _source_stamp(archive: Path) -> np.ndarray:
    st = archive.stat()
    return np.asarray(f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}")


def _cache_valid(path: Path, archive: Path) -> bool:
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as f:
            valid = "source" in f.files and str(f["source"]) == str(_source_stamp(archive))
    except (OSError, ValueError, EOFError):
        valid = False
    if not valid:
        log.info("CIFAR-10 cache %s is stale or unreadable: rebuilding it", path)
    return valid


@contextlib.contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """Let one process build the cache while others wait (many simulated boards)."""
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, the atomic rename still keeps files whole
        yield
        return
    with (directory / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
