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
        "loss_per_round": [m["loss"] for m in metrics],
        "round_wall_time_s_per_round": durations,
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


SHOWN_ROUNDS = (1, 5, 10)  # and the last: the accuracies docs/benchmarks.md's table quotes
DEMO_ROUNDS = (1, 2, 5)  # and the last: the rounds README.md's sample output shows


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.2f} %"


def table(record: dict) -> str:
    """docs/benchmarks.md's table of the README job, from its record."""
    acc, n = record["accuracy_per_round"], record["rounds"]
    w, b = record["round_wall_time_s"], record["bytes_per_device_per_round"]
    shown = [r for r in SHOWN_ROUNDS if r < n]
    accs = " / ".join([*(_pct(acc[r - 1]) for r in shown), f"**{_pct(acc[n - 1])}**"])
    return "\n".join(
        [
            "| figure | value |",
            "|---|---|",
            f"| global test accuracy after round {' / '.join(map(str, [*shown, n]))} | {accs} |",
            f"| first round at ≥ 90 % | {record['first_round_at_90_percent']} |",
            f"| wall time per round (median, min–max) | {w['median']:.1f} s "
            f"({w['min']:.1f}–{w['max']:.1f} s), on a machine shared with other jobs |",
            f"| wall time of the whole command (export, {n} rounds, final models) | "
            f"{record['total_wall_time_s']:.0f} s |",
            f"| bytes per device per round | {b['up'] / 1e6:.2f} MB up (update), "
            f"{b['down'] / 1e6:.2f} MB down (global weights) |",
        ]
    )


def safe_defaults_claims(safe: dict, base: dict) -> list[str]:
    """The phrases of docs/benchmarks.md on the run with the bounded-influence defaults."""
    same = safe["accuracy_per_round"] == base["accuracy_per_round"]
    mb = lambda r: tuple(f"{r['bytes_per_device_per_round'][k] / 1e6:.2f}" for k in ("up", "down"))
    up, down = mb(safe)
    return [
        f"final accuracy **{_pct(safe['final_accuracy'])}**, the "
        + ("same as" if safe["final_accuracy"] == base["final_accuracy"] else "unlike")
        + f" the record above ({_pct(base['final_accuracy'])}), and the "
        + ("same accuracy in every one of" if same else "accuracy differs in some of")
        + f" the {safe['rounds']} rounds",
        f"(median {safe['round_wall_time_s']['median']:.1f} s per round, "
        f"{safe['total_wall_time_s']:,.0f} s in all)",
        "the bytes per device per round are "
        + ("unchanged" if mb(safe) == mb(base) else "changed")
        + f" ({up} MB up, {down} MB down)",
    ]


def demo_claims(record: dict, devices: int = 5) -> list[str]:
    """What README.md's sample output of scripts/demo.sh shows that the record gives: per
    shown round its accuracy and the round's bytes up and down (all devices), the final line."""
    n, acc = record["rounds"], record["accuracy_per_round"]
    b = record["bytes_per_device_per_round"]
    out = [
        f"round {r:3d}/{n} devices {devices}/{devices} accuracy {_pct(acc[r - 1]):>7s} loss"
        for r in [*DEMO_ROUNDS, n]
    ]
    out.append(f"up {devices * b['up'] / 1e6:6.2f} MB down {devices * b['down'] / 1e6:6.2f} MB")
    out.append(f"done: {n} rounds, final accuracy {_pct(record['final_accuracy'])}")
    w = record["round_wall_time_s"]
    out.append(f"the record's rounds took {w['min']:.1f}–{w['max']:.1f} s")
    return out


if __name__ == "__main__":
    sys.exit(main())
