from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from edge_client.data import dataset_names, load_dataset, load_path, registry, save_npz
from edge_client.data.dataset import Dataset
from edge_client.errors import DataError
from tests.fixtures.data import cifar10_tar, fashion_mnist_dir, mnist_dir


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
    """No user settings leak in; the CIFAR cache goes to a temporary directory."""
    monkeypatch.delenv("EDGEFL_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("EDGEFL_CACHE_DIR", str(tmp_path / "cache"))


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))


def _small_idx_dir(root: Path, n: int = 4, label: int = 1) -> Path:
    for prefix in ("train", "t10k"):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), 7))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.full(n, label))
    return root


def test_fashion_mnist_real_files():
    fashion_mnist_dir()  # skipped without it, failed when CI=true
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion_mnist", "test")

    assert len(train) == 60_000 and len(test) == 10_000
    assert train.x.shape == (60_000, 28, 28, 1) and train.x.dtype == np.uint8
    assert train.y.dtype == np.int64
    assert train.y.min() == 0 and train.y.max() == 9
    assert int(train.y[0]) == 9 and train.label_names[9] == "Ankle boot"
    assert train.label_names[0] == "T-shirt/top"
    assert train.class_counts().tolist() == [6000] * 10


def test_mnist_real_files():
    mnist_dir()  # skipped without it, failed when CI=true
    train = load_dataset("mnist", "train")
    test = load_dataset("mnist", "test", num_classes=10)

    assert len(train) == 60_000 and len(test) == 10_000
    assert train.sample_shape == (28, 28, 1)
    assert train.y[:5].tolist() == [5, 0, 4, 1, 9]
    assert train.label_names == tuple("0123456789")


def test_env_data_dir_comes_before_defaults(tmp_path, monkeypatch):
    _small_idx_dir(tmp_path / "data" / "mnist", n=3)
    monkeypatch.setenv("EDGEFL_DATA_DIR", str(tmp_path / "data"))

    ds = load_dataset("mnist", "train")

    assert len(ds) == 3


def test_explicit_data_dir_wins_and_does_not_fall_back(tmp_path, monkeypatch):
    _small_idx_dir(tmp_path / "env" / "mnist", n=3)
    _small_idx_dir(tmp_path / "mine", n=5)
    monkeypatch.setenv("EDGEFL_DATA_DIR", str(tmp_path / "env"))

    ds = load_dataset("mnist", "test", data_dir=str(tmp_path / "mine"))

    assert len(ds) == 5
    with pytest.raises(DataError, match=r"mnist train data not found \(looked in .*typo"):
        load_dataset("mnist", "train", data_dir=tmp_path / "typo")


def test_missing_fashion_mnist_says_which_package_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_unknown_name_split_and_bad_labels(tmp_path):
    _small_idx_dir(tmp_path, label=7)

    with pytest.raises(DataError, match="unknown data set 'imagenet': use one of fashion-mnist"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="unknown split 'valid'"):
        load_dataset("mnist", "valid")
    with pytest.raises(DataError, match=r"label 7 at index 0 is outside \[0, 5\)"):
        load_dataset("mnist", data_dir=tmp_path, num_classes=5)
    assert dataset_names() == ("fashion-mnist", "mnist", "cifar10")


