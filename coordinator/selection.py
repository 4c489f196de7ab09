"""Which online devices train in a round: all, a fraction, or K at random (seeded).

Over-selection (semi-synchronous rounds): ``over_select`` > 1 selects that many times the
devices a round needs, and the round closes once the needed number of updates is in.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable


def round_size(online: int, *, fraction: float, k: int) -> int:
    """Updates a round needs from ``online`` devices: K, or the fraction (at least one)."""
    if online <= 0:
        return 0
    return min(k, online) if k > 0 else max(1, math.ceil(fraction * online))


def select_devices(
    online: Iterable[str],
    round_: int,
    *,
    fraction: float,
    k: int,
    seed: int,
    over_select: float = 1.0,
) -> tuple[str, ...]:
    """Deterministic for (seed, round, online set): resuming a job selects the same devices."""
    devices = sorted(online)
    if not devices:
        return ()
    needed = round_size(len(devices), fraction=fraction, k=k)
    count = min(len(devices), math.ceil(needed * over_select - 1e-9))
    if count >= len(devices):
        return tuple(devices)
    rng = random.Random(f"{seed}:{round_}")
    return tuple(sorted(rng.sample(devices, count)))
