"""Wall time per round and bytes per device per round of the README's main job.

Runs the job (or summarises a finished run directory) and records
bench/results/readme_job.json:

    .venv/bin/python bench/readme_job.py                      # runs scripts/demo.sh's job
    .venv/bin/python bench/readme_job.py --from-run RUN_DIR   # summarises a finished run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = [
    "--devices",
    "5",
    "--rounds",
    "20",
    "--dataset",
    "fashion-mnist",
    "--partition",
    "sequential",
]


def summarise(run_dir: Path) -> dict:
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    durations = [m["duration_s"] for m in metrics]
    per_device_up = [m["bytes_up"] / max(1, len(m["participants"])) for m in metrics]
    per_device_down = [m["bytes_down"] / max(1, len(m["selected"])) for m in metrics]
    reached_90 = next((m["round"] for m in metrics if (m["accuracy"] or 0) >= 0.90), None)
    return {
        "rounds": len(metrics),
        "final_accuracy": metrics[-1]["accuracy"],
        "best_accuracy": max(m["accuracy"] or 0 for m in metrics),
        "first_round_at_90_percent": reached_90,
        "round_wall_time_s": {
            "mean": statistics.mean(durations),
            "median": statistics.median(durations),
            "min": min(durations),
            "max": max(durations),
        },
        "bytes_per_device_per_round": {
            "up": statistics.mean(per_device_up),
            "down": statistics.mean(per_device_down),
        },
        "samples_per_round": metrics[-1]["samples"],
        "accuracy_per_round": [m["accuracy"] for m in metrics],
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--from-run", type=Path, help="summarise this finished run directory instead of running"
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/readme_job.json")
    args = p.parse_args()
    record: dict = {"job": "fedcoord simulate " + " ".join(JOB)}
    if args.from_run:
        run_dir = args.from_run
    else:
        run_dir = ROOT / "runs" / f"bench-readme-{time.strftime('%Y%m%d-%H%M%S')}"
        t0 = time.time()
        subprocess.run(
            [str(ROOT / ".venv/bin/fedcoord"), "simulate", *JOB, "--run-dir", str(run_dir)],
            check=True,
        )
        record["total_wall_time_s"] = round(time.time() - t0, 1)
    record.update(summarise(run_dir))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    r = record
    print(
        f"{r['rounds']} rounds, final accuracy {100 * r['final_accuracy']:.2f} %, 90 % first at round "
        f"{r['first_round_at_90_percent']}; round wall time median {r['round_wall_time_s']['median']:.1f} s; "
        f"per device per round {r['bytes_per_device_per_round']['up'] / 1e6:.2f} MB up, "
        f"{r['bytes_per_device_per_round']['down'] / 1e6:.2f} MB down"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
