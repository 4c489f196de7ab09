from __future__ import annotations

import numpy as np
import pytest

from edge_client.data import Dataset, load_npz, save_npz
from edge_client.errors import DataError


def test_npz_round_trip_with_label_names(tmp_path):
    ds = Dataset(np.arange(24, dtype=np.uint8).reshape(2, 2, 2, 3), np.array([1, 0]), ("a", "b"))

    path = save_npz(tmp_path / "sub" / "d.npz", ds)
    again = load_npz(path)

    np.testing.assert_array_equal(again.x, ds.x)
    np.testing.assert_array_equal(again.y, ds.y)
    assert again.label_names == ("a", "b")
    assert not list((tmp_path / "sub").glob("*.tmp"))  # temp file renamed away


def test_npz_keras_style_keys_and_channel_axis(tmp_path):
    path = tmp_path / "mnist.npz"
    np.savez(
        path,
        x_train=np.zeros((3, 4, 4), np.uint8),
        y_train=np.array([0, 1, 2], np.uint8),
        x_test=np.ones((2, 4, 4), np.uint8),
        y_test=np.array([[1], [0]]),
    )

    train = load_npz(path, "train")
    test = load_npz(path, "test")

    assert train.x.shape == (3, 4, 4, 1)
    assert train.label_names == ("0", "1", "2")
    assert test.x.shape == (2, 4, 4, 1)
    assert test.y.tolist() == [1, 0]


def test_npz_float_pixels_in_unit_range_are_scaled(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, x=np.array([0.0, 0.5, 1.0], np.float32).reshape(1, 1, 3, 1), y=[0])

    ds = load_npz(path)

    assert ds.x.dtype == np.uint8
    assert ds.x.ravel().tolist() == [0, 128, 255]


def test_npz_float_pixels_outside_unit_range_are_refused(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, x=np.full((1, 2, 2), 200.0), y=[0])

    with pytest.raises(DataError, match=r"float pixels must lie in \[0, 1\]"):
        load_npz(path)


def test_empty_npz_names_the_expected_keys(tmp_path):
    path = tmp_path / "empty.npz"
    np.savez(path)

    with pytest.raises(DataError, match="keys: none.*'x' and 'y'"):
        load_npz(path)


def test_npz_with_zero_images_is_refused(tmp_path):
    path = tmp_path / "zero.npz"
    np.savez(path, x=np.zeros((0, 2, 2), np.uint8), y=np.zeros(0, np.int64))

    with pytest.raises(DataError, match="holds no images"):
        load_npz(path)


def test_npz_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.array([0]))

    with pytest.raises(DataError, match="no Python objects"):
        load_npz(path)


def test_npz_label_out_of_range_and_one_hot(tmp_path):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((2, 2, 2), np.uint8), y=[0, 3], label_names=["a", "b"])
    onehot = tmp_path / "onehot.npz"
    np.savez(onehot, x=np.zeros((2, 2, 2), np.uint8), y=np.eye(2))

    with pytest.raises(DataError, match="label 3 at index 1"):
        load_npz(bad)
    with pytest.raises(DataError, match="not one-hot"):
        load_npz(onehot)


def test_npz_missing_and_npy_files(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))

    with pytest.raises(DataError, match="not found"):
        load_npz(tmp_path / "missing.npz")
    with pytest.raises(DataError, match="single .npy array"):
        load_npz(tmp_path / "a.npy")
