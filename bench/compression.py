"""Bytes on the wire and accuracy cost of update/global-weight encodings.

Runs the README job (Fashion-MNIST, cnn, 5 simulated boards, file-order split) once per
encoding, all in one invocation, and records bench/results/compression.json:

    .venv/bin/python bench/compression.py [--rounds 20] [--encodings float32,float16,int8]

Bytes are per device per round (update up, global weights down), chunk headers included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(encoding: str, rounds: int, out_root: Path) -> dict:
    run_dir = out_root / encoding
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
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    up = sum(m["bytes_up"] / len(m["participants"]) for m in metrics) / len(metrics)
    down = sum(m["bytes_down"] / len(m["selected"]) for m in metrics) / len(metrics)
    return {
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
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/compression.json")
    args = p.parse_args()
    out_root = ROOT / "runs" / f"bench-compression-{time.strftime('%Y%m%d-%H%M%S')}"
    rows = []
    for enc in args.encodings.split(","):
        rows.append(run(enc, args.rounds, out_root))
        r = rows[-1]
        print(
            f"{enc:8s} accuracy {100 * r['final_accuracy']:.2f} %  up {r['bytes_up_per_device_round'] / 1e6:.3f} MB"
            f"  down {r['bytes_down_per_device_round'] / 1e6:.3f} MB per device per round",
            flush=True,
        )
    base = next((r for r in rows if r["encoding"] == "float32"), None)
    if base:
        for r in rows:
            r["bytes_ratio_vs_float32"] = (
                base["bytes_up_per_device_round"] / r["bytes_up_per_device_round"]
            )
            r["accuracy_cost_points"] = 100 * (base["final_accuracy"] - r["final_accuracy"])
    record = {
        "command": "python bench/compression.py " + " ".join(sys.argv[1:]),
        "rounds": args.rounds,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
