"""Experiments: one TOML file = simulated federated runs (+ centralized baselines + reports).

[experiment]
name = "fashion-mnist-paper"
description = "..."
baseline = true               # also train centrally for the same sample passes

[fleet]                       # FleetConfig: devices, dataset, partition, partition_seed
devices = 5
dataset = "fashion-mnist"
partition = "sequential"

[job]                         # JobConfig fields shared by every variant
rounds = 50
optimizer = "adam"

[[variants]]                  # optional; each is one run with these overrides
name = "epochs-5"             # (fleet and job fields may both appear here)
epochs = 5
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from coordinator.config import JobConfig, job_settings, read_toml
from edge_client.errors import ConfigError

log = logging.getLogger(__name__)
FLEET_FIELDS = ("devices", "dataset", "partition", "partition_seed", "runtime", "threads")


def load_experiment(path: str | Path) -> dict[str, Any]:
    spec = read_toml(path, "experiment file")
    if "experiment" not in spec or "name" not in spec["experiment"]:
        raise ConfigError(f"{path}: needs an [experiment] table with a name")
    return spec


def run_experiment(
    path: str | Path,
    out_root: str | Path = "runs/experiments",
    *,
    only: str | None = None,
    on_round: Any = None,
) -> Path:
    from coordinator.baseline import centralized_baseline
    from coordinator.report.build import build_report
    from coordinator.simulation import FleetConfig, simulate

    spec = load_experiment(path)
    meta = spec["experiment"]
    root = Path(out_root) / meta["name"]
    root.mkdir(parents=True, exist_ok=True)
    variants = spec.get("variants") or [{"name": "run"}]
    summary = []
    for variant in variants:
        name = variant.get("name", "run")
        if only and name != only:
            continue
        overrides = {k: v for k, v in variant.items() if k != "name"}
        fleet_kw = {
            **spec.get("fleet", {}),
            **{k: v for k, v in overrides.items() if k in FLEET_FIELDS},
        }
        job_kw = job_settings(
            {
                **spec.get("job", {}),
                **{k: v for k, v in overrides.items() if k not in FLEET_FIELDS},
            },
            f"experiment {path}, variant {name}",
        )
        run_dir = root / name
        job = JobConfig(
            **{
                "job": f"{meta['name']}-{name}".replace("_", "-")[:64],
                "listen": "127.0.0.1:0",
                "run_dir": str(run_dir),
                **job_kw,
            }
        )
        fleet = FleetConfig(**fleet_kw)
        log.info(
            "experiment %s, variant %s: %d devices, %d rounds",
            meta["name"],
            name,
            fleet.devices,
            job.rounds,
        )
        t0 = time.time()
        state = simulate(job, fleet, resume=(run_dir / "state.json").exists(), on_round=on_round)
        fed_s = time.time() - t0
        base = None
        t1 = time.time()
        if meta.get("baseline", False):
            base = centralized_baseline(run_dir)
        base_s = time.time() - t1
        report = build_report(run_dir, baseline=run_dir / "baseline.json" if base else None)
        last = state.history[-1]
        summary.append(
            {
                "variant": name,
                "rounds": state.round,
                "federated_accuracy": last.accuracy,
                "best_federated_accuracy": max(h.accuracy or 0 for h in state.history),
                "centralized_accuracy": base["accuracy"][-1] if base else None,
                "federated_wall_time_s": round(fed_s, 1),
                "baseline_wall_time_s": round(base_s, 1),
                "report": str(report.path),
                "job": dataclasses.asdict(job),
                "fleet": dataclasses.asdict(fleet),
            }
        )
    (root / "summary.json").write_text(
        json.dumps({"experiment": meta, "source": str(path), "variants": summary}, indent=2) + "\n"
    )
    return root
