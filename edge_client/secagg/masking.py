"""Mask a quantized update; remove the masks from the sum of the survivors' vectors.

A device i with self seed b_i and pairwise seeds s_ij (one per neighbour j that sent its
shares) sends, in Z_2^k::

    y_i = x_i + PRG(b_i) + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij)

(ids compared as strings). In the sum over the devices that sent y (the survivors, S),
pairwise masks between two survivors cancel. The coordinator subtracts PRG(b_i) for every
survivor (b_i rebuilt from shares) and, for every device d that shared but dropped before
sending y, rebuilds d's mask private key from shares, derives s_id with each surviving
neighbour i and removes the term i added for d.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence

import numpy as np

from edge_client.secagg.errors import SecAggError
from edge_client.secagg.graph import Graph
from edge_client.secagg.keys import KeyPair, RoundContext, pairwise_seed
from edge_client.secagg.prg import mask
from edge_client.secagg.quantize import Ring
from edge_client.secagg.shamir import Share, reconstruct

log = logging.getLogger(__name__)


def _signed_pairwise(me: str, pairwise: Mapping[str, bytes], n: int, ring: Ring) -> np.ndarray:
    total = ring.zeros(n)
    for peer, seed in pairwise.items():
        if peer == me:
            raise ValueError("a device has no pairwise mask with itself")
        if peer > me:
            total += mask(seed, n, ring)
        else:
            total -= mask(seed, n, ring)
    return total


def mask_input(
    x: np.ndarray, *, me: str, self_seed: bytes, pairwise: Mapping[str, bytes], ring: Ring
) -> np.ndarray:
    """``y = x + PRG(b) + sum_{j>me} PRG(s_j) - sum_{j<me} PRG(s_j)`` in the ring. Shape of x."""
    n = x.shape[0]
    ring.check(x, n, "the quantized update")
    y: np.ndarray = x + mask(self_seed, n, ring) + _signed_pairwise(me, pairwise, n, ring)
    return y


def unmask(
    *,
    graph: Graph,
    ctx: RoundContext,
    ring: Ring,
    length: int,
    masked: Mapping[str, np.ndarray],
    sharers: Collection[str],
    mask_publics: Mapping[str, bytes],
    seed_shares: Mapping[str, Sequence[Share]],
    key_shares: Mapping[str, Sequence[Share]],
) -> np.ndarray:
    """The sum of the survivors' quantized vectors. Shape (length,).

    ``masked``: survivor -> y; ``sharers``: devices whose shares went out (the masking
    neighbourhoods were cut to them); ``mask_publics``: device -> its ``s`` public key;
    ``seed_shares``: survivor -> shares of its self seed; ``key_shares``: device that shared
    but sent no y -> shares of its mask private key. Raises TooFewSurvivorsError when a
    secret has fewer than ``graph.threshold`` shares, SecAggError on bad shares or vectors.
    """
    survivors = set(masked)
    if not survivors <= set(sharers):
        raise SecAggError(
            f"masked vectors from devices that never shared: {sorted(survivors - set(sharers))}"
        )
    if not survivors:
        raise SecAggError("no masked vector arrived: nothing to aggregate")
    total = ring.zeros(length)
    for device in sorted(survivors):
        total += ring.check(masked[device], length, f"the masked vector of {device}")
    for device in sorted(survivors):
        seed = reconstruct(
            seed_shares.get(device, ()), graph.threshold, f"the self seed of {device}"
        )
        total -= mask(seed, length, ring)
    dropped = sorted(set(sharers) - survivors)
    for device in dropped:
        raw = reconstruct(key_shares.get(device, ()), graph.threshold, f"the mask key of {device}")
        keys = KeyPair.from_private_bytes(raw)
        if keys.public != mask_publics.get(device):
            raise SecAggError(f"the rebuilt mask key of {device} does not match its public key")
        for peer in graph.neighbours(device):
            if peer in survivors:
                seed = pairwise_seed(keys, mask_publics[peer], ctx, device, peer)
                # peer added +PRG(s) if device > peer, else -PRG(s): take it back out
                if device > peer:
                    total -= mask(seed, length, ring)
                else:
                    total += mask(seed, length, ring)
    log.debug("unmasked %d survivors, removed masks of %d dropped", len(survivors), len(dropped))
    return total
