"""Summary of one figure over several seeds: mean, sample sd, min and max.

Shared by the benches that report a figure over seeds (bench/accuracy_vs_keras.py,
bench/compression.py); they run as scripts, so this sits beside them on ``sys.path``.
"""

from __future__ import annotations

import statistics


def spread(values: list[float]) -> dict[str, float]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "min": min(values), "max": max(values)}
