"""The strategy registry: every aggregation strategy a job can name, in one place.

``fedcoord start --strategy`` takes its choices and help from here, the job file and the
environment are validated against it (``coordinator.config``), the round loop builds its
strategy with :func:`build_strategy`, and a test checks that docs/security.md names each
entry. A new strategy is a class following :class:`~coordinator.aggregation.Strategy`
(``aggregation.py`` for averaging ones, ``robust_strategies.py`` for robust ones) and one
:class:`StrategyEntry` below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from coordinator.aggregation import FedAvg, FedAvgM, FedProx, Strategy
from coordinator.robust_strategies import DPFedAvg, Krum, Median, NormClipping, TrimmedMean
from edge_client.errors import ConfigError

if TYPE_CHECKING:
    from coordinator.config import JobConfig


@dataclass(frozen=True)
class StrategyEntry:
    name: str
    build: Callable[[JobConfig], Strategy]
    summary: str  # a few words for --help
    # One vote per device (sample counts ignored): what makes it robust to hostile devices.
    robust: bool = False
    # DP-FedAvg (dp_clip > 0) replaces the server average: only plain averaging allows it.
    allows_dp: bool = False
    needs_prox_mu: bool = False  # the exported model must carry a FedProx term (--prox-mu)


_ENTRIES = (
    StrategyEntry("fedavg", lambda c: FedAvg(), "sample-weighted average", allows_dp=True),
    StrategyEntry(
        "fedavgm", lambda c: FedAvgM(c.server_lr, c.server_momentum), "FedAvg with server momentum"
    ),
    StrategyEntry(
        "fedprox",
        lambda c: FedProx(),
        "FedAvg; the export's proximal term",
        allows_dp=True,
        needs_prox_mu=True,
    ),
    StrategyEntry("median", lambda c: Median(), "coordinate-wise median", robust=True),
    StrategyEntry("trimmed_mean", lambda c: TrimmedMean(c.trim_ratio), "trimmed mean", robust=True),
    StrategyEntry("krum", lambda c: Krum(c.krum_byzantine), "Krum", robust=True),
    StrategyEntry(
        "multi_krum", lambda c: Krum(c.krum_byzantine, multi=True), "Multi-Krum", robust=True
    ),
)
STRATEGIES: dict[str, StrategyEntry] = {e.name: e for e in _ENTRIES}
STRATEGY_NAMES: tuple[str, ...] = tuple(STRATEGIES)


def get_entry(name: str) -> StrategyEntry:
    if name not in STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}: use one of {', '.join(STRATEGY_NAMES)}")
    return STRATEGIES[name]


def strategy_help() -> str:
    """The --strategy help text, from the entries."""
    plain = ", ".join(f"{e.name} ({e.summary})" for e in _ENTRIES if not e.robust)
    robust = ", ".join(e.name for e in _ENTRIES if e.robust)
    return (
        f"Aggregation: {plain}; robust to hostile devices: {robust} (one vote per device, "
        "docs/security.md)."
    )


def build_strategy(cfg: JobConfig) -> Strategy:
    """The strategy a job configuration asks for (clipping wraps the chosen one)."""
    strategy = (
        DPFedAvg(cfg.dp_clip, cfg.dp_noise_multiplier)
        if cfg.dp_clip > 0
        else get_entry(cfg.strategy).build(cfg)
    )
    if cfg.clip_norm > 0:
        strategy = NormClipping(strategy, cfg.clip_norm)
    return strategy


def make_strategy(name: str, *, server_lr: float = 1.0, server_momentum: float = 0.9) -> Strategy:
    """Strategy ``name`` with default options (FedAvgM's server step as given)."""
    from coordinator.config import JobConfig

    get_entry(name)  # the registry's error for an unknown name, before JobConfig's
    return build_strategy(
        JobConfig(strategy=name, server_lr=server_lr, server_momentum=server_momentum)
    )
