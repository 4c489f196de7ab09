"""Load generator: thousands of virtual devices that answer rounds with valid updates.

``fedcoord loadgen`` (or :func:`run_load`) connects ``devices`` virtual devices, each with
its own MQTT connection, spread over ``processes`` processes of one asyncio loop each, and
answers every round the coordinator selects them for until the job stops. See
docs/benchmarks.md ("Scale") and bench/scale.py.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import queue
from typing import Any

from coordinator.loadgen.fleet import Fleet, LoadConfig, LoadStats, run_fleet
from coordinator.loadgen.updates import STEP, Plan, UpdateFactory, expected_average
from edge_client.errors import EdgeFLError

__all__ = [
    "STEP",
    "Fleet",
    "LoadConfig",
    "LoadStats",
    "Plan",
    "UpdateFactory",
    "expected_average",
    "run_fleet",
    "run_load",
]


def _child(cfg: LoadConfig, stop: Any, results: Any) -> None:
    stats = run_fleet(cfg, stop)
    results.put(dataclasses.asdict(stats))


def run_load(cfg: LoadConfig, processes: int = 1) -> LoadStats:
    """Run the fleet (``cfg.devices`` devices from ``cfg.first``) over ``processes`` processes."""
    if processes <= 1:
        return run_fleet(cfg)
    ctx = multiprocessing.get_context("spawn")
    stop, results = ctx.Event(), ctx.Queue()
    share, extra = divmod(cfg.devices, processes)
    children, first = [], cfg.first
    for p in range(processes):
        count = share + (p < extra)
        part = dataclasses.replace(cfg, first=first, devices=count)
        first += count
        child = ctx.Process(target=_child, args=(part, stop, results), daemon=True)
        child.start()
        children.append(child)
    total = LoadStats()
    try:
        for _ in children:
            stats = _next_result(results, children)
            total.connected += stats["connected"]
            total.updates += stats["updates"]
            total.bytes_up += stats["bytes_up"]
            total.rounds |= set(stats["rounds"])
    finally:
        stop.set()
        for child in children:
            child.join(10)
    return total


def _next_result(results: Any, children: list[Any]) -> dict[str, Any]:
    """The next child's stats; EdgeFLError if every child ended without reporting."""
    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            if not any(child.is_alive() for child in children):
                raise EdgeFLError("the load generator processes failed (see their log)") from None
