from __future__ import annotations

import numpy as np
import pytest

from edge_client.data import Dataset, Normalization, check_labels, normalize
from edge_client.errors import DataError, EdgeFLError


def _ds(n: int = 6, classes: int = 3) -> Dataset:
    x = np.arange(n * 2 * 2 * 1, dtype=np.uint8).reshape(n, 2, 2, 1)
    y = np.arange(n) % classes
    return Dataset(x, y, tuple(f"c{i}" for i in range(classes)))


def test_dataset_canonicalizes_and_reports_shape():
    ds = _ds()

    assert len(ds) == 6
    assert ds.num_classes == 3
    assert ds.sample_shape == (2, 2, 1)
    assert ds.y.dtype == np.int64
    assert ds.class_counts().tolist() == [2, 2, 2]
    assert "n=6" in repr(ds)


def test_subset_copies_selected_samples():
    ds = _ds()

    sub = ds.subset(np.array([4, 1]))

    assert len(sub) == 2
    assert sub.y.tolist() == [1, 1]
    np.testing.assert_array_equal(sub.x[0], ds.x[4])
    assert sub.label_names == ds.label_names


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((3, 2, 2, 1), np.uint8), np.zeros(2, np.int64), "3 images but 2 labels"),
        (np.zeros((0, 2, 2, 1), np.uint8), np.zeros(0, np.int64), "empty"),
        (np.zeros((2, 2, 2, 1), np.float32), np.zeros(2, np.int64), "uint8"),
        (np.zeros((2, 2, 2), np.uint8), np.zeros(2, np.int64), "(N, H, W, C)"),
        (np.zeros((2, 2, 2, 1), np.uint8), np.zeros(2, np.float32), "integers"),
        (np.zeros((2, 2, 2, 1), np.uint8), np.array([0, 5]), "label 5 at index 1"),
    ],
)
def test_dataset_rejects_bad_arrays(x, y, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Dataset(x, y, ("a", "b"))


def test_data_error_is_an_edgefl_error():
    assert issubclass(DataError, EdgeFLError)


def test_check_labels_names_the_bad_label():
    ds = _ds(n=6, classes=3)

    check_labels(ds, 3)
    with pytest.raises(DataError, match=r"label 2 at index 2 is outside \[0, 2\)"):
        check_labels(ds, 2)


def test_normalize_matches_formula_per_channel():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(10, 4, 4, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)

    out = normalize(x, scale=1 / 255, mean=mean, std=std, chunk_size=3)

    expected = (x.astype(np.float64) / 255 - np.array(mean)) / np.array(std)
    assert out.dtype == np.float32
    assert out.shape == x.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_normalize_defaults_scale_to_unit_range():
    x = np.array([[[[0]], [[255]]]], dtype=np.uint8)  # (1, 2, 1, 1)

    out = normalize(x)

    np.testing.assert_allclose(out.ravel(), [0.0, 1.0], atol=1e-7)


def test_normalize_rejects_wrong_channel_count_and_zero_std():
    x = np.zeros((2, 2, 2, 3), np.uint8)

    with pytest.raises(DataError, match="mean has 2 values but the images have 3 channels"):
        normalize(x, mean=(0.1, 0.2))
    with pytest.raises(DataError, match="std must not contain 0"):
        normalize(x, std=(0.0,))


def test_normalization_round_trips_through_dict():
    norm = Normalization(scale=1 / 255, mean=[0.2860], std=[0.3530])

    again = Normalization.from_dict(norm.to_dict())

    assert again == norm
    assert norm.to_dict() == {"scale": 1 / 255, "mean": [0.2860], "std": [0.3530]}
    assert Normalization.from_dict({}) == Normalization()
    x = np.full((1, 1, 1, 1), 255, np.uint8)
    np.testing.assert_allclose(norm(x).ravel(), [(1.0 - 0.2860) / 0.3530], rtol=1e-6)


def test_normalization_rejects_bad_dicts():
    with pytest.raises(DataError, match="unknown normalization key"):
        Normalization.from_dict({"scale": 1.0, "stdev": [1.0]})
    with pytest.raises(DataError, match="mean must be a number"):
        Normalization.from_dict({"mean": "abc"})
    with pytest.raises(DataError, match="scale must be a finite non-zero number"):
        Normalization(scale=0.0)
