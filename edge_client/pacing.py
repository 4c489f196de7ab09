"""Simulated board speed: a slowed board waits after its real compute, in proportion to it.

``fedcoord simulate --fleet`` runs boards slower than this machine (a Raspberry Pi Zero 2 W
trains an order of magnitude slower than a desktop core) without burning CPU: a board with
slow-down factor ``f`` trains for real through its interpreter, then sleeps until its
training has taken ``f`` times its compute time (on an idle machine: ``f - 1`` times the wall
time of each training step). Only simulations set ``EDGEFL_SIM_SLOWDOWN``; on a real
board it is unset and :class:`Pacer` does nothing.
"""

from __future__ import annotations

import math
import os
import time

from edge_client.errors import ConfigError

__all__ = ["ENV", "Pacer", "slowdown_from_env"]

ENV = "EDGEFL_SIM_SLOWDOWN"  # the slow-down factor (>= 1); set by the fleet simulator only


def slowdown_from_env() -> float:
    """The factor in ``$EDGEFL_SIM_SLOWDOWN``, 1.0 when unset; a bad value is an error."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return 1.0
    try:
        factor = float(raw)
    except ValueError:
        factor = math.nan
    if not math.isfinite(factor) or factor < 1:
        raise ConfigError(f"{ENV}={raw!r}: expected a number >= 1 (the board's slow-down factor)")
    return factor


class Pacer:
    """``tick()`` after each piece of compute: waits until ``factor`` x the compute time
    measured so far has passed since the pacer started.

    The compute time of a step is its wall time, or the process's CPU time over it when that
    is less: on a machine shared with other work the wall time includes waiting for a core,
    which the simulated board would not do. The wait then absorbs that delay too, so a slowed
    board keeps its pace as long as the machine is not ``factor`` times oversubscribed. On an
    idle machine this is exactly a wait of ``(factor - 1)`` x the wall time of each step.
    Waits are batched (at least ``MIN_WAIT_S``, the last one on ``tick(flush=True)``).
    """

    MIN_WAIT_S = 0.02

    def __init__(self, factor: float | None = None) -> None:
        self.factor = slowdown_from_env() if factor is None else factor
        self.compute_s = 0.0  # measured compute time since construction
        self.waited_s = 0.0  # time slept to simulate the slower board
        self._start = self._mark = time.monotonic()
        self._cpu_mark = time.process_time()

    def tick(self, *, flush: bool = False) -> None:
        now, cpu = time.monotonic(), time.process_time()
        self.compute_s += min(now - self._mark, cpu - self._cpu_mark)
        self._mark, self._cpu_mark = now, cpu
        owed = self.compute_s * self.factor - (now - self._start)
        if owed > 0 and (flush or owed >= self.MIN_WAIT_S):
            time.sleep(owed)
            self._mark, self._cpu_mark = time.monotonic(), time.process_time()
            self.waited_s += self._mark - now
