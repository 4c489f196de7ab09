"""When each simulated board is away: offline sessions and mid-training dropouts, seeded.

Offline sessions are drawn up front for the whole horizon (exponential online and offline
lengths from the board's ``availability``), or read from a trace file. Dropouts are decided
per local training: the k-th training of a board drops out or not, when and how, from
``(seed, device, k)`` alone, so the same seed gives the same decisions whatever the timing.
"""

from __future__ import annotations

import csv
import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.fleet.spec import BoardSpec, FleetSpec
from edge_client.errors import ConfigError

DEFAULT_HORIZON_S = 24 * 3600.0  # sessions are drawn this far; boards stay online after it


@dataclass(frozen=True)
class Window:
    """The board is away from ``start_s`` to ``end_s`` (seconds since the fleet started)."""

    start_s: float
    end_s: float
    mode: str  # "network" (link cut, process alive) or "power" (process killed, rebooted)


@dataclass(frozen=True)
class DropoutDecision:
    at_fraction: float  # of the expected local training time, when it happens
    mode: str  # "power" (process killed) or "network" (link cut)
    downtime_s: float  # how long the board stays away


def _rng(seed: int, device: str, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(device.encode()), *stream])


def random_windows(board: BoardSpec, seed: int, horizon_s: float) -> list[Window]:
    """Alternating online/offline sessions, starting online; none if mean_online_s is 0."""
    a = board.availability
    if a.mean_online_s <= 0:
        return []
    rng, t = _rng(seed, board.device_id, 0), 0.0
    out: list[Window] = []
    while True:
        t += rng.exponential(a.mean_online_s)
        if t >= horizon_s:
            return out
        length = rng.exponential(a.mean_offline_s) if a.mean_offline_s > 0 else 0.0
        out.append(Window(round(t, 3), round(min(t + length, horizon_s), 3), a.offline))
        t += length


def read_trace(path: Path, fleet: FleetSpec) -> dict[str, list[tuple[float, float]]]:
    """Online sessions per device from a CSV trace (docs/fleet-simulation.md)."""
    known = {b.device_id for b in fleet.boards}
    sessions: dict[str, list[tuple[float, float]]] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read the availability trace {path}: {exc}") from None
    rows = csv.reader(ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#"))
    for n, row in enumerate(rows, start=1):
        if [c.strip() for c in row] == ["device", "online_from_s", "online_until_s"]:
            continue
        if len(row) != 3:
            raise ConfigError(f"{path}: row {n}: expected device,online_from_s,online_until_s")
        device = row[0].strip()
        if device not in known:
            raise ConfigError(f"{path}: row {n}: no board {device!r} in the fleet")
        try:
            start = float(row[1])
            end = float(row[2]) if row[2].strip() not in ("", "inf") else math.inf
        except ValueError:
            raise ConfigError(f"{path}: row {n}: times must be seconds, e.g. 0,600") from None
        if not 0 <= start < end:
            raise ConfigError(f"{path}: row {n}: need 0 <= online_from_s < online_until_s")
        sessions.setdefault(device, []).append((start, end))
    return sessions


def trace_windows(sessions: list[tuple[float, float]], mode: str, horizon_s: float) -> list[Window]:
    """The offline gaps between a device's online sessions (before the first, after the last)."""
    out, t = [], 0.0
    for start, end in sorted(sessions):
        if start > t:
            out.append(Window(t, start, mode))
        t = max(t, end)
    if t < horizon_s:
        out.append(Window(t, horizon_s, mode))
    return out


class Schedule:
    """Offline windows and dropout decisions of every board of a fleet."""

    def __init__(self, fleet: FleetSpec, horizon_s: float = DEFAULT_HORIZON_S) -> None:
        self.fleet, self.horizon_s = fleet, horizon_s
        traced = read_trace(fleet.trace, fleet) if fleet.trace else {}
        self.windows: dict[str, list[Window]] = {}
        for b in fleet.boards:
            if b.device_id in traced:
                w = trace_windows(traced[b.device_id], b.availability.offline, horizon_s)
            else:
                w = random_windows(b, fleet.seed, horizon_s)
            self.windows[b.device_id] = w

    def online_at(self, device: str, t: float) -> bool:
        return not any(w.start_s <= t < w.end_s for w in self.windows[device])

    def online_at_start(self) -> list[str]:
        return [b.device_id for b in self.fleet.boards if self.online_at(b.device_id, 0.0)]

    def online_share(self, device: str, until_s: float) -> float:
        """The share of [0, until_s) the board is scheduled online (dropouts aside)."""
        away = sum(
            max(0.0, min(w.end_s, until_s) - w.start_s)
            for w in self.windows[device]
            if w.start_s < until_s
        )
        return 1.0 - away / until_s

    def dropout(self, device: str, k: int) -> DropoutDecision | None:
        """Whether the k-th local training (0-based) of ``device`` is interrupted, and how."""
        d = self.fleet.board(device).dropout
        if d.probability <= 0:
            return None
        rng = _rng(self.fleet.seed, device, 1, k)
        drop, at, how, downtime = rng.random(4)
        if drop >= d.probability:
            return None
        mode = "power" if how < d.kill_share else "network"
        length = -math.log1p(-downtime) * d.mean_downtime_s  # exponential, mean_downtime_s
        return DropoutDecision(round(0.1 + 0.8 * at, 3), mode, round(length, 3))

    def to_json(self, dropouts_per_board: int = 50) -> dict[str, Any]:
        """The schedule as data (run_dir/fleet/schedule.json): same seed, same document."""
        return {
            "fleet": self.fleet.name,
            "seed": self.fleet.seed,
            "horizon_s": self.horizon_s,
            "boards": {
                b.device_id: {
                    "offline": [asdict(w) for w in self.windows[b.device_id]],
                    "dropouts": {
                        str(k): asdict(d)
                        for k in range(dropouts_per_board)
                        if (d := self.dropout(b.device_id, k)) is not None
                    },
                }
                for b in self.fleet.boards
            },
        }
