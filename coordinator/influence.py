"""Bounded influence: what one update can do to the aggregate, decided when a round closes.

FedAvg weights each update by the sample count its device claims, and a change's size is
only checked against an absolute limit (``--max-update-norm``); so one hostile board could
claim 10^9 samples or send a change 30x larger than anyone else's and own the average.
By default (docs/security.md, "Bounded influence"):

- an update may not claim more samples than its device's status announced (checked when
  the update arrives, if the device announced a count);
- an update whose change (L2 norm of ``update - global``) is more than ``max_change_ratio``
  times the median change of the other devices' updates of the round is rejected (needs at
  least ``MIN_UPDATES_FOR_MEDIAN`` updates in the round; the absolute check always applies);
- no device carries more than ``max_weight_share`` of the round's total weight: larger
  sample counts are lowered until it holds (needs more than ``1 / max_weight_share``
  devices, otherwise the cap cannot hold for everyone and is not applied).

A late update folded into the round (coordinator/late.py) is one more update of the round,
named :func:`late_key` apart from its device's own update for the round: both count as
that device's for the median and the cap.

The last two need the whole round, but aggregation streams (memory O(model)). So updates
are held, not folded, until the round closes, at most ``max_held`` of them: when one more
arrives, the held update least likely to be capped or rejected (lowest ratio of its samples
and change to the medians so far) is folded at once. Memory is ``max_held`` decoded updates
(e.g. 16 x 1.1 MB for the README's CNN); only a round with more than ``max_held`` outliers
folds one of them before the decision (logged).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

MIN_UPDATES_FOR_MEDIAN = 3  # fewer updates: the median of the others says nothing
DEFAULT_MAX_WEIGHT_SHARE = 0.5  # no update outweighs all the others together
DEFAULT_MAX_CHANGE_RATIO = 10.0  # honest changes of one round differ by a few x, not 10x
DEFAULT_MAX_HELD = 16


@dataclass(frozen=True)
class InfluenceBounds:
    """The job's bounds (``--max-weight-share``, ``--max-change-ratio``, ``--no-sample-check``)."""

    check_samples: bool = True  # an update's sample count <= what its status announced
    max_weight_share: float = DEFAULT_MAX_WEIGHT_SHARE  # 0: off
    max_change_ratio: float = DEFAULT_MAX_CHANGE_RATIO  # 0: off
    max_held: int = DEFAULT_MAX_HELD  # updates kept unfolded until the round closes

    @classmethod
    def off(cls) -> InfluenceBounds:
        return cls(check_samples=False, max_weight_share=0.0, max_change_ratio=0.0)

    @classmethod
    def from_options(
        cls, *, no_sample_check: bool, max_weight_share: float, max_change_ratio: float
    ) -> InfluenceBounds:
        """The bounds of the job options of the same names (``fedcoord start``, ``site``)."""
        return cls(
            check_samples=not no_sample_check,
            max_weight_share=max_weight_share,
            max_change_ratio=max_change_ratio,
        )

    def problem(self) -> str | None:
        """Why these bounds are unusable (None: they are fine), as JobConfig words it."""
        if not 0 <= self.max_weight_share <= 1:
            return "max_weight_share must be in [0, 1] (0 disables the cap)"
        if self.max_change_ratio < 0:
            return "max_change_ratio must be >= 0 (0 disables the check)"
        if self.max_held < 1:
            return "max_held must be at least 1"
        return None

    @property
    def weakened(self) -> bool:
        """Some bound is off by option (the log says so as a warning)."""
        return not (self.check_samples and self.max_weight_share and self.max_change_ratio)

    def describe(self) -> str:
        """One line for the job's log: what is on and what the operator turned off."""
        on: list[str] = []
        off: list[str] = []
        (on if self.check_samples else off).append("sample counts checked against statuses")
        if self.max_weight_share > 0:
            on.append(f"weight share <= {self.max_weight_share:g}")
        else:
            off.append("weight share cap (--max-weight-share 0)")
        if self.max_change_ratio > 0:
            on.append(f"change <= {self.max_change_ratio:g}x the round's median")
        else:
            off.append("change vs median (--max-change-ratio 0)")
        text = "bounded influence: " + (", ".join(on) if on else "none")
        return text + (f"; OFF by option: {', '.join(off)}" if off else "")


