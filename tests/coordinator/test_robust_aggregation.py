"""Robust aggregation, clipping and DP-FedAvg against hand-computed arrays."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from coordinator import robust
from coordinator.aggregation import FedAvg, FedAvgM
from coordinator.config import JobConfig
from coordinator.robust_strategies import (
    DeltaBuffer,
    DPFedAvg,
    Krum,
    Median,
    NormClipping,
    TrimmedMean,
)
from coordinator.strategies import build_strategy
from edge_client.errors import ConfigError


def rows(*values) -> np.ndarray:  # noqa: ANN002
    return np.array(values, np.float32)


# -- pure functions ------------------------------------------------------------------------


def test_coordinate_median_odd_and_even():
    # columns (1, 2, 100) -> 2 and (10, 20, -5) -> 10; (1, 2, 3, 100) -> (2 + 3) / 2
    np.testing.assert_array_equal(
        robust.coordinate_median(rows([1, 10], [2, 20], [100, -5])), [2, 10]
    )
    np.testing.assert_array_equal(robust.coordinate_median(rows([1], [2], [3], [100])), [2.5])


def test_trimmed_mean_drops_k_at_each_end():
    x = rows([1], [2], [3], [4], [-50])
    # ratio 0.2 of 5 -> k = 1: sorted -50 1 2 3 4 -> mean(1, 2, 3) = 2
    np.testing.assert_array_equal(robust.trimmed_mean(x, 0.2), [2.0])
    # ratio 0.1 of 5 -> k = 0: the plain mean (1 + 2 + 3 + 4 - 50) / 5 = -8
    np.testing.assert_array_equal(robust.trimmed_mean(x, 0.1), [-8.0])
    # 4 values at 0.25 -> k = 1: mean(2, 3) = 2.5
    np.testing.assert_array_equal(robust.trimmed_mean(rows([1], [2], [3], [100]), 0.25), [2.5])
    assert robust.trim_count(3, 0.49) == 1  # at least one value is kept
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        robust.trim_count(10, 0.5)


def test_pairwise_squared_distances():
    d = robust.pairwise_sq_distances(rows([0, 0], [3, 4], [6, 8]))
    np.testing.assert_allclose(d, [[0, 25, 100], [25, 0, 25], [100, 25, 0]])


def test_krum_scores_and_selection_by_hand():
    # n = 5, f = 1 -> each score sums the n - f - 2 = 2 nearest squared distances
    x = rows([0], [1], [2], [3], [100])
    # 0: 1 + 4 = 5; 1: 1 + 1 = 2; 2: 1 + 1 = 2; 3: 1 + 4 = 5; 100: 97^2 + 98^2 = 19013
    np.testing.assert_allclose(robust.krum_scores(x, 1), [5, 2, 2, 5, 19013])
    np.testing.assert_array_equal(robust.krum(x, 1), [1.0])  # tie 1/2: the lower index
    # Multi-Krum: m = n - f = 4 best -> rows 1, 2, 0, 3 -> mean 1.5
    np.testing.assert_array_equal(robust.multi_krum_select(x, 1), [1, 2, 0, 3])
    np.testing.assert_array_equal(robust.multi_krum(x, 1), [1.5])
    np.testing.assert_array_equal(robust.multi_krum(x, 1, m=2), [1.5])  # rows 1 and 2


def test_krum_with_too_few_updates_still_answers():
    assert robust.krum_neighbours(3, 2) == 1
    np.testing.assert_array_equal(robust.krum(rows([7, 7]), 2), [7, 7])
    np.testing.assert_array_equal(robust.krum(rows([0], [10]), 1), [0])


def test_clip_by_norm():
    clipped, norm = robust.clip_by_norm(np.array([3.0, 4.0], np.float32), 1.0)
    np.testing.assert_allclose(clipped, [0.6, 0.8], rtol=1e-6)
    assert norm == 5.0 and clipped.dtype == np.float32
    same, _ = robust.clip_by_norm(np.array([0.3, 0.4]), 1.0)
    np.testing.assert_array_equal(same, [0.3, 0.4])


def test_block_wise_reduction_and_row_lists_match_the_whole_matrix():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 1000)).astype(np.float32)
    listed = list(x)
    np.testing.assert_allclose(robust.coordinate_median(x, block=3), np.median(x, axis=0))
    np.testing.assert_allclose(
        robust.trimmed_mean(listed, 0.3, block=17), robust.trimmed_mean(x, 0.3), rtol=1e-6
    )
    np.testing.assert_allclose(
        robust.pairwise_sq_distances(listed, block=10),
        robust.pairwise_sq_distances(x),
        rtol=1e-9,
    )


# -- strategies ----------------------------------------------------------------------------

G = {"w": np.array([1.0, 1.0], np.float32)}


def aggregate(strategy, updates) -> np.ndarray:  # noqa: ANN001
    strategy.begin(G)
    for w, n in updates:
        strategy.accept({"w": np.array(w, np.float32)}, n)
    return strategy.finish()["w"]


def test_median_strategy_moves_by_the_median_change_one_vote_per_device():
    # changes (1, 0), (2, 4), (99, -101) -> median (2, 0); a huge sample count changes nothing
    new = aggregate(Median(), [([2, 1], 1), ([3, 5], 1), ([100, -100], 10**6)])
    np.testing.assert_array_equal(new, [3.0, 1.0])


def test_trimmed_mean_and_krum_strategies():
    updates = [([1 + v, 1], 1) for v in (0, 1, 2, 3, 100)]
    np.testing.assert_array_equal(aggregate(TrimmedMean(0.2), updates), [3.0, 1.0])
    np.testing.assert_array_equal(aggregate(Krum(1), updates), [2.0, 1.0])
    np.testing.assert_array_equal(aggregate(Krum(1, multi=True), updates), [2.5, 1.0])


def test_krum_warns_when_there_are_too_few_updates_for_its_guarantee(caplog):
    caplog.set_level(logging.WARNING)
    aggregate(Krum(2), [([1, 1], 1), ([2, 2], 1)])
    assert "needs at least 7 updates" in caplog.text


def test_robust_strategies_keep_float32_deltas_one_per_device():
    buffer = DeltaBuffer()
    buffer.begin({"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.float32)})
    for v in range(3):
        buffer.add({"a": np.full((2, 3), v, np.float32), "b": np.full(4, v, np.float32)})
    assert len(buffer.rows) == 3 and all(
        r.dtype == np.float32 and r.shape == (10,) for r in buffer.rows
    )
    np.testing.assert_array_equal(buffer.rows[2][6:], [1, 1, 1, 1])  # b: 2 - 1
    new = buffer.apply(np.arange(10, dtype=np.float32))
    assert new["a"].shape == (2, 3) and new["b"].tolist() == [7, 8, 9, 10]
    empty = Median()
    empty.begin(G)
    with pytest.raises(ValueError, match="no updates"):
        empty.finish()


def test_norm_clipping_wraps_fedavg_streaming():
    # changes (2, 3) [norm 3.6 -> (0.555, 0.832)] and (0, 0.5) [kept]; FedAvg, equal samples
    s = NormClipping(FedAvg(), 1.0)
    new = aggregate(s, [([3, 4], 1), ([1, 1.5], 1)])
    a = np.array([2.0, 3.0]) / np.sqrt(13)
    np.testing.assert_allclose(new, 1 + (a + [0, 0.5]) / 2, rtol=1e-6)
    assert s.clipped == 1 and s.name == "fedavg+clip"


def test_norm_clipping_passes_server_state_through():
    s = NormClipping(FedAvgM(1.0, 0.9), 10.0)
    aggregate(s, [([0.5, 0.5], 1)])
    assert set(s.state()) == {"velocity/w"}


def test_dp_fedavg_clips_averages_equally_and_adds_scaled_noise():
    # no noise: clipped changes (0.6, 0.8) and (0, 0.5), equal weights despite samples
    dp = DPFedAvg(1.0, 0.0)
    new = aggregate(dp, [([1.6, 1.8], 1), ([1, 1.5], 1000)])
    np.testing.assert_allclose(new, [1.3, 1.65], rtol=1e-6)
    # noise std = multiplier * clip / n = 2 * 1 / 4 = 0.5
    dp = DPFedAvg(1.0, 2.0, rng=np.random.default_rng(0))
    big = {"w": np.zeros(20_000, np.float32)}
    dp.begin(big)
    for _ in range(4):
        dp.accept(big, 1)
    out = dp.finish()["w"]
    assert dp.last_sigma == 0.5
    assert abs(float(out.std()) - 0.5) < 0.01 and abs(float(out.mean())) < 0.01


def test_build_strategy_from_the_job_options():
    assert build_strategy(JobConfig(strategy="median")).name == "median"
    assert build_strategy(JobConfig(strategy="trimmed_mean", trim_ratio=0.3)).trim_ratio == 0.3
    krum = build_strategy(JobConfig(strategy="multi_krum", krum_byzantine=3))
    assert krum.name == "multi_krum" and krum.byzantine == 3
    assert build_strategy(JobConfig(clip_norm=2.0)).name == "fedavg+clip"
    assert build_strategy(JobConfig(strategy="krum", clip_norm=2.0)).name == "krum+clip"
    assert build_strategy(JobConfig(dp_clip=1.0, dp_noise_multiplier=1.1)).name == "dp-fedavg"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"strategy": "bulyan"}, "unknown strategy 'bulyan'"),
        ({"trim_ratio": 0.5}, r"trim_ratio must be in \[0, 0.5\)"),
        ({"krum_byzantine": -1}, "krum_byzantine must be >= 0"),
        ({"clip_norm": -1.0}, "clip_norm must be >= 0"),
        ({"max_update_norm": -1.0}, "max_update_norm must be >= 0"),
        ({"dp_noise_multiplier": 1.0}, "needs dp_clip > 0"),
        ({"dp_clip": 1.0, "strategy": "median"}, "use strategy fedavg"),
        ({"dp_clip": 1.0, "clip_norm": 1.0}, "either clip_norm or dp_clip"),
    ],
)
def test_invalid_robustness_options_are_config_errors(changes, message):
    with pytest.raises(ConfigError, match=message):
        JobConfig(**changes)


def test_robustness_options_follow_flag_env_file_precedence(tmp_path):
    from coordinator.config import resolve

    job_file = tmp_path / "job.toml"
    job_file.write_text(
        '[aggregation]\nstrategy = "trimmed_mean"\ntrim_ratio = 0.3\nclip_norm = 5.0\n'
    )
    env = {"EDGEFL_TRIM_RATIO": "0.2", "EDGEFL_MAX_UPDATE_NORM": "50"}
    cfg = resolve({"clip_norm": 1.5}, str(job_file), env)
    assert (cfg.strategy, cfg.trim_ratio, cfg.clip_norm, cfg.max_update_norm) == (
        "trimmed_mean",
        0.2,
        1.5,
        50.0,
    )


def test_fedcoord_start_documents_the_robustness_options():
    from click.testing import CliRunner

    from coordinator.cli import main

    text = CliRunner().invoke(main, ["start", "--help"]).output
    for flag in ("--max-update-norm", "--clip-norm", "--trim-ratio", "--krum-byzantine",
                 "--dp-clip", "--dp-noise-multiplier", "--signing-key", "multi_krum"):  # fmt: skip
        assert flag in text
