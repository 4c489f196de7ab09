"""Quantization, PRG, keys and AEAD, Shamir sharing and the graph, each on its own."""

from __future__ import annotations

import itertools
import secrets

import numpy as np
import pytest

from edge_client.errors import ConfigError
from edge_client.secagg import (
    GraphParameters,
    KeyPair,
    QuantConfig,
    Ring,
    RoundContext,
    SecAggError,
    Share,
    TooFewSurvivorsError,
    build_graph,
    choose_parameters,
    decrypt_share,
    dequantize_mean,
    dequantize_sum,
    encrypt_share,
    mask,
    pairwise_seed,
    quantize,
    reconstruct,
    share_key,
    split,
)
from edge_client.secagg.shamir import SHARE_BYTES

CTX = RoundContext("job", "run", 1)


# --- quantize -----------------------------------------------------------------------------


def test_ring_is_the_smallest_that_cannot_overflow() -> None:
    assert QuantConfig(n_devices=10, clip=1.0, scale=2.0**20).ring.bits == 32
    assert QuantConfig(n_devices=10_000, clip=1.0, scale=2.0**20).ring.bits == 64
    # the boundary: n * Q must stay <= 2^31 - 1 for a 32-bit ring
    assert QuantConfig(n_devices=1, clip=1.0, scale=2.0**31 - 1).ring.bits == 32
    assert QuantConfig(n_devices=1, clip=1.0, scale=2.0**31).ring.bits == 64
    with pytest.raises(ConfigError, match="overflow a 64-bit ring"):
        QuantConfig(n_devices=10**6, clip=100.0, scale=2.0**60)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_extreme_sum_does_not_wrap(sign: float) -> None:
    cfg = QuantConfig(n_devices=16, clip=1.0, scale=2.0**26)  # 16 * 2^26 = 2^30: 32 bits
    assert cfg.ring.bits == 32
    total = cfg.ring.zeros(4)
    for _ in range(16):
        total += quantize(np.full(3, 5.0 * sign), 1, cfg)  # clipped to +-1
    values, weight = dequantize_sum(total, cfg)
    np.testing.assert_array_equal(values, np.full(3, 16.0 * sign))
    assert weight == 16


def test_dequantized_sum_is_within_the_stated_bound() -> None:
    rng = np.random.default_rng(0)
    cfg = QuantConfig(n_devices=50, clip=0.5, scale=1000.0, max_weight=20)
    updates = [(rng.uniform(-1, 1, 1000), int(rng.integers(0, 21))) for _ in range(50)]
    total = cfg.ring.zeros(1001)
    for u, w in updates:
        total += quantize(u, w, cfg)
    values, weight = dequantize_sum(total, cfg)
    expected = sum(w * np.clip(u, -0.5, 0.5) for u, w in updates)
    err = np.max(np.abs(values - expected))
    assert err <= cfg.sum_error_bound(50)
    assert err > cfg.sum_error_bound(50) / 20  # the bound is not vacuous at this scale
    assert weight == sum(w for _, w in updates)
    np.testing.assert_allclose(
        dequantize_mean(total, cfg), expected / weight, atol=50 / 2000 / weight
    )


def test_quantize_rejects_bad_input() -> None:
    cfg = QuantConfig(n_devices=2, clip=1.0, scale=10.0, max_weight=5)
    with pytest.raises(ConfigError, match="NaN"):
        quantize(np.array([np.nan]), 1, cfg)
    with pytest.raises(ConfigError, match="weight 6"):
        quantize(np.zeros(2), 6, cfg)
    with pytest.raises(ConfigError, match="scale"):
        QuantConfig(n_devices=2, clip=1.0, scale=0.0)


# --- prg ----------------------------------------------------------------------------------


def test_prg_is_the_chacha20_keystream() -> None:
    # RFC 8439 A.1 test vector #1: all-zero key and nonce, block counter 0
    assert mask(bytes(32), 2, Ring(32)).tolist() == [0xADE0B876, 0x903DF1A0]
    assert mask(bytes(32), 1, Ring(64)).tolist() == [0x903DF1A0ADE0B876]


def test_prg_is_deterministic_and_uniform_looking() -> None:
    seed = secrets.token_bytes(32)
    a = mask(seed, 100_000, Ring(32))
    np.testing.assert_array_equal(a, mask(seed, 100_000, Ring(32)))
    assert not np.array_equal(a, mask(secrets.token_bytes(32), 100_000, Ring(32)))
    assert abs(a.astype(np.float64).mean() / 2**32 - 0.5) < 0.01


# --- keys ---------------------------------------------------------------------------------


