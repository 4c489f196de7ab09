"""The pure pieces of buffered rounds (FedBuff): the staleness-weighted fold against
hand-computed arrays, the buffer's bounds and strategies, and the training slots (grant
numbers never repeat, not even after a restart)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from coordinator.aggregation import FedAvg
from coordinator.buffer import Buffer, Checked, Versions, device_limit
from coordinator.config import JobConfig
from coordinator.grants import Grants
from coordinator.influence import InfluenceBounds
from coordinator.late import stale_change, staleness_weight
from coordinator.robust_strategies import delta_norm
from coordinator.strategies import build_strategy
from edge_client.errors import ConfigError
from edge_client.protocol import DeviceMetrics, FoldedUpdate, encode_weights

W = {"w": np.array([1.0, 2.0], np.float32)}  # the current version V


def checked(device: str, grant: int, base: dict, trained: dict, s: int, samples: int) -> Checked:
    weight = staleness_weight(s)
    rebased = stale_change(W, base, trained, weight)
    return Checked(
        FoldedUpdate(device, grant, 5 - s, s, weight, samples, "a" * 64),
        rebased,
        delta_norm(rebased, W),
        DeviceMetrics(device, samples=samples),
        trained,
    )


def test_the_staleness_weight_is_a_polynomial_of_the_staleness_with_its_exponent():
    # Execute / Assert: (1 + s) ** -a; a = 0.5 (the default) is 1/sqrt(1 + s); fresh is 1
    assert staleness_weight(3) == pytest.approx(0.5)
    assert staleness_weight(3, 1.0) == pytest.approx(0.25)
    assert staleness_weight(8, 0.5) == pytest.approx(1 / 3)
    assert staleness_weight(5, 0.0) == 1.0
    assert staleness_weight(0, 2.0) == 1.0
    assert JobConfig().staleness_exponent == 0.5


def test_a_stale_change_goes_from_its_base_or_toward_its_trained_weights():
    # Prepare: today's weights [1, 2]; trained [5, 2] from an old base [3, 2]; weight 0.5
    base, trained = {"w": np.array([3.0, 2.0])}, {"w": np.array([5.0, 2.0])}
    # Execute
    from_base = stale_change(W, base, trained, 0.5)
    toward = stale_change(W, base, trained, 0.5, "toward-model")
    # Assert: FedBuff adds half the training's change (+2): [2, 2]; toward-model goes half
    # the way to the trained weights: [3, 2], never past them (weight <= 1)
    np.testing.assert_allclose(from_base["w"], [2.0, 2.0])
    np.testing.assert_allclose(toward["w"], [3.0, 2.0])
    assert JobConfig().stale_changes == "toward-model"  # the default since it was measured


def test_a_buffer_folds_staleness_weighted_changes_with_the_server_learning_rate():
    # Prepare: a fresh update (+[2, 0], 100 samples) and one 3 versions stale
    # (+[0, 4] from its own base, 300 samples, weight 1/sqrt(4) = 0.5)
    fresh = checked("a", 1, W, {"w": np.array([3.0, 2.0], np.float32)}, 0, 100)
    base = {"w": np.array([0.0, 0.0], np.float32)}
    stale = checked("b", 2, base, {"w": np.array([0.0, 4.0], np.float32)}, 3, 300)
    buffer = Buffer(W, FedAvg(), InfluenceBounds.off(), server_lr=0.5)
    # Execute
    buffer.add(fresh)
    buffer.add(stale)
    closed = buffer.close()
    # Assert: mean change (100 * [2, 0] + 300 * [0, 2]) / 400 = [0.5, 1.5]; half of it
    np.testing.assert_allclose(closed.weights["w"], [1.25, 2.75], rtol=1e-6)
    assert [(f.device, f.samples) for f in closed.folded] == [("a", 100), ("b", 300)]
    assert closed.rejections == []


def test_the_buffer_applies_the_weight_share_cap_and_rejects_an_outsized_change():
    # Prepare: 4 honest changes of ~1 and one 50x larger; one claims most of the samples
    updates = [
        checked(f"d{i}", 1, W, {"w": W["w"] + np.float32(1 + i / 10)}, 0, 100) for i in range(4)
    ]
    updates[0] = checked("d0", 1, W, {"w": W["w"] + np.float32(1)}, 0, 10_000)
    updates.append(checked("evil", 1, W, {"w": W["w"] + np.float32(50)}, 0, 100))
    buffer = Buffer(W, FedAvg(), InfluenceBounds(), server_lr=1.0)
    # Execute
    for u in updates:
        buffer.add(u)
    closed = buffer.close()
    # Assert
    assert [r.device for r in closed.rejections] == ["evil"]
    assert "outsized change" in closed.rejections[0].reason
    folded = {f.device: f.samples for f in closed.folded}
    assert set(folded) == {"d0", "d1", "d2", "d3"} and folded["d0"] < 10_000
    assert float(closed.weights["w"][0]) < 1 + 2  # the 50x change is not in it


def test_the_bounds_judge_a_devices_updates_of_one_buffer_together():
    # Prepare: "evil" has 3 updates in the buffer (grants 1-3), each a 20x change claiming
    # 10,000 samples; "a" and "b" one honest update each of 100 samples
    honest = [checked(d, 1, W, {"w": W["w"] + np.float32(1)}, 0, 100) for d in ("a", "b")]
    evil = [checked("evil", g, W, {"w": W["w"] + np.float32(20)}, 0, 10_000) for g in (1, 2, 3)]
    honest_big = [checked(d, 1, W, {"w": W["w"] + np.float32(1)}, 0, 100) for d in "abc"]
    many = [checked("evil", g, W, {"w": W["w"] + np.float32(1)}, 0, 10_000) for g in (1, 2)]
    # Execute
    outsized = Buffer(W, FedAvg(), InfluenceBounds(), server_lr=1.0)
    for u in [*honest, *evil]:
        outsized.add(u)
    judged = outsized.close()
    capped = Buffer(W, FedAvg(), InfluenceBounds(), server_lr=1.0)
    for u in [*honest_big, *many]:
        capped.add(u)
    shares = capped.close()
    # Assert: evil's changes are judged against a and b's (not its own other updates), and
    # its two updates share one device's cap: at most half of the buffer's weight
    assert sorted(r.device for r in judged.rejections) == ["evil"] * 3
    assert {f.device for f in judged.folded} == {"a", "b"}
    mine = sum(f.samples for f in shares.folded if f.device == "evil")
    assert mine <= 0.5 * sum(f.samples for f in shares.folded) + 1


@pytest.mark.parametrize(
    ("size", "share", "devices", "limit"),
    [(4, 0.5, 5, 2), (5, 0.5, 10, 2), (2, 0.5, 3, 1), (1, 0.5, 9, 1), (10, 0.3, 20, 3),
     (5, 0.5, 2, 3), (5, 0.5, 1, 5), (5, 0.0, 10, 5)],
)  # fmt: skip
def test_a_device_may_hold_its_share_of_a_buffer_unless_too_few_devices_could_fill_it(
    size, share, devices, limit
):
    assert device_limit(size, share, devices) == limit


def test_a_robust_strategy_and_dp_run_over_each_buffer():
    updates = [checked(f"d{i}", 1, W, {"w": W["w"] + np.float32(i)}, 0, 100) for i in range(5)]
    for strategy in ("median", "trimmed_mean"):
        buffer = Buffer(W, build_strategy(JobConfig(strategy=strategy)), None, server_lr=1.0)
        for u in updates:
            buffer.add(u)
        np.testing.assert_allclose(buffer.close().weights["w"], W["w"] + 2, rtol=1e-6)
    dp = build_strategy(JobConfig(dp_clip=0.5))
    buffer = Buffer(W, dp, None, server_lr=1.0)
    for u in updates:
        buffer.add(u)
    change = buffer.close().weights["w"] - W["w"]
    assert float(np.linalg.norm(change)) <= 0.5 + 1e-6  # each change clipped to 0.5


def test_versions_keep_what_boards_decoded_on_disk_for_a_restart(tmp_path):
    weights = {"w": np.array([0.1, 0.2, 0.3], np.float32)}
    versions = Versions(tmp_path / "versions", keep=2)
    for r in (1, 2, 3):
        payload = encode_weights(
            weights, kind="global", job="j", round=r, sender="coordinator", encoding="int8"
        )
        versions.add(r, payload)
    again = Versions(tmp_path / "versions", keep=2)  # a restarted coordinator
    assert again.get(1) is None and again.get(3) is not None
    v3 = again.get(3)
    assert v3 is not None and v3.weights["w"].dtype == np.float32
    assert not np.array_equal(v3.weights["w"], weights["w"])  # int8-decoded, as boards see it
    assert sorted(p.name for p in (tmp_path / "versions").iterdir()) == [
        "global-000002.bin",
        "global-000003.bin",
    ]


def test_grants_fill_up_to_the_bound_and_never_repeat_a_number_after_a_restart(tmp_path):
    # Prepare
    path = tmp_path / "grants.json"
    grants = Grants(path, max_concurrency=2, timeout_s=60, seed=1)
    # Execute: two slots for four candidates; one answers and is granted again
    first = grants.fill(["a", "b", "c", "d"], version=1, now=0.0)
    done = first[0]
    assert grants.release(done, 1) and not grants.release(done, 1)
    second = grants.fill(["a", "b", "c", "d"], version=1, in_buffer={done: 1}, now=1.0)
    grants.save()
    restarted = Grants(path, max_concurrency=2, timeout_s=60, seed=1)
    restarted.release(first[1])
    third = restarted.fill([first[1]], version=2)
    # Assert: the bound holds, a device with an update in the buffer waits its turn, and a
    # restarted coordinator continues every device's numbers
    assert len(first) == 2 and len(second) == 1 and second[0] not in first
    assert restarted.slots[third[0]].grant == 2 and restarted.issued(first[1], 2)
    assert not restarted.issued(first[1], 3) and not restarted.issued("zz", 1)
    assert grants.expired(now=100.0) == sorted(grants.slots)
    assert json.loads(path.read_text())["counters"][first[1]] == 1


def test_grants_bench_a_failed_device_until_the_next_version(tmp_path):
    grants = Grants(tmp_path / "g.json", max_concurrency=0, timeout_s=60)
    grants.bench("a", until_version=4)
    assert grants.fill(["a", "b"], version=3) == ["b"]
    assert grants.fill(["a", "b"], version=4) == ["a"]


def test_an_unreadable_grants_file_stops_a_resume_with_one_line(tmp_path):
    (tmp_path / "grants.json").write_text("{not json")
    with pytest.raises(ConfigError, match="grant numbers must never repeat"):
        Grants(tmp_path / "grants.json", max_concurrency=0, timeout_s=1)