def _jpeg_tar(path: Path, classes: dict[str, int]) -> Path:
    from PIL import Image

    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for cls, n in classes.items():
                for i in range(n):
                    buf = io.BytesIO()
                    Image.new("RGB", (32, 32), (10, 20, 30)).save(buf, "JPEG")
                    info = tarfile.TarInfo(f"cifar10/{split}/{cls}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path


def test_cifar10_from_small_tar_builds_cache_once(tmp_path, monkeypatch):
    pytest.importorskip("PIL")
    data = tmp_path / "data"
    data.mkdir()
    tar = _jpeg_tar(data / "cifar10-jpg.tar.gz", {"bird": 2, "truck": 3})

    train = load_dataset("cifar10", "train", data_dir=data)
    cache = tmp_path / "cache" / "cifar10"
    assert (cache / "train.npz").is_file() and (cache / "test.npz").is_file()
    monkeypatch.setattr(registry.image_tar, "load_image_tar", _must_not_decode)
    test = load_dataset("cifar10", "test", data_dir=data)

    assert train.x.shape == (5, 32, 32, 3)
    assert train.label_names[2] == "bird"
    assert train.y.tolist() == [2, 2, 9, 9, 9]  # canonical CIFAR-10 indices, not 0..1
    assert len(test) == 5
    # a changed archive invalidates the cache
    os.utime(tar, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset("cifar10", "train", data_dir=data)


def _must_not_decode(*args, **kwargs):
    raise AssertionError("decoded again")


@pytest.mark.slow
def test_cifar10_real_archive():
    cifar10_tar()  # skipped without it, failed when CI=true
    pytest.importorskip("PIL")

    train = load_dataset("cifar10", "train")
    test = load_dataset("cifar10", "test")

    assert train.x.shape == (50_000, 32, 32, 3) and test.x.shape == (10_000, 32, 32, 3)
    assert train.class_counts().tolist() == [5000] * 10
    assert test.class_counts().tolist() == [1000] * 10
    assert train.label_names[0] == "airplane" and train.label_names[9] == "truck"


def test_load_path_sniffs_formats(tmp_path):
    ds = Dataset(np.zeros((2, 3, 3, 1), np.uint8), np.array([0, 1]), ("a", "b"))
    save_npz(tmp_path / "d.npz", ds)
    save_npz(tmp_path / "cache" / "test.npz", ds)
    _small_idx_dir(tmp_path / "idx", n=3)
    batches = tmp_path / "batches"
    batches.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
        (batches / name).write_bytes(pickle.dumps(batch, protocol=2))

    assert len(load_path(tmp_path / "d.npz")) == 2
    assert len(load_path(str(tmp_path / "cache"), "test")) == 2
    assert load_path(tmp_path / "idx", "test").x.shape == (3, 28, 28, 1)
    assert load_path(batches, "train").x.shape == (10, 32, 32, 3)


def test_load_path_image_folders(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    for split, cls in (("train", "cat"), ("train", "dog"), ("test", "cat")):
        (tmp_path / "split" / split / cls).mkdir(parents=True)
        Image.new("L", (5, 5), 9).save(tmp_path / "split" / split / cls / "0.png")
    (tmp_path / "flat" / "x").mkdir(parents=True)
    Image.new("RGB", (5, 5)).save(tmp_path / "flat" / "x" / "0.jpg")
    tar = _jpeg_tar(tmp_path / "t.tar.gz", {"a": 1})

    assert load_path(tmp_path / "split", "train").label_names == ("cat", "dog")
    assert load_path(tmp_path / "split", "test").x.shape == (1, 5, 5, 1)
    assert load_path(tmp_path / "flat", "test", channels=1).x.shape == (1, 5, 5, 1)
    assert load_path(tar, "test").x.shape == (1, 32, 32, 3)


def test_load_path_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a.csv").write_text("1,2")
    ds = Dataset(np.zeros((2, 1, 1, 1), np.uint8), np.array([0, 3]), tuple("abcd"))
    save_npz(tmp_path / "d.npz", ds)

    with pytest.raises(DataError, match="data path not found"):
        load_path(tmp_path / "missing")
    with pytest.raises(DataError, match="cannot tell the data format"):
        load_path(tmp_path / "empty")
    with pytest.raises(DataError, match="cannot tell the data format"):
        load_path(tmp_path / "a.csv")
    with pytest.raises(DataError, match=r"label 3 at index 1 is outside \[0, 2\)"):
        load_path(tmp_path / "d.npz", num_classes=2)