def test_both_ends_derive_the_same_pairwise_seed_bound_to_the_round() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    s_ab = pairwise_seed(a, b.public, CTX, "A", "B")
    assert s_ab == pairwise_seed(b, a.public, CTX, "B", "A")
    assert s_ab != pairwise_seed(a, b.public, RoundContext("job", "run", 2), "A", "B")
    assert s_ab != share_key(a, b.public, CTX, "A", "B")  # purposes are separated
    rebuilt = KeyPair.from_private_bytes(a.private_bytes())
    assert pairwise_seed(rebuilt, b.public, CTX, "A", "B") == s_ab


def test_shares_decrypt_only_for_their_sender_recipient_and_round() -> None:
    a, b = KeyPair.generate(), KeyPair.generate()
    key = share_key(a, b.public, CTX, "A", "B")
    blob = encrypt_share(key, b"share", CTX, "A", "B")
    assert decrypt_share(share_key(b, a.public, CTX, "B", "A"), blob, CTX, "A", "B") == b"share"
    for ctx, sender, recipient in [
        (RoundContext("job", "run", 2), "A", "B"),
        (CTX, "B", "A"),
        (CTX, "A", "C"),
    ]:
        with pytest.raises(SecAggError, match="does not decrypt"):
            decrypt_share(key, blob, ctx, sender, recipient)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(SecAggError, match="does not decrypt"):
        decrypt_share(key, tampered, CTX, "A", "B")
    with pytest.raises(SecAggError, match="public key has 3 bytes"):
        pairwise_seed(a, b"abc", CTX, "A", "B")


# --- shamir -------------------------------------------------------------------------------


def test_any_t_shares_rebuild_the_secret_fewer_cannot() -> None:
    secret = secrets.token_bytes(32)
    shares = split(secret, 3, [1, 2, 3, 4, 5])
    for subset in itertools.combinations(shares, 3):
        assert reconstruct(list(subset), 3) == secret
    assert reconstruct(shares, 3) == secret
    with pytest.raises(TooFewSurvivorsError, match="2 shares arrived, 3 are needed"):
        reconstruct(shares[:2], 3)
    assert all(Share.from_bytes(s.to_bytes()) == s for s in shares)
    assert len(shares[0].to_bytes()) == SHARE_BYTES


def test_bad_shares_are_detected() -> None:
    secret = secrets.token_bytes(32)
    shares = split(secret, 3, [1, 2, 3, 4])
    bad = Share(shares[3].x, (shares[3].y + 1) % 2**521)
    with pytest.raises(SecAggError, match=r"inconsistent \(indexes \[4\]"):
        reconstruct([*shares[:3], bad], 3)
    for i in range(3):  # exactly t shares, one garbage: the result is not a 32-byte secret
        garbage = list(shares[:3])
        garbage[i] = Share(garbage[i].x, secrets.randbelow(2**521 - 1))
        with pytest.raises(SecAggError, match="garbage"):
            reconstruct(garbage, 3)
    with pytest.raises(SecAggError, match="same index"):
        reconstruct([shares[0], shares[0], shares[1]], 2)
    with pytest.raises(SecAggError, match="a share has"):
        Share.from_bytes(b"short")


# --- graph --------------------------------------------------------------------------------


def test_parameters_grow_like_log_n() -> None:
    assert choose_parameters(5) == GraphParameters(4, 3)  # small: complete graph
    ks = [choose_parameters(n).k for n in (100, 1_000, 10_000, 100_000)]
    assert ks == sorted(ks) and ks[-1] < 60  # O(log n), far below n
    for n in (100, 1_000):
        p = choose_parameters(n)
        assert p.k // 2 < p.threshold <= p.k


def test_k_regular_graph_is_symmetric_regular_and_seeded() -> None:
    ids = [f"d{i}" for i in range(40)]
    g = build_graph(ids, b"seed", GraphParameters(8, 5))
    assert not g.complete
    for d in ids:
        assert len(g.neighbours(d)) == 8 and d not in g.neighbours(d)
        assert all(d in g.neighbours(e) for e in g.neighbours(d))
        assert g.holders(d) == tuple(sorted((*g.neighbours(d), d)))
    assert g == build_graph(list(reversed(ids)), b"seed", GraphParameters(8, 5))
    assert g.adjacency != build_graph(ids, b"other", GraphParameters(8, 5)).adjacency
    assert build_graph(ids[:6], b"seed", GraphParameters(8, 3)).complete
    with pytest.raises(ConfigError, match="threshold 10"):
        build_graph(ids, b"seed", GraphParameters(8, 10))
