"""Bytes on the wire and accuracy cost of update/global-weight encodings.

Runs the README job (Fashion-MNIST, cnn, 5 simulated boards, file-order split) once per
encoding and seed (``fedcoord simulate --seed``: initial weights and device selection), all
in one invocation, and records bench/results/compression.json: every (seed, encoding) run,
each encoding's accuracy cost against float32 of the same seed, and per encoding the mean,
sample sd, min and max of that cost over the seeds:

    .venv/bin/python bench/compression.py [--rounds 20] [--encodings float32,float16,int8]
        [--seeds 0]

Bytes are per device per round (update up, global weights down), chunk headers included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from seed_stats import spread

ROOT = Path(__file__).resolve().parents[1]


def run(encoding: str, rounds: int, out_root: Path, seed: int) -> dict:
    run_dir = out_root / f"{encoding}-seed{seed}"
    t0 = time.time()
    subprocess.run(
        [
            str(ROOT / ".venv/bin/fedcoord"),
            "simulate",
            "--devices",
            "5",
            "--rounds",
            str(rounds),
            "--dataset",
            "fashion-mnist",
            "--partition",
            "sequential",
            "--encoding",
            encoding,
            "--run-dir",
            str(run_dir),
            "--job",
            f"compress-{encoding}",
            "--seed",
            str(seed),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    up = sum(m["bytes_up"] / len(m["participants"]) for m in metrics) / len(metrics)
    down = sum(m["bytes_down"] / len(m["selected"]) for m in metrics) / len(metrics)
    return {
        "seed": seed,
        "encoding": encoding,
        "final_accuracy": metrics[-1]["accuracy"],
        "best_accuracy": max(m["accuracy"] for m in metrics),
        "bytes_up_per_device_round": up,
        "bytes_down_per_device_round": down,
        "wall_time_s": round(time.time() - t0, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--encodings", default="float32,float16,int8")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (fedcoord simulate --seed)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/compression.json")
    args = p.parse_args()
    out_root = ROOT / "runs" / f"bench-compression-{time.strftime('%Y%m%d-%H%M%S')}"
    rows = []
    for seed in (int(x) for x in args.seeds.split(",")):
        for enc in args.encodings.split(","):
            rows.append(run(enc, args.rounds, out_root, seed))
            r = rows[-1]
            print(
                f"seed {seed} {enc:8s} accuracy {100 * r['final_accuracy']:.2f} %  up "
                f"{r['bytes_up_per_device_round'] / 1e6:.3f} MB  down "
                f"{r['bytes_down_per_device_round'] / 1e6:.3f} MB per device per round",
                flush=True,
            )
        base = next((r for r in rows if r["seed"] == seed and r["encoding"] == "float32"), None)
        if base:
            for r in rows:
                if r["seed"] == seed:
                    r["bytes_ratio_vs_float32"] = (
                        base["bytes_up_per_device_round"] / r["bytes_up_per_device_round"]
                    )
                    r["accuracy_cost_points"] = 100 * (base["final_accuracy"] - r["final_accuracy"])
    summary = summarise(rows)
    for e in summary:
        print(
            f"{e['encoding']:8s} over {e['seeds']} seeds: accuracy {e['final_accuracy']['mean']:.2f} %"
            + (
                f", cost {e['accuracy_cost_points']['mean']:.2f} points (sd "
                f"{e['accuracy_cost_points']['sd']:.2f}, min {e['accuracy_cost_points']['min']:.2f},"
                f" max {e['accuracy_cost_points']['max']:.2f})"
                if "accuracy_cost_points" in e
                else ""
            ),
            flush=True,
        )
    record = {
        "command": "python bench/compression.py " + " ".join(sys.argv[1:]),
        "rounds": args.rounds,
        "seeds": sorted({r["seed"] for r in rows}),
        "rows": rows,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


def summarise(rows: list[dict]) -> list[dict]:
    """Per encoding over the seeds: final accuracy (percent) and cost (points) statistics."""
    out = []
    for enc in dict.fromkeys(r["encoding"] for r in rows):
        mine = [r for r in rows if r["encoding"] == enc]
        entry = {
            "encoding": enc,
            "seeds": len(mine),
            "final_accuracy": spread([100 * r["final_accuracy"] for r in mine]),
        }
        if all("accuracy_cost_points" in r for r in mine):
            entry["accuracy_cost_points"] = spread([r["accuracy_cost_points"] for r in mine])
        out.append(entry)
    return out


HEADLINE = "int8"  # the encoding the doc's figures lead with (in bold)


def _cost(points: float) -> str:
    return f"{points:.2f} points"


def table_one_seed(record: dict) -> str:
    """docs/benchmarks.md's first table: one run per encoding (bytes, accuracy, cost)."""
    lines = [
        "| encoding | bytes per device per round (up / down) | vs float32 | final accuracy | cost |",
        "|---|---|---|---|---|",
    ]
    for r in record["rows"]:
        bold = (lambda s: f"**{s}**") if r["encoding"] == HEADLINE else (lambda s: s)
        ratio = bold(f"{r['bytes_ratio_vs_float32']:.2f}x")
        cost = "—" if r["encoding"] == "float32" else bold(_cost(r["accuracy_cost_points"]))
        lines.append(
            f"| {r['encoding']} | {r['bytes_up_per_device_round'] / 1e6:.3f} MB / "
            f"{r['bytes_down_per_device_round'] / 1e6:.3f} MB | {ratio} | "
            f"{100 * r['final_accuracy']:.2f} % | {cost} |"
        )
    return "\n".join(lines)


