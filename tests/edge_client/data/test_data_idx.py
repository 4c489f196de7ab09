from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from edge_client.data import load_idx, read_idx
from edge_client.data.idx import find_idx_files
from edge_client.errors import DataError


def write_idx(path: Path, arr: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``arr`` (uint8) as an IDX file; gzip it when the name ends in .gz."""
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + np.ascontiguousarray(arr, dtype=np.uint8).tobytes()
    gz = path.name.endswith(".gz") if compress is None else compress
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _pair(tmp_path: Path, n: int = 5, prefix: str = "train", suffix: str = ".gz"):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, 4, 3), dtype=np.uint8)
    y = (np.arange(n) % 3).astype(np.uint8)
    xi = write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{suffix}", x)
    yi = write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{suffix}", y)
    return x, y, xi, yi


@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip(tmp_path, suffix):
    x, y, xi, yi = _pair(tmp_path, suffix=suffix)

    ds = load_idx(xi, yi)

    assert ds.x.shape == (5, 4, 3, 1)
    np.testing.assert_array_equal(ds.x[..., 0], x)
    np.testing.assert_array_equal(ds.y, y)
    assert ds.label_names == ("0", "1", "2")
    assert ds.x.flags.writeable


def test_read_idx_handles_big_endian_types(tmp_path):
    arr = np.array([[1, -2], [300, 70000]], dtype=">i4")
    header = struct.pack(">BBBB", 0, 0, 0x0C, 2) + struct.pack(">2I", 2, 2)
    path = tmp_path / "ints.idx"
    path.write_bytes(header + arr.tobytes())

    out = read_idx(path)

    assert out.dtype == np.dtype("int32")
    assert out.tolist() == [[1, -2], [300, 70000]]


def test_find_idx_files_picks_split_and_prefers_gz(tmp_path):
    _pair(tmp_path, prefix="train")
    _pair(tmp_path, prefix="train", suffix="")
    _pair(tmp_path, prefix="t10k")

    train = find_idx_files(tmp_path, "train")
    test = find_idx_files(tmp_path, "test")

    assert train is not None and test is not None
    assert [p.name for p in train] == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    assert test[0].name.startswith("t10k-images")
    assert find_idx_files(tmp_path / "nope", "train") is None


def test_wrong_magic_is_rejected(tmp_path):
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))

    with pytest.raises(DataError, match="is not an IDX file"):
        read_idx(path)


def test_truncated_plain_file_is_rejected(tmp_path):
    _, _, xi, _ = _pair(tmp_path, suffix="")
    xi.write_bytes(xi.read_bytes()[:-7])

    with pytest.raises(DataError, match="truncated"):
        read_idx(xi)


def test_truncated_gzip_file_is_rejected(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, size=(50, 28, 28), dtype=np.uint8)
    path = write_idx(tmp_path / "train-images-idx3-ubyte.gz", x)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_truncated_header_and_huge_dims_are_rejected(tmp_path):
    short = tmp_path / "short-idx3-ubyte"
    short.write_bytes(struct.pack(">BBBB", 0, 0, 8, 3) + b"\x00\x00")
    huge = tmp_path / "huge-idx3-ubyte"
    huge.write_bytes(struct.pack(">BBBB", 0, 0, 8, 3) + struct.pack(">3I", 2**31, 28, 28))

    with pytest.raises(DataError, match="ends inside the IDX dimensions"):
        read_idx(short)
    with pytest.raises(DataError, match="header declares shape"):
        read_idx(huge)


def test_extra_trailing_bytes_are_rejected(tmp_path):
    _, _, xi, _ = _pair(tmp_path, suffix="")
    xi.write_bytes(xi.read_bytes() + b"\x00")

    with pytest.raises(DataError, match="more data than its header declares"):
        read_idx(xi)


def test_image_and_label_counts_must_match(tmp_path):
    _, _, xi, _ = _pair(tmp_path, n=5)
    yi = write_idx(tmp_path / "other-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))

    with pytest.raises(DataError, match="holds 5 images but .* holds 4 labels"):
        load_idx(xi, yi)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="IDX file not found"):
        read_idx(tmp_path / "missing.gz")
