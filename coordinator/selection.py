"""Which online devices train in a round: all, a fraction, or K at random (seeded)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterable


def select_devices(
    online: Iterable[str], round_: int, *, fraction: float, k: int, seed: int
) -> tuple[str, ...]:
    """Deterministic for (seed, round, online set): resuming a job selects the same devices."""
    devices = sorted(online)
    if not devices:
        return ()
    count = min(k, len(devices)) if k > 0 else max(1, math.ceil(fraction * len(devices)))
    if count >= len(devices):
        return tuple(devices)
    rng = random.Random(f"{seed}:{round_}")
    return tuple(sorted(rng.sample(devices, count)))
