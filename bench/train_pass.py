"""One timed pass of training over a stream of batches, measured the same way for every side.

``measure`` times a call in wall time (``time.perf_counter``) and CPU time of the whole
process (``time.process_time``) and counts the involuntary context switches (how often
other processes took the core). ``interpreter_pass`` feeds the exported model's ``train``
signature one batch after another, in order, from the arrays given.

Run as a script by the board environment (tflite-runtime 2.14 needs numpy<2, so it cannot
share the process with TensorFlow), it is a worker the benchmark drives over stdin:

    .venv-board/bin/python bench/train_pass.py MODEL_DIR STREAM.npz RUNTIME

prints one JSON line when the model is loaded, then one per ``pass`` line it reads
(``quit`` ends it). No TensorFlow here: the board side imports only edge_client.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from edge_client.trainable_model import TrainableModel  # noqa: E402

T = TypeVar("T")


def measure(fn: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """``fn()`` and its wall time, CPU time of this process and involuntary switches."""
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    w1, c1 = time.perf_counter(), time.process_time()
    r1 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
    return out, {"wall_s": w1 - w0, "cpu_s": c1 - c0, "involuntary_switches": r1 - r0}


def interpreter_pass(model: TrainableModel, x: np.ndarray, y: np.ndarray, lr: float) -> dict:
    """Train on x[0:b], x[b:2b], ... (len(x) a multiple of the batch size); time the loop."""
    b = model.manifest.batch_size
    steps = len(x) // b

    def run() -> float:
        total = 0.0
        for i in range(0, steps * b, b):
            total += model.train_batch(x[i : i + b], y[i : i + b], lr)
        return total / steps

    loss, times = measure(run)
    return {"samples": steps * b, "mean_loss": loss, **times}


def process_facts() -> dict[str, Any]:
    """What this process runs on: CPUs it may use, its thread count, numpy's version."""
    threads = len(os.listdir("/proc/self/task")) if Path("/proc/self/task").exists() else None
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpus": cpus, "threads": threads, "numpy": np.__version__}


def _worker(model_dir: str, stream: str, runtime: str) -> int:
    model = TrainableModel.from_dir(model_dir, runtime=runtime, num_threads=1)
    data = np.load(stream)
    x, y = data["x"], data["y"]
    lr = float(model.manifest.hyperparameters["lr"])
    print(json.dumps({"ready": True, "version": model.describe(), **process_facts()}), flush=True)
    for line in sys.stdin:
        if line.strip() == "quit":
            break
        row = interpreter_pass(model, x, y, lr)
        print(json.dumps({**row, "threads": process_facts()["threads"]}), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(f"usage: {sys.argv[0]} MODEL_DIR STREAM.npz RUNTIME", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(_worker(*sys.argv[1:]))
