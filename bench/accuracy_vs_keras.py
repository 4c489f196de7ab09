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


if __name__ == "__main__":
    raise SystemExit(main())
