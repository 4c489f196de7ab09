"""Fashion-MNIST, cnn, one epoch over 12,000 training images: interpreter vs Keras fit.

Same architecture, initial weights, optimizer, data order and batch size; scored on the
10,000 test images. Each seed sets both the initial weights (the export's seed) and the
data order. Records every (seed, runtime) row and, per runtime, the mean and spread of the
accuracies and of the gap in bench/results/accuracy_vs_keras.json.

    .venv/bin/python bench/accuracy_vs_keras.py [--seeds 0,1,2] [--train 12000]
        [--optimizer sgd --lr 0.05]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from seed_stats import spread

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="cnn")
    p.add_argument(
        "--train", type=int, default=12_000, help="training images (the first N of the file)"
    )
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--runtimes", default="ai-edge-litert,tensorflow")
    p.add_argument(
        "--seeds", default="0,1,2", help="comma-separated: initial weights and data order"
    )
    p.add_argument("--out", default=str(ROOT / "bench/results/accuracy_vs_keras.json"))
    args = p.parse_args()

    import numpy as np

    from edge_client.data import load_dataset
    from model_export.compare import compare_with_keras
    from model_export.export import ExportConfig, export_model
    from model_export.optimizers import OptimizerConfig

    train = load_dataset("fashion-mnist", "train").subset(np.arange(args.train))
    test = load_dataset("fashion-mnist", "test")
    rows = []
    for seed in (int(x) for x in args.seeds.split(",")):
        result = export_model(
            ExportConfig(args.model, optimizer=OptimizerConfig(args.optimizer, args.lr), seed=seed)
        )
        for runtime in args.runtimes.split(","):
            t0 = time.time()
            c = compare_with_keras(result, train, test, seed=seed, runtime=runtime)
            rows.append(
                {
                    "seed": seed,
                    "runtime": c.runtime,
                    "interpreter_accuracy": c.interpreter_accuracy,
                    "keras_fit_accuracy": c.keras_accuracy,
                    "gap_points": c.gap_points,
                    "signed_gap_points": 100 * (c.interpreter_accuracy - c.keras_accuracy),
                    "train_samples": c.train_samples,
                    "test_samples": c.test_samples,
                    "seconds": round(time.time() - t0, 1),
                }
            )
            print(
                f"seed {seed} {c.runtime:24s} interpreter {100 * c.interpreter_accuracy:.2f} %"
                f"  keras fit {100 * c.keras_accuracy:.2f} %  gap {c.gap_points:.2f} points",
                flush=True,
            )
    summary = summarise(rows)
    for s in summary:
        print(
            f"{s['runtime']:24s} over {s['seeds']} seeds: interpreter "
            f"{s['interpreter_accuracy']['mean']:.2f} %, keras fit "
            f"{s['keras_fit_accuracy']['mean']:.2f} %, gap {s['gap_points']['mean']:.2f} "
            f"points (min {s['gap_points']['min']:.2f}, max {s['gap_points']['max']:.2f}, "
            f"sd {s['gap_points']['sd']:.2f})",
            flush=True,
        )
    record = {
        "command": "python bench/accuracy_vs_keras.py " + " ".join(sys.argv[1:]),
        "model": args.model,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "epochs": 1,
        "seeds": sorted({r["seed"] for r in rows}),
        "rows": rows,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


def summarise(rows: list[dict]) -> list[dict]:
    """Per runtime: mean, sample sd, min and max over the seeds, in percent / points."""
    out = []
    for runtime in dict.fromkeys(r["runtime"] for r in rows):
        mine = [r for r in rows if r["runtime"] == runtime]
        out.append(
            {
                "runtime": runtime,
                "seeds": len(mine),
                "interpreter_accuracy": spread([100 * r["interpreter_accuracy"] for r in mine]),
                "keras_fit_accuracy": spread([100 * r["keras_fit_accuracy"] for r in mine]),
                "gap_points": spread([r["gap_points"] for r in mine]),
                "signed_gap_points": spread([r["signed_gap_points"] for r in mine]),
            }
        )
    return out


def _gap(points: float) -> str:
    g = f"{points:.2f}"
    return f"+{g}" if points > 0 and g != "0.00" else g


def _header(runtime: str) -> str:
    """'tensorflow 2.21.0' -> 'tf.lite, TensorFlow 2.21' (its interpreter)."""
    name, version = runtime.rsplit(" ", 1)
    if name == "tensorflow":
        return f"tf.lite, TensorFlow {'.'.join(version.split('.')[:2])}"
    return runtime


def table(record: dict) -> str:
    """docs/benchmarks.md's table: every seed, then the mean (sd; min-max) over the seeds."""
    runtimes = [s["runtime"] for s in record["summary"]]
    by = {(r["seed"], r["runtime"]): r for r in record["rows"]}
    lines = [
        "| seed | "
        + " | ".join(f"interpreter ({_header(rt)})" for rt in runtimes)
        + " | Keras fit | gap (interpreter − Keras) |",
        "|---" * (len(runtimes) + 3) + "|",
    ]
    for seed in record["seeds"]:
        rows = [by[seed, rt] for rt in runtimes]
        gaps = " / ".join(dict.fromkeys(_gap(r["signed_gap_points"]) for r in rows))
        accs = " | ".join(f"{100 * r['interpreter_accuracy']:.2f} %" for r in rows)
        keras = f"{100 * rows[0]['keras_fit_accuracy']:.2f} %"
        lines.append(f"| {seed} | {accs} | {keras} | {gaps} points |")
    s0 = record["summary"][0]
    mean = lambda d: f"{d['mean']:.2f} % ({d['sd']:.2f})"
    g = s0["signed_gap_points"]
    gap = f"{_gap(g['mean'])} points (sd {g['sd']:.2f}; {g['min']:.2f}–{g['max']:.2f})"
    accs = " | ".join(mean(s["interpreter_accuracy"]) for s in record["summary"])
    lines.append(
        f"| **mean (sd; min–max)** | {accs} | {mean(s0['keras_fit_accuracy'])} | **{gap}** |"
    )
    return "\n".join(lines)


def claims(record: dict) -> list[str]:
    """The phrases of the section's prose that quote the record."""
    by_seed: dict[int, set[float]] = {}
    for r in record["rows"]:
        by_seed.setdefault(r["seed"], set()).add(r["interpreter_accuracy"])
    same = all(len(accs) == 1 for accs in by_seed.values())
    s0 = record["summary"][0]
    gap, acc = s0["signed_gap_points"], s0["interpreter_accuracy"]
    return [
        "Both interpreters give the same accuracy for every seed"
        if same
        else "The interpreters differ",
        f"The gap between the two ways of training ({gap['mean']:.2f} points on average, at "
        f"most {gap['max']:.2f})",
        f"(sd {acc['sd']:.1f} points, {acc['min']:.2f}–{acc['max']:.2f} %)",
        f"sd is the sample standard deviation over the {len(record['seeds'])} seeds",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
