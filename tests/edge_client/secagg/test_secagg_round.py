"""Whole secure-aggregation rounds in one process: dropouts at every stage, failures."""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.secagg import (
    GraphParameters,
    QuantConfig,
    SecAggError,
    Share,
    TooFewSurvivorsError,
    build_graph,
    dequantize_sum,
    quantize,
    to_signed,
)
from tests.fixtures.secagg_round import run_round

CFG = QuantConfig(n_devices=30, clip=1.0, scale=2.0**16, max_weight=100)


def _updates(n: int, length: int = 50, seed: int = 0) -> dict[str, tuple[np.ndarray, int]]:
    rng = np.random.default_rng(seed)
    return {
        f"dev{i:02d}": (rng.normal(0, 0.5, length), int(rng.integers(1, 101))) for i in range(n)
    }


def _check_sum(
    updates: dict[str, tuple[np.ndarray, int]], survivors: list[str], total: np.ndarray
) -> None:
    # exact: the unmasked ring sum is the plain sum of the survivors' quantized vectors
    plain = CFG.ring.zeros(total.shape[0])
    for n in survivors:
        plain += quantize(*updates[n], CFG)
    np.testing.assert_array_equal(total, plain)
    # within the stated bound of the float sum of weighted, clipped updates
    values, weight = dequantize_sum(total, CFG)
    expected = sum(w * np.clip(u, -CFG.clip, CFG.clip) for u, w in (updates[n] for n in survivors))
    assert weight == sum(updates[n][1] for n in survivors)
    assert np.max(np.abs(values - expected)) <= CFG.sum_error_bound(len(survivors))


def test_five_devices_complete_graph_recovers_dropouts_at_every_stage() -> None:
    updates = _updates(5)
    result = run_round(
        updates,
        CFG,
        GraphParameters(k=4, threshold=2),
        after_keys=["dev00"],
        after_shares=["dev01"],
        after_masked=["dev02"],
    )
    assert result.survivors == ["dev02", "dev03", "dev04"]  # dev02's vector counts
    _check_sum(updates, result.survivors, result.total)


def test_five_devices_no_dropout() -> None:
    updates = _updates(5, seed=1)
    result = run_round(updates, CFG, GraphParameters(k=4, threshold=3))
    assert len(result.survivors) == 5
    _check_sum(updates, result.survivors, result.total)


def test_thirty_devices_k_regular_graph_recovers_dropouts() -> None:
    updates = _updates(30, seed=2)
    params = GraphParameters(k=10, threshold=4)  # 6 dropouts leave every device >= 4 holders
    graph = build_graph(list(updates), b"public-round-seed", params)
    assert not graph.complete
    result = run_round(
        updates,
        CFG,
        params,
        after_keys=["dev03", "dev17"],
        after_shares=["dev05", "dev22"],
        after_masked=["dev08", "dev29"],
    )
    assert len(result.survivors) == 26
    _check_sum(updates, result.survivors, result.total)


def test_fewer_than_t_survivors_fail_clearly() -> None:
    with pytest.raises(TooFewSurvivorsError, match="are needed"):
        run_round(
            _updates(5),
            CFG,
            GraphParameters(k=4, threshold=3),
            after_shares=["dev01"],
            after_masked=["dev02", "dev03"],
        )


def test_a_masked_vector_does_not_correlate_with_its_update() -> None:
    updates = _updates(5, length=20_000, seed=3)
    result = run_round(updates, CFG, GraphParameters(k=4, threshold=3))
    for name, y in result.masked.items():
        x = to_signed(quantize(*updates[name], CFG), CFG.ring)[:-1].astype(np.float64)
        seen = to_signed(y, CFG.ring)[:-1].astype(np.float64)
        assert abs(np.corrcoef(x, seen)[0, 1]) < 0.05
        assert abs(np.corrcoef(x, y[:-1].astype(np.float64))[0, 1]) < 0.05


def test_garbage_shares_fail_clearly() -> None:
    def garbage(responder: str, owner: str, share: Share) -> Share:
        return Share(share.x, (share.y * 7 + 1) % 2**200) if responder == "dev04" else share

    with pytest.raises(SecAggError, match="garbage|inconsistent"):
        run_round(_updates(5), CFG, GraphParameters(k=4, threshold=3), tamper=garbage)


def test_garbage_key_share_of_a_dropped_device_fails_clearly() -> None:
    def garbage(responder: str, owner: str, share: Share) -> Share:
        return Share(share.x, share.y ^ 1) if owner == "dev01" else share

    # 3 holders of dev01's key share answer, t = 2: the extra share exposes the bad one
    with pytest.raises(SecAggError, match="inconsistent|garbage|does not match"):
        run_round(
            _updates(5),
            CFG,
            GraphParameters(k=4, threshold=2),
            after_shares=["dev01"],
            tamper=garbage,
        )


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros(10, dtype=np.uint32), "has shape"),
        (np.zeros(51, dtype=np.float32), "is not a vector of"),
        ([0] * 51, "is not a vector of"),
    ],
)
def test_a_malformed_masked_vector_fails_clearly(bad: object, message: str) -> None:
    with pytest.raises(SecAggError, match=f"the masked vector of dev02 {message}"):
        run_round(
            _updates(5),
            CFG,
            GraphParameters(k=4, threshold=3),
            replace_masked={"dev02": bad},  # type: ignore[dict-item]
        )
