from __future__ import annotations

import numpy as np
import pytest

from edge_client.data import PartitionScheme, label_histogram, parse_scheme, partition
from edge_client.errors import DataError

SCHEMES = ["iid", "dirichlet:0.5", "shards:2", "sequential"]


def _labels(per_class: int = 600, classes: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("n", [6000, 6007])
def test_partition_is_disjoint_and_covering(scheme, n):
    y = _labels()[:n] if n <= 6000 else np.concatenate([_labels(), np.arange(7) % 10])

    parts = partition(y, 5, scheme, seed=1)

    joined = np.concatenate(parts)
    assert len(parts) == 5
    assert len(joined) == len(y) == len(np.unique(joined))
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_partition_is_deterministic_with_a_seed(scheme):
    y = _labels()

    a = partition(y, 4, scheme, seed=3)
    b = partition(y, 4, scheme, seed=3)
    c = partition(y, 4, scheme, seed=4)

    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    if scheme != "sequential":
        assert not all(np.array_equal(p, q) for p, q in zip(a, c, strict=True))


def test_iid_and_sequential_sizes():
    y = _labels()

    iid = partition(y, 7, "iid")
    seq = partition(y, 5, "sequential")

    assert {len(p) for p in iid} == {857, 858}
    assert [len(p) for p in seq] == [1200] * 5
    assert seq[1].tolist() == list(range(1200, 2400))


def _dominant_share(y: np.ndarray, parts: list[np.ndarray]) -> float:
    hist = label_histogram(y, parts, 10)
    return float(np.mean(hist.max(axis=1) / hist.sum(axis=1)))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    y = _labels()

    skewed = partition(y, 10, "dirichlet:0.1", seed=0)
    mild = partition(y, 10, "dirichlet:1000", seed=0)

    assert _dominant_share(y, skewed) > 0.4
    assert _dominant_share(y, mild) < 0.15
    assert min(len(p) for p in skewed) >= 10


def test_dirichlet_gives_up_with_a_clear_error():
    y = np.repeat(np.arange(2), 10)

    with pytest.raises(DataError, match=r"larger ALPHA or fewer devices"):
        partition(y, 10, "dirichlet:0.001", min_samples=2)


def test_shards_give_at_most_k_labels_per_device():
    y = _labels()  # 10 classes x 600: 10 shards of 600 align with the classes

    parts = partition(y, 5, "shards:2", seed=0)
    hist = label_histogram(y, parts, 10)

    assert all(np.count_nonzero(row) <= 2 for row in hist)
    assert all(len(p) == 1200 for p in parts)


def test_shards_unaligned_are_dominated_by_k_labels():
    y = _labels(per_class=523)

    parts = partition(y, 20, "shards:2", seed=0)
    hist = label_histogram(y, parts, 10)

    top2 = np.sort(hist, axis=1)[:, -2:].sum(axis=1) / hist.sum(axis=1)
    assert np.all(np.count_nonzero(hist, axis=1) <= 4)
    assert np.mean(top2) > 0.9


def test_parse_scheme_accepts_and_formats():
    assert parse_scheme("iid") == PartitionScheme("iid")
    assert parse_scheme(" Dirichlet:0.5 ") == PartitionScheme("dirichlet", alpha=0.5)
    assert parse_scheme("shards:2") == PartitionScheme("shards", shards=2)
    assert str(parse_scheme("dirichlet:0.50")) == "dirichlet:0.5"
    assert str(parse_scheme("sequential")) == "sequential"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo", "unknown partition 'foo': use iid, dirichlet:ALPHA, shards:K or sequential"),
        ("dirichlet", "needs a number"),
        ("dirichlet:-1", "ALPHA must be a positive number"),
        ("shards:x", "needs an integer"),
        ("shards:0", "K must be at least 1"),
        ("iid:3", "takes no argument"),
    ],
)
def test_parse_scheme_errors(text, message):
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        parse_scheme(text)


def test_partition_rejects_too_many_devices_and_bad_labels():
    with pytest.raises(DataError, match="cannot split 3 samples across 5 devices"):
        partition(np.arange(3), 5, "iid")
    with pytest.raises(DataError, match="needs 8 shards"):
        partition(np.arange(6), 4, "shards:2")
    with pytest.raises(DataError, match="1-D integer array"):
        partition(np.zeros((2, 2)), 1, "iid")
