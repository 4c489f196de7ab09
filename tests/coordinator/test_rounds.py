"""Update validation: every bad update is rejected with a reason, good ones are folded in."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.aggregation import FedAvg
from coordinator.rounds import RoundCollector
from edge_client.protocol import (
    UpdateDeduper,
    decode,
    encode_failure,
    encode_weights,
    weights_sha256,
)

SHAPES = {"k": (2, 3), "b": (3,)}
GLOBAL = {"k": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}
BASE = weights_sha256(GLOBAL)


def collector(selected=("a", "b", "c")) -> RoundCollector:
    s = FedAvg()
    s.begin(GLOBAL)
    return RoundCollector("job", 4, frozenset(selected), BASE, SHAPES, s, UpdateDeduper())


def update(sender="a", round_=4, value=1.0, samples=10, job="job", base=BASE, weights=None, **meta):
    w = (
        weights
        if weights is not None
        else {k: np.full(v, value, np.float32) for k, v in SHAPES.items()}
    )
    payload = encode_weights(
        w,
        kind="update",
        job=job,
        round=round_,
        sender=sender,
        samples=samples,
        meta={"base_sha256": base, "loss": 0.5, "accuracy": 0.8, **meta},
    )
    return decode(payload), len(payload)


def test_good_updates_are_averaged():
    c = collector()
    for sender, value, n in (("a", 1.0, 10), ("b", 4.0, 30)):
        env, size = update(sender, value=value, samples=n)
        assert c.offer(env, sender, size)
    avg = c.strategy.finish()
    np.testing.assert_allclose(avg["k"], np.full((2, 3), 3.25))
    assert c.results["a"].accuracy == 0.8 and c.bytes_up > 0
    assert not c.complete()


@pytest.mark.parametrize(
    ("make", "device", "reason"),
    [
        (lambda: update(job="other"), "a", "job 'other'"),
        (lambda: update(round_=3), "a", "round 3, the open round is 4"),
        (lambda: update(sender="z"), "z", "not selected"),
        (lambda: update(sender="a"), "b", "differs from topic device"),
        (lambda: update(base="0" * 64), "a", "base_sha256 mismatch"),
        (lambda: update(samples=0), "a", "implausible sample count"),
        (lambda: update(weights={"k": np.zeros((2, 3), np.float32)}), "a", r"missing \['b'\]"),
        (
            lambda: update(
                weights={"k": np.zeros((3, 2), np.float32), "b": np.zeros(3, np.float32)}
            ),
            "a",
            "has shape",
        ),
        (
            lambda: update(
                weights={"k": np.full((2, 3), np.nan, np.float32), "b": np.zeros(3, np.float32)}
            ),
            "a",
            "NaN or Inf",
        ),
        (
            lambda: update(
                weights={"k": np.full((2, 3), np.inf, np.float32), "b": np.zeros(3, np.float32)}
            ),
            "a",
            "NaN or Inf",
        ),
    ],
)
def test_bad_updates_are_rejected_with_a_reason(make, device, reason):
    c = collector()
    env, size = make()
    assert not c.offer(env, device, size)
    assert c.strategy._sum.count == 0  # nothing reached the aggregate
    assert any(__import__("re").search(reason, r) for r in c.rejected.values()), c.rejected


def test_duplicates_are_ignored_and_a_second_different_update_rejected():
    c = collector()
    env, size = update("a", value=1.0)
    assert c.offer(env, "a", size)
    assert not c.offer(env, "a", size)  # QoS 1 duplicate: silently ignored
    assert "a" not in c.rejected
    other, size = update("a", value=2.0)
    assert not c.offer(other, "a", size)
    assert "second, different update" in c.rejected["a"]
    assert c.strategy._sum.count == 1


def test_failures_count_as_replies_not_results():
    c = collector(("a",))
    env = decode(encode_failure("job", 4, "a", "labels out of range"))
    assert c.offer(env, "a", 100)
    assert c.complete() and c.accepted == []
    assert c.results["a"].failed == "labels out of range"
