from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from edge_client.data import load_cifar_batches
from edge_client.errors import DataError


def write_cifar_batches(root: Path, per_batch: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Official CIFAR-10 python layout, pickled with bytes keys like the originals."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data}
        with (root / name).open("wb") as f:
            pickle.dump(batch, f, protocol=2)
        xs.append(data)
        ys.append(labels)
    meta = {b"label_names": [n.encode() for n in "abcdefghij"]}
    with (root / "batches.meta").open("wb") as f:
        pickle.dump(meta, f, protocol=2)
    return np.concatenate(xs), np.concatenate(ys)


def test_cifar_batches_round_trip(tmp_path):
    data, labels = write_cifar_batches(tmp_path / "cifar-10-batches-py")

    train = load_cifar_batches(tmp_path, "train")  # parent dir is accepted too
    test = load_cifar_batches(tmp_path / "cifar-10-batches-py", "test")

    assert train.x.shape == (15, 32, 32, 3)
    assert test.x.shape == (3, 32, 32, 3)
    assert train.label_names == tuple("abcdefghij")
    np.testing.assert_array_equal(train.y, labels[:15])
    # row layout: 1024 red, 1024 green, 1024 blue values, each plane row-major
    assert train.x[0, 0, 1, 0] == data[0, 1]
    assert train.x[0, 1, 0, 1] == data[0, 1024 + 32]
    assert test.x[2, 31, 31, 2] == data[17, 3071]


def test_cifar_batch_with_code_is_refused(tmp_path):
    write_cifar_batches(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))

    with pytest.raises(DataError, match="refusing to load global"):
        load_cifar_batches(tmp_path, "test")
    assert not marker.exists()


def test_cifar_batches_missing_files(tmp_path):
    write_cifar_batches(tmp_path)
    (tmp_path / "data_batch_3").unlink()

    with pytest.raises(DataError, match="missing CIFAR-10 batch file.*data_batch_3"):
        load_cifar_batches(tmp_path, "train")
    with pytest.raises(DataError, match="not a CIFAR-10 python batches directory"):
        load_cifar_batches(tmp_path / "nowhere", "train")