def table_seeds(record: dict) -> str:
    """docs/benchmarks.md's second table: per encoding over the seeds, from ``summary``."""
    seeds = ", ".join(map(str, record["seeds"]))
    lines = [
        f"| encoding ({record['rounds']} rounds, seeds {seeds}) | final accuracy, mean (sd) | "
        "cost vs float32 of the same seed: mean (sd) [min, max] |",
        "|---|---|---|",
    ]
    for e in record["summary"]:
        a, c = e["final_accuracy"], e.get("accuracy_cost_points")
        cost = (
            "—"
            if e["encoding"] == "float32" or c is None
            else f"{_cost(c['mean'])} ({c['sd']:.2f}) [{c['min']:.2f}, {c['max']:.2f}]"
        )
        lines.append(f"| {e['encoding']} | {a['mean']:.2f} % ({a['sd']:.2f}) | {cost} |")
    return "\n".join(lines)


def claims(one_seed: dict, seeds: dict) -> list[str]:
    """The phrases of the section's prose that quote the two records."""
    one = {r["encoding"]: r for r in one_seed["rows"]}
    many = {e["encoding"]: e for e in seeds["summary"]}
    lossy = [e for e in many.values() if e["encoding"] != "float32"]
    noise = all(
        e["accuracy_cost_points"]["sd"] > abs(e["accuracy_cost_points"]["mean"]) for e in lossy
    )
    head = one[HEADLINE]
    met = head["bytes_ratio_vs_float32"] >= 3.5 and head["accuracy_cost_points"] < 0.5
    single = [one[e]["accuracy_cost_points"] for e in ("int8", "float16")]
    worst = [many[e]["accuracy_cost_points"]["max"] for e in ("int8", "float16")]
    acc = [many[e]["final_accuracy"] for e in ("int8", "float16")]
    ranges = [a["max"] - a["min"] for a in acc]
    above = all(s > w for s, w in zip(single, worst))
    within = all(s <= r for s, r in zip(single, ranges))
    pair = lambda xs: " / ".join(f"{x:.2f}" for x in xs)
    return [
        f"On one seed and {one_seed['rounds']} rounds (the table;",
        "at least 3.5x fewer bytes than float32 with less than 0.5 points lost"
        if met
        else "the target (3.5x fewer bytes, under 0.5 points lost) is not met",
        f"Over **{len(seeds['seeds'])} seeds** the accuracy cost is "
        + (
            "**not distinguishable from zero**: the seed-to-seed spread is larger than the cost"
            if noise
            else "distinguishable from zero"
        ),
        f"At {seeds['rounds']} rounds float32 is already at "
        f"{many['float32']['final_accuracy']['mean']:.2f} % against "
        f"{100 * one['float32']['final_accuracy']:.2f} % after {one_seed['rounds']} (one seed)",
        f"The single-seed {pair(single)} points of the table ({HEADLINE} / float16) are "
        + ("larger than" if above else "not larger than")
        + f" any seed's cost at {seeds['rounds']} rounds (at most {pair(worst)} points) and "
        + ("within" if within else "outside")
        + f" the seeds' spread of final accuracy ({pair(ranges)} points from the worst seed "
        "to the best)",
    ]


if __name__ == "__main__":
    sys.exit(main())
