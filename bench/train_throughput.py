"""On-device training throughput against Keras ``fit``, both measured the same way.

Sides, per architecture: Keras ``fit`` of the same architecture (same initial weights,
optimizer, batch size), and the exported model's ``train`` signature through
``edge_client.trainable_model.TrainableModel`` in ai-edge-litert, tf.lite and tflite-runtime
2.14 (the board environment, a worker subprocess: it needs numpy<2).

How both sides are measured alike:
- the same stream: N real training images (Fashion-MNIST for 28x28x1 models, CIFAR-10 for
  32x32x3), a fixed-seed shuffled subset, normalized as the manifest says, fed in order in
  batches of the same size. Keras gets one ``fit(x, y, batch_size=b, epochs=1,
  shuffle=False)`` over the whole array per pass; the interpreter ``train_batch`` on
  x[0:b], x[b:2b], ... One pass = one repetition of one side.
- one thread, one core: TensorFlow intra-op and inter-op threads set to 1 before any op,
  interpreters made with num_threads=1, OMP/OpenBLAS/MKL limited to 1 thread, and every
  thread of the process (and so the board worker, which inherits it) pinned to the same core
  with ``os.sched_setaffinity`` (``--core``; checked again at the end).
- repetition 0 of every side is warm-up (Keras traces its train function there) and is
  excluded; repetitions 1..R are interleaved between sides, the order rotated each time, so
  machine noise hits all sides alike.
- wall time (``time.perf_counter``) is the headline, CPU time of the process
  (``time.process_time``) the second column; the load average is recorded before, after and
  at every pass. For Keras, the time inside the epoch (first batch begin to last batch end,
  by callback) is recorded too: the rest of a ``fit`` call is its per-call set-up.
- the physical limit: FLOPs per training sample from the Keras model's layer shapes, times
  samples/s, as a share of one core's FP32 peak (``bench/compute_limit.py`` says how both are
  derived).

    .venv/bin/python bench/train_throughput.py [--archs mlp,cnn,cifar_cnn] [--samples 12000]
        [--reps 5] [--core N] [--board-python .venv-board/bin/python]
        [--out bench/results/train_throughput.json]

The sides are in ``bench/train_sides.py``, the timed interpreter pass (and the board
worker) in ``bench/train_pass.py``. Writes every pass as a raw row, the summaries recomputed from them, and the machine,
versions, threads, pinning, peak derivation and load averages.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
if __name__ == "__main__":  # before numpy loads its BLAS: one thread everywhere
    os.environ.update(dict.fromkeys(THREAD_VARS, "1"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench import compute_limit  # noqa: E402
from bench.train_pass import process_facts  # noqa: E402
from bench.train_sides import IN_PROCESS, BoardSide, InterpreterSide, KerasSide  # noqa: E402
from edge_client.errors import EdgeFLError  # noqa: E402

DATA_FOR_SHAPE = {(28, 28, 1): "fashion-mnist", (32, 32, 3): "cifar10"}


def pin_all_threads(core: int) -> int:
    """Pin every thread of this process to ``core``; threads made later inherit it."""
    tids = [int(t) for t in os.listdir("/proc/self/task")]
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):  # the thread ended meanwhile
            os.sched_setaffinity(tid, {core})
    return len(tids)


def thread_affinities() -> dict[str, int]:
    """How many threads of this process may run on which CPUs (``"0"``, ``"0,1"``, ...)."""
    counts: dict[str, int] = {}
    if not hasattr(os, "sched_getaffinity") or not Path("/proc/self/task").exists():
        return counts
    for tid in os.listdir("/proc/self/task"):
        try:
            key = ",".join(map(str, sorted(os.sched_getaffinity(int(tid)))))
        except ProcessLookupError:
            continue
        counts[key] = counts.get(key, 0) + 1
    return counts


def make_stream(manifest: Any, samples: int, seed: int, cache: dict) -> tuple[str, Any, Any]:
    """(data set, x, y): a fixed-seed shuffled subset of whole batches, normalized."""
    from edge_client.data import Normalization, load_dataset

    name = DATA_FOR_SHAPE.get(tuple(manifest.input_shape))
    if name is None:
        raise EdgeFLError(
            f"no data set for input shape {manifest.input_shape}: use 28x28x1 or 32x32x3"
        )
    if name not in cache:
        cache[name] = load_dataset(name, "train", num_classes=manifest.classes)
    ds, b = cache[name], manifest.batch_size
    n = min(samples, len(ds)) // b * b
    order = np.random.default_rng(seed).permutation(len(ds))[:n]
    x = Normalization.from_dict(manifest.normalization)(ds.x[order])  # (n, H, W, C) float32
    return name, x, ds.y[order].astype(np.int32)  # (n,)


def run_interleaved(arch: str, sides: list, reps: int) -> list[dict[str, Any]]:
    """Repetition 0 (warm-up) then 1..reps, each side once per repetition, order rotated."""
    rows = []
    for rep in range(reps + 1):
        k = rep % len(sides)
        for position, side in enumerate(sides[k:] + sides[:k]):
            load = os.getloadavg()[0]
            row = {
                "arch": arch,
                "side": side.name,
                "rep": rep,
                "warmup": rep == 0,
                "position": position,
                "loadavg_1m": load,
                **side.run(),
            }
            rows.append(row)
            print(
                f"  {arch:9s} rep {rep}{' (warm-up)' if rep == 0 else ''} {side.name:15s} "
                f"{row['samples'] / row['wall_s']:9.0f}/s wall {row['samples'] / row['cpu_s']:9.0f}/s cpu "
                f"load {load:.2f}",
                flush=True,
            )
    return rows


def summarize(rows: list[dict], flops: dict[str, dict], peak_gflops: float) -> dict[str, Any]:
    """Per architecture and side: samples/s min, median, best in wall and CPU time; ratios to
    Keras; share of peak (FLOPs per sample x samples/s / peak)."""
    out: dict[str, Any] = {}
    for arch in dict.fromkeys(r["arch"] for r in rows):
        timed = [r for r in rows if r["arch"] == arch and not r["warmup"]]
        per: dict[str, Any] = {}
        for side in dict.fromkeys(r["side"] for r in timed):
            mine = [r for r in timed if r["side"] == side]
            s: dict[str, Any] = {"repetitions": len(mine)}
            for clock in ("wall", "cpu"):
                sps = [r["samples"] / r[f"{clock}_s"] for r in mine]
                s[clock] = {"min": min(sps), "median": statistics.median(sps), "best": max(sps)}
            if side == "keras_fit":
                sps = [r["samples"] / r["in_epoch_wall_s"] for r in mine]
                s["in_epoch_wall"] = {"median": statistics.median(sps), "best": max(sps)}
            f = flops[arch]["training_flops"]
            s["share_of_peak"] = {
                f"{clock}_{stat}": f * s[clock][stat] / (peak_gflops * 1e9)
                for clock in ("wall", "cpu")
                for stat in ("median", "best")
            }
            per[side] = s
        keras = per.get("keras_fit")
        for s in per.values():
            if keras:
                s["vs_keras"] = {
                    f"{clock}_{stat}": s[clock][stat] / keras[clock][stat]
                    for clock in ("wall", "cpu")
                    for stat in ("median", "best")
                }
        out[arch] = per
    return out


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--archs", default="mlp,cnn,cifar_cnn")
    p.add_argument("--samples", type=int, default=12_000, help="images per pass (whole batches)")
    p.add_argument("--reps", type=int, default=5, help="timed passes per side, after one warm-up")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01, help="SGD learning rate of both sides")
    p.add_argument("--seed", type=int, default=0, help="initial weights and data order")
    p.add_argument(
        "--core",
        type=int,
        default=None,
        help="CPU to pin to (default: the last allowed; -1: no pinning)",
    )
    p.add_argument("--board-python", default=str(ROOT / ".venv-board/bin/python"))
    p.add_argument("--out", default=str(ROOT / "bench/results/train_throughput.json"))
    args = p.parse_args()
    # Linux only (sched_setaffinity); elsewhere the bench runs unpinned and says so
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [-1]
    core = allowed[-1] if args.core is None else args.core
    if core != -1 and core not in allowed:
        p.error(f"--core {core} is not one of this process's CPUs {allowed}")
    if args.reps < 1 or args.samples < args.batch_size:
        p.error("--reps must be at least 1 and --samples at least one batch")
    try:
        return _run(args, core)
    except EdgeFLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, core: int) -> int:
    load_before = os.getloadavg()
    threads_pinned = pin_all_threads(core) if core != -1 else 0
    import tensorflow as tf  # noqa: I001 (after pinning: its thread pools inherit the core)

    tf.config.threading.set_intra_op_parallelism_threads(1)  # before any op runs
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from model_export.export import ExportConfig, export_model
    from model_export.optimizers import OptimizerConfig

    info = compute_limit.cpu_info()
    probes = [compute_limit.probe(runs=2)]
    rows: list[dict[str, Any]] = []
    flops: dict[str, dict] = {}
    archs: dict[str, Any] = {}
    versions: dict[str, str] = {}
    cache: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.archs.split(","):
            d = Path(tmp) / arch
            opt = OptimizerConfig("sgd", args.lr)
            result = export_model(
                ExportConfig(arch, batch_size=args.batch_size, optimizer=opt, seed=args.seed), d
            )
            data, x, y = make_stream(result.manifest, args.samples, args.seed, cache)
            np.savez(d / "stream.npz", x=x, y=y)
            keras = KerasSide(result, x, y)
            sides: list[Any] = [keras] + [InterpreterSide(n, d, x, y) for n in IN_PROCESS]
            if Path(args.board_python).exists():
                sides.append(BoardSide(args.board_python, d, d / "stream.npz"))
            flops[arch] = compute_limit.training_flops(keras.model)
            archs[arch] = {
                "parameters": result.manifest.parameters,
                "data": data,
                "samples_per_pass": len(x),
                "keras_jit_compile": keras.jit_compile,
                "flops": flops[arch],
            }
            print(
                f"{arch}: {len(x)} {data} images, {flops[arch]['training_flops'] / 1e6:.2f} MFLOP/sample",
                flush=True,
            )
            try:
                rows += run_interleaved(arch, sides, args.reps)
            finally:
                for side in sides:
                    side.close()
            versions.update({s.name: s.version for s in sides})
            board = next((s for s in sides if isinstance(s, BoardSide)), None)
            if board:
                versions["board_numpy"] = board.facts["numpy"]
                archs[arch]["board_worker"] = {k: board.facts[k] for k in ("cpus", "threads")}
    probes.append(compute_limit.probe(runs=2))
    peak = compute_limit.peak(info, probes)
    summary = summarize(rows, flops, peak["gflops"])
    record = {
        "command": shlex.join([".venv/bin/python", "bench/train_throughput.py", *sys.argv[1:]]),
        "machine": {
            **{k: v for k, v in info.items() if k != "all_flags"},
            "cores": os.cpu_count(),
            "kernel": platform.release(),
        },
        "versions": {"python": platform.python_version(), "numpy": np.__version__, **versions},
        "method": {
            "batch_size": args.batch_size,
            "optimizer": f"SGD lr={args.lr}",
            "seed": args.seed,
            "reps": args.reps,
            "warmup_reps": 1,
            "keras": "one fit(x, y, batch_size, epochs=1, shuffle=False) per pass",
            "interpreter": "train_batch on consecutive slices of the same x, y per pass",
        },
        "threads": {
            "tensorflow_intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "tensorflow_inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
            "interpreter_num_threads": 1,
            "env": {v: os.environ.get(v) for v in THREAD_VARS},
            "onednn": os.environ.get(
                "TF_ENABLE_ONEDNN_OPTS", "TensorFlow default (on for x86 Linux)"
            ),
            "pinned_core": None if core == -1 else core,
            "pinning": "os.sched_setaffinity on every thread of the process at start "
            f"({threads_pinned} threads then); later threads and the board worker inherit it",
            "threads_by_cpus_at_end": thread_affinities(),
            "process_at_end": process_facts(),
        },
        "peak": peak,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "archs": archs,
        "summary": summary,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(
        f"peak {peak['gflops']} GFLOP/s ({peak['formula']}); measured FMA {peak['measured_fma_gflops']}"
    )
    for arch, per in summary.items():
        for side, s in per.items():
            print(_format(arch, side, s))
    print(f"load average before {load_before}, after {os.getloadavg()}; written {args.out}")
    return 0


def _format(arch: str, side: str, s: dict[str, Any]) -> str:
    w, c, share = s["wall"], s["cpu"], s["share_of_peak"]
    vs = s.get("vs_keras", {})
    return (
        f"{arch:9s} {side:15s} wall {w['median']:8.0f}/s median {w['best']:8.0f}/s best | "
        f"cpu {c['median']:8.0f}/s median {c['best']:8.0f}/s best | "
        f"vs keras {vs.get('wall_median', 0):.2f}x median {vs.get('wall_best', 0):.2f}x best | "
        f"{100 * share['wall_best']:.0f}% of peak"
    )


if __name__ == "__main__":
    raise SystemExit(main())
