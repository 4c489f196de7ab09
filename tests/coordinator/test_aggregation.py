"""Aggregation strategies against hand-computed arrays."""

from __future__ import annotations

import numpy as np
import pytest

from coordinator.aggregation import (
    FedAvg,
    FedAvgM,
    WeightedSum,
    server_momentum_step,
    weighted_average,
)
from coordinator.strategies import make_strategy
from edge_client.errors import ConfigError


def test_fedavg_weights_by_sample_count():
    # Prepare: 1 sample of [0, 2] and 3 samples of [4, 6] -> (0 + 12)/4 = 3, (2 + 18)/4 = 5
    a = {"w": np.array([0.0, 2.0], np.float32)}
    b = {"w": np.array([4.0, 6.0], np.float32)}
    # Execute
    avg = weighted_average([(a, 1), (b, 3)])
    # Assert
    np.testing.assert_array_equal(avg["w"], np.array([3.0, 5.0], np.float32))
    assert avg["w"].dtype == np.float32


def test_streaming_sum_is_order_independent_and_exact():
    rng = np.random.default_rng(0)
    updates = [
        ({"k": rng.normal(size=(3, 4)).astype(np.float32)}, int(n))
        for n in rng.integers(1, 1000, 20)
    ]
    forward = weighted_average(updates)["k"]
    backward = weighted_average(updates[::-1])["k"]
    expected = sum(w["k"].astype(np.float64) * n for w, n in updates) / sum(n for _, n in updates)
    np.testing.assert_allclose(forward, expected, rtol=1e-6)
    np.testing.assert_allclose(backward, forward, rtol=1e-6)


def test_streaming_memory_is_one_model_not_one_per_device():
    acc = WeightedSum()
    for _ in range(50):
        acc.add({"k": np.ones((100, 100), np.float32)}, 10)
    assert len(acc.sums) == 1 and acc.sums["k"].shape == (100, 100)
    assert acc.count == 50 and acc.total == 500


def test_fedavgm_hand_computed():
    # w = 1, avg = 0.5 -> delta 0.5; v = 0.5; w' = 1 - 1.0 * 0.5 = 0.5
    # next: w = 0.5, avg = 0.25 -> delta 0.25; v = 0.9 * 0.5 + 0.25 = 0.7; w' = 0.5 - 0.7 = -0.2
    w, v = server_momentum_step({"x": np.array([1.0])}, {"x": np.array([0.5])}, None, 1.0, 0.9)
    np.testing.assert_allclose(w["x"], [0.5])
    w, v = server_momentum_step(w, {"x": np.array([0.25])}, v, 1.0, 0.9)
    np.testing.assert_allclose(v["x"], [0.7], rtol=1e-6)
    np.testing.assert_allclose(w["x"], [-0.2], rtol=1e-6)


def test_fedavgm_strategy_keeps_velocity_across_rounds_and_checkpoints():
    s = FedAvgM(server_lr=1.0, momentum=0.9)
    s.begin({"x": np.array([1.0], np.float32)})
    s.accept({"x": np.array([0.5], np.float32)}, 10)
    w = s.finish()
    restored = FedAvgM(1.0, 0.9)
    restored.load_state(s.state())
    for strat in (s, restored):
        strat.begin(w)
        strat.accept({"x": np.array([0.25], np.float32)}, 10)
    np.testing.assert_allclose(s.finish()["x"], restored.finish()["x"])


def test_fedavg_strategy_and_errors():
    s = make_strategy("fedavg")
    assert isinstance(s, FedAvg)
    s.begin({})
    with pytest.raises(ValueError, match="no updates"):
        s.finish()
    with pytest.raises(ValueError, match="positive sample count"):
        s.accept({"x": np.zeros(1)}, 0)
    with pytest.raises(ConfigError, match="unknown strategy 'fedsgd'"):
        make_strategy("fedsgd")
