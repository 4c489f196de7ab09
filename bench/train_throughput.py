"""On-device training throughput per architecture and runtime, against Keras ``fit``.

Throughput is samples per CPU-second of the measuring process (``time.process_time``),
so other work on a shared machine does not skew the ratios; everything runs on one
thread.

Every figure comes from the same run on the same machine: samples/s of the exported
model's ``train`` signature in each TFLite runtime, and of Keras ``fit`` on the same
architecture, initial weights, optimizer and batch size, all on one CPU thread.

    .venv/bin/python bench/train_throughput.py [--archs mlp,cnn,cifar_cnn] [--seconds 4]
        [--board-python .venv-board/bin/python] [--out bench/results/train_throughput.json]

tflite-runtime 2.14 needs numpy<2, so it runs in the board environment (a subprocess)
when ``--board-python`` points at one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Run by the board interpreter: time the train signature of DIR for SECONDS.
_BOARD_SNIPPET = """
import sys, time, json, numpy as np
sys.path.insert(0, {root!r})
from edge_client.trainable_model import TrainableModel
m = TrainableModel.from_dir({d!r}, runtime="tflite-runtime", num_threads=1)
b = m.manifest.batch_size
rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (b, *m.manifest.input_shape)).astype(np.float32)
y = rng.integers(0, m.manifest.classes, b)
m.train_batch(x, y, 0.01)
n, t0 = 0, time.process_time()
while time.process_time() - t0 < {seconds}:
    m.train_batch(x, y, 0.01); n += 1
print(json.dumps({{"samples_per_s": n * b / (time.process_time() - t0), "version": m.runtime.version}}))
"""


def time_tflite(model_dir: Path, runtime: str, seconds: float) -> float:
    from edge_client.trainable_model import TrainableModel

    m = TrainableModel.from_dir(model_dir, runtime=runtime, num_threads=1)
    b = m.manifest.batch_size
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (b, *m.manifest.input_shape)).astype(np.float32)
    y = rng.integers(0, m.manifest.classes, b)
    m.train_batch(x, y, 0.01)  # warm-up: allocation
    n, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        m.train_batch(x, y, 0.01)
        n += 1
    return n * b / (time.process_time() - t0)


def time_board(python: str, model_dir: Path, seconds: float) -> float:
    code = _BOARD_SNIPPET.format(root=str(ROOT), d=str(model_dir), seconds=seconds)
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["samples_per_s"])


def time_keras(result, seconds: float) -> float:
    """Keras fit on the same architecture, initial weights, optimizer and batch size."""
    import tensorflow as tf

    from model_export import architectures
    from model_export.baseline import keras_twin
    from model_export.export import build_module

    model = keras_twin(result)
    m = result.manifest
    n = max(m.batch_size * 50, 2048)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (n, *m.input_shape)).astype(np.float32)
    y = rng.integers(0, m.classes, n)
    model.fit(x[: m.batch_size * 4], y[: m.batch_size * 4], batch_size=m.batch_size, verbose=0)
    done, t0 = 0, time.process_time()
    while time.process_time() - t0 < seconds:
        model.fit(x, y, batch_size=m.batch_size, epochs=1, verbose=0, shuffle=False)
        done += n
    del tf, architectures, build_module
    return done / (time.process_time() - t0)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--archs", default="mlp,cnn,cifar_cnn")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seconds", type=float, default=4.0, help="timing window per measurement")
    p.add_argument("--board-python", default=str(ROOT / ".venv-board/bin/python"))
    p.add_argument("--out", default=str(ROOT / "bench/results/train_throughput.json"))
    args = p.parse_args()

    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from model_export.export import ExportConfig, export_model
    from model_export.optimizers import OptimizerConfig

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            cfg = ExportConfig(
                arch, batch_size=args.batch_size, optimizer=OptimizerConfig("sgd", 0.01)
            )
            result = export_model(cfg, Path(tmp) / arch)
            row = {"arch": arch, "parameters": result.manifest.parameters}
            row["keras_fit"] = time_keras(result, args.seconds)
            row["ai-edge-litert"] = time_tflite(Path(tmp) / arch, "ai-edge-litert", args.seconds)
            row["tensorflow.lite"] = time_tflite(Path(tmp) / arch, "tensorflow", args.seconds)
            if Path(args.board_python).exists():
                row["tflite-runtime"] = time_board(
                    args.board_python, Path(tmp) / arch, args.seconds
                )
            rows.append(row)
            print(_format_row(row), flush=True)
    record = {
        "command": "python bench/train_throughput.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
        "batch_size": args.batch_size,
        "threads": 1,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


def _format_row(row: dict) -> str:
    keras = row["keras_fit"]
    parts = [f"{row['arch']:10s} keras fit {keras:9.0f}/s"]
    for rt in ("ai-edge-litert", "tflite-runtime", "tensorflow.lite"):
        if rt in row:
            parts.append(f"{rt} {row[rt]:9.0f}/s ({row[rt] / keras:4.2f}x keras)")
    return " | ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
