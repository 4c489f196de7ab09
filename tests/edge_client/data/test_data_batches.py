from __future__ import annotations

import numpy as np
import pytest

from edge_client.data import iterate_batches, num_batches, padded_batches, train_batches
from edge_client.errors import DataError


def test_iterate_batches_in_order_keeps_short_last_batch():
    batches = list(iterate_batches(10, 4, shuffle=False))

    assert [b.tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert num_batches(10, 4) == 3


def test_iterate_batches_drop_remainder_and_shuffle_are_seeded():
    a = list(iterate_batches(10, 4, shuffle=True, rng=7, drop_remainder=True))
    b = list(
        iterate_batches(10, 4, shuffle=True, rng=np.random.default_rng(7), drop_remainder=True)
    )

    assert [len(x) for x in a] == [4, 4]
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert len(set(np.concatenate(a).tolist())) == 8
    assert num_batches(10, 4, drop_remainder=True) == 2


@pytest.mark.parametrize(("n", "batch_size"), [(100, 32), (96, 32), (5, 32), (33, 32)])
def test_train_batches_are_full_and_cover_every_sample(n, batch_size):
    batches = list(train_batches(n, batch_size, rng=0))

    assert all(len(b) == batch_size for b in batches)
    assert len(batches) == -(-n // batch_size)
    assert set(np.concatenate(batches).tolist()) == set(range(n))
    assert all(0 <= i < n for b in batches for i in b)


def test_train_batches_pad_from_other_samples_without_repeats_in_the_batch():
    batches = list(train_batches(100, 32, rng=1))

    last = batches[-1]
    assert len(set(last.tolist())) == 32  # padding drawn from samples not in the batch


def test_train_batches_are_deterministic_with_a_seed():
    a = np.concatenate(list(train_batches(50, 8, rng=3)))
    b = np.concatenate(list(train_batches(50, 8, rng=3)))
    c = np.concatenate(list(train_batches(50, 8, rng=4)))

    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_padded_batches_report_valid_rows():
    out = list(padded_batches(10, 4))

    assert [valid for _, valid in out] == [4, 4, 2]
    assert out[-1][0].tolist() == [8, 9, 9, 9]


def test_batches_reject_bad_sizes():
    with pytest.raises(DataError, match="batch_size must be at least 1"):
        list(iterate_batches(10, 0, shuffle=False))
    with pytest.raises(DataError, match="data set is empty"):
        list(train_batches(0, 32, rng=0))
