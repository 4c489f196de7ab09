"""Who masks with whom and who holds whose shares: the round's neighbourhoods.

Small rounds use the complete graph (SecAgg, Bonawitz et al. CCS 2017). Large rounds use
SecAgg+'s sparse graph (Bell et al. CCS 2020, section 3): a Harary graph H(n, k) (each node
joined to the k/2 nearest on each side of a ring) whose nodes are placed in an order drawn
from a public seed, so every device has k = O(log n) neighbours and the cost per device
grows with log n instead of n. Everyone derives the same graph from the member ids and the
seed (the order is the ids sorted by sha256(seed + id)).

Parameters (:func:`choose_parameters`). SecAgg+ picks the degree k and threshold t so that,
with at most a fraction ``corrupt`` of colluding devices and a fraction ``dropout`` of
devices dropping out, (a) no device has t or more corrupt neighbours (security, failure
2^-sigma) and (b) every device keeps at least t surviving neighbours (correctness, failure
2^-eta). This module approximates the paper's analysis rather than reproducing its table:
neighbours are taken as independent draws (binomial tails instead of the hypergeometric
ones), a union bound over the n devices, t is at least a majority of k (k//2 + 1, as in
SecAgg), and the separate connectivity condition of Bell et al. is not computed (with
t > k/2 and the corrupt fraction small it is implied up to a comparable failure
probability). The smallest even k meeting (a) and (b) is chosen; when none below n - 1 does,
the graph is complete with t = (n - 1) // 2 + 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Mapping, Sequence

from edge_client.errors import ConfigError


def _tail_at_least(k: int, p: float, t: int) -> float:
    """P[Binomial(k, p) >= t]."""
    return sum(math.comb(k, i) * p**i * (1 - p) ** (k - i) for i in range(t, k + 1))


@dataclasses.dataclass(frozen=True)
class GraphParameters:
    k: int  # neighbours per device (n - 1: complete graph)
    threshold: int  # shares needed to rebuild a device's secret


def choose_parameters(
    n: int, *, dropout: float = 0.1, corrupt: float = 0.05, sigma: int = 40, eta: int = 20
) -> GraphParameters:
    """Degree and threshold for ``n`` devices (see the module docstring for the bounds)."""
    if n < 2:
        raise ConfigError(f"secure aggregation needs at least 2 devices, not {n}")
    if not (0 <= dropout < 1 and 0 <= corrupt < 1):
        raise ConfigError("the dropout and corrupt fractions must be in [0, 1)")
    for k in range(2, n - 1, 2):
        t = next(
            (
                t
                for t in range(k // 2 + 1, k + 1)
                if n * _tail_at_least(k, corrupt, t) <= 2.0**-sigma
            ),
            None,
        )
        if t is None:
            continue
        fail = n * (1 - _tail_at_least(k, 1 - dropout, t))  # P[survivors < t], all devices
        if fail <= 2.0**-eta:
            return GraphParameters(k, t)
    return GraphParameters(n - 1, (n - 1) // 2 + 1)


@dataclasses.dataclass(frozen=True)
class Graph:
    """The neighbourhoods of one round. ``index`` numbers members 1..n (Shamir x values)."""

    members: tuple[str, ...]  # sorted
    threshold: int
    adjacency: Mapping[str, tuple[str, ...]]

    @property
    def complete(self) -> bool:
        return all(len(v) == len(self.members) - 1 for v in self.adjacency.values())

    def neighbours(self, device: str) -> tuple[str, ...]:
        try:
            return self.adjacency[device]
        except KeyError:
            raise ConfigError(f"{device} is not a member of this round") from None

    def holders(self, device: str) -> tuple[str, ...]:
        """Who holds shares of ``device``'s secrets: its neighbours and itself (as in
        Bonawitz et al., where the sharer keeps a share: it helps only while it survives, and
        then the coordinator may learn its self seed anyway)."""
        return tuple(sorted((*self.neighbours(device), device)))

    def index(self, device: str) -> int:
        """The device's Shamir x coordinate: its 1-based position among the sorted members."""
        return self.members.index(device) + 1


def build_graph(
    members: Sequence[str], seed: bytes, params: GraphParameters | None = None
) -> Graph:
    """The graph of ``members`` for this round; ``params`` default to :func:`choose_parameters`."""
    ids = tuple(sorted(set(members)))
    if len(ids) != len(members):
        raise ConfigError("the round's members must be distinct")
    n = len(ids)
    p = params or choose_parameters(n)
    k = p.k + (p.k % 2)  # Harary graphs here have even degree
    if not 2 <= p.threshold <= min(k, n - 1) + 1:
        raise ConfigError(
            f"threshold {p.threshold} is not within 2..{min(k, n - 1) + 1} (holders of shares)"
        )
    if k >= n - 1:
        adj = {d: tuple(x for x in ids if x != d) for d in ids}
        return Graph(ids, p.threshold, adj)
    order = sorted(ids, key=lambda d: hashlib.sha256(seed + d.encode("utf-8")).digest())
    pos = {d: i for i, d in enumerate(order)}
    adj = {}
    for d in ids:
        near = {order[(pos[d] + off) % n] for off in range(-(k // 2), k // 2 + 1) if off}
        adj[d] = tuple(sorted(near))
    return Graph(ids, p.threshold, adj)
