"""How much slower than this machine each board profile trains: estimates, with sources.

A board with factor ``f`` takes ``f`` times the wall time this machine's core needs for the
same local training (``EDGEFL_SIM_SLOWDOWN``, edge_client/pacing.py). Nobody measured these
boards training our models here, so the factors are **estimates** chained from published
figures (docs/fleet-simulation.md explains each link of the chain):

- this machine (one core of an AMD EPYC Zen 4 VM, AVX-512, ~2.6 GHz) vs a Raspberry Pi 4
  core (Cortex-A72, 1.8 GHz, 128-bit NEON): ~8x. Peak FP32 vector throughput per core is
  83 GFLOP/s here (two 256-bit FMA pipes) against 14-29 GFLOP/s on the A72 (one or two
  128-bit FMAs per cycle): 3-6x at equal efficiency. The cnn's training graph reaches ~60 %
  of this core's peak (docs/benchmarks.md); the A72, with small caches and LPDDR4 memory,
  reaches a smaller share, so we take ~8x. This anchor is the least certain number here:
  expect it to be off by up to 2x either way;
- Raspberry Pi 5 vs Pi 4: "2-3x the CPU performance" (Raspberry Pi Ltd, Pi 5 launch,
  October 2023): 2.5x, so 8 / 2.5 = 3.2;
- Pi 4 vs Pi 3B+: about 2x in TensorFlow inference (Alasdair Allan, "Benchmarking Machine
  Learning on the New Raspberry Pi 4, Model B", Hackster.io, 2019): 16;
- Pi Zero 2 W vs Pi 3B+: the same Cortex-A53 cores at 1.0 instead of 1.4 GHz (and less
  headroom before thermal throttling): x1.4, so ~22.

Override them per fleet (``[slowdown]`` table) or per board group (``slowdown = ...``)
when you have measured your own boards (``fedge run`` logs the seconds per epoch).
"""

from __future__ import annotations

# profile family -> slow-down factor relative to one core of this machine (see above)
FACTORS: dict[str, float] = {
    "rpi5": 3.2,
    "rpi4": 8.0,
    "rpi3bplus": 16.0,
    "rpi-zero2w": 22.0,
    "linux-x86_64": 1.0,  # a PC like this one
}


def profile_family(profile: str) -> str:
    """``rpi4-64`` -> ``rpi4``: the 32- and 64-bit variants of a board share a factor."""
    for suffix in ("-64", "-32"):
        if profile.endswith(suffix):
            return profile[: -len(suffix)]
    return profile


def default_factor(profile: str) -> float | None:
    """The estimated factor for a built-in profile, or None if we have none."""
    return FACTORS.get(profile_family(profile))
