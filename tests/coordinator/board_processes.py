"""Real `fedge run` board processes for the round-mode tests (semi-synchronous, buffered):
started slowed like the fleet simulator's boards, stopped when the job stops."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from coordinator.config import JobConfig
from coordinator.simulation import FleetConfig, device_command
from edge_client.pacing import ENV as SLOWDOWN_ENV
from edge_client.transport import BrokerConfig

ROOT = Path(__file__).resolve().parents[2]


def start_boards(
    job: JobConfig,
    broker: BrokerConfig,
    tmp: Path,
    n: int,
    slowdown: dict[int, float],
    *,
    broker_urls: dict[int, str] | None = None,
    parts: int = 12,
    extra: tuple[str, ...] = (),
) -> list[subprocess.Popen]:
    """``n`` real `fedge run` boards (sim-00 ...) with 60,000 / ``parts`` Fashion-MNIST images
    each; board ``i`` slowed ``slowdown[i]`` times (the fleet simulator's pacing), connecting
    to ``broker_urls[i]`` when given (a proxy), with ``extra`` options."""
    fleet = FleetConfig(devices=max(n, parts))
    (tmp / "devices").mkdir(parents=True, exist_ok=True)
    procs = []
    for i in range(n):
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if i in slowdown:
            env[SLOWDOWN_ENV] = str(slowdown[i])
        url = (broker_urls or {}).get(i)
        board_broker = BrokerConfig.from_url(url) if url else broker
        log = open(tmp / "devices" / f"sim-{i:02d}.log", "ab")  # noqa: SIM115
        cmd = device_command(fleet, job, board_broker, i, tmp / "devices" / f"sim-{i:02d}")
        cmd += extra  # e.g. ("--trust-key", path)
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env))
    return procs


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        try:
            p.wait(20)  # --exit-on-stop: they leave when the job stops
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