def capped_weights(samples: list[int], max_share: float) -> list[int]:
    """Sample counts lowered so that none exceeds ``max_share`` of their sum (water-filling).

    The largest counts are set to a common cap ``c = max_share * total`` where ``total``
    includes the capped ones; counts below the cap are unchanged. Not applied (the input is
    returned) when the cap cannot hold for everyone (``len(samples) * max_share <= 1``)."""
    n = len(samples)
    if max_share <= 0 or n * max_share <= 1 or not samples:
        return list(samples)
    order = sorted(range(n), key=lambda i: -samples[i])
    rest = float(sum(samples))
    for k in range(n):  # cap the k largest at c = share * rest / (1 - k * share)
        cap = max_share * rest / (1 - k * max_share)
        if samples[order[k]] <= cap:
            if k == 0:
                return list(samples)
            out = list(samples)
            for i in order[:k]:
                out[i] = max(1, int(cap))
            return out
        rest -= samples[order[k]]
    return list(samples)  # unreachable while n * share > 1


def late_key(device: str, round_: int) -> str:
    """How a late update (coordinator/late.py) is named among a round's updates: apart from
    an update its device sends for the round itself (ids have no spaces)."""
    return f"{device} (late update for round {round_})"


def owner(key: str) -> str:
    """The device of an update named ``key`` (a device id or a :func:`late_key`)."""
    return key.split(" ", 1)[0]


@dataclass
class Held:
    """An accepted update not yet folded into the strategy."""

    device: str
    weights: Mapping[str, np.ndarray]
    samples: int
    change: float  # L2 norm of weights - global (a late update: of its own training)
    late_round: int = 0  # a late update's own round (coordinator/late.py); 0: this round's
    size: int = 0  # a late update's bytes (an update of the round has them in its metrics)

    @property
    def key(self) -> str:
        return late_key(self.device, self.late_round) if self.late_round else self.device


def capped_claims(claims: Mapping[str, int], max_share: float) -> dict[str, int]:
    """Weights of a round's updates (``claims``: key -> sample count) such that no *device*
    carries more than ``max_share`` of the total: :func:`capped_weights` over the devices'
    totals (a device may have a late update besides its own, :func:`late_key`); a capped
    device's updates share its cap in proportion to their claims."""
    totals: dict[str, int] = {}
    for key, n in claims.items():
        totals[owner(key)] = totals.get(owner(key), 0) + n
    devices = list(totals)
    caps = dict(zip(devices, capped_weights([totals[d] for d in devices], max_share)))
    out = {}
    for key, n in claims.items():
        cap, total = caps[owner(key)], totals[owner(key)]
        out[key] = n if cap == total else max(1, n * cap // total)
    return out


@dataclass(frozen=True)
class Decision:
    """What the round's close decided for one update."""

    device: str
    samples: int  # the weight it is folded with (its claim, or the cap)
    rejected: str = ""  # reason; "" when folded


def change_outliers(changes: Mapping[str, float], ratio: float) -> dict[str, str]:
    """key -> rejection reason for changes above ``ratio`` x the median of the other devices'
    updates (a device's late update is not judged against its own update of the round)."""
    if ratio <= 0 or len(changes) < MIN_UPDATES_FOR_MEDIAN:
        return {}
    out = {}
    for device, change in changes.items():
        others = [c for d, c in changes.items() if owner(d) != owner(device)]
        if len(others) < MIN_UPDATES_FOR_MEDIAN - 1:
            continue
        median = statistics.median(others)
        if change > ratio * median and math.isfinite(change):
            times = f"{change / median:.1f}x" if median > 0 else "infinitely"
            out[device] = (
                f"outsized change: it moves the weights by {change:.4g} (L2), {times} the "
                f"median change of the round's {len(others)} other updates; the limit is "
                f"{ratio:g}x (--max-change-ratio)"
            )
    return out


def risk(held: Held, samples_median: float, change_median: float) -> float:
    """How likely the close is to cap or reject ``held`` (the lowest is folded first)."""
    a = held.samples / samples_median if samples_median > 0 else 0.0
    b = held.change / change_median if change_median > 0 else 0.0
    return max(a, b)
