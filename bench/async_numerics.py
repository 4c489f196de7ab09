"""FedBuff against synchronous FedAvg on a virtual clock: the numerics, without the machine.

bench/fleet.py measures the round modes in wall time, on real processes behind throttled
links; its figures move with the machine's load (a loaded 2-core machine flattens the
fleet's speeds). This bench keeps only what decides accuracy per update and per second of
a fleet: every board trains for real (its own partition of Fashion-MNIST, the board's
``train_local`` through the TFLite interpreter, one update at a time), but a training
*takes* the board's cycle on a virtual clock (its estimated compute x its slow-down factor
+ its link's transfers: coordinator/fleet/budget.py, the figures bench/fleet.py's
simulator paces its boards to), and the coordinator's own Buffer folds the updates (the
influence bounds, the per-device share, FedAvg, the server step). Availability and
dropouts are left out: every board is always online and always delivers.

    synchronous: each round selects 10 boards at random (--k) and lasts as long as the
                 slowest of them; FedAvg of their updates
    FedBuff:     every board trains continuously from the newest version when it starts;
                 each B updates (--variants kB) make a version, a change re-based on it and
                 weighted by 1/(1+s)^a (s: versions behind; a = 0.5 unless aX), at most
                 --max-weight-share of a buffer from one board, beyond --max-staleness wasted

    .venv/bin/fedcoord export --model cnn --optimizer adam --lr 0.001 --out models/cnn-adam
    .venv/bin/python bench/async_numerics.py --model-dir models/cnn-adam --variants k5,k2 \
        --seeds 0,1,2 --partitions iid,dirichlet:0.5 --horizon 120 --jobs 2
    .venv/bin/python bench/async_numerics.py --model-dir models/cnn-adam --quick   # ~1 min

Prints per partition and mode the time to each target accuracy (virtual seconds; median and
range over the seeds) and the accuracy after as many updates as synchronous FedAvg made
within the horizon; records bench/results/async_numerics.json: the settings, the
calibration (this machine's train step, from which every board's cycle follows), every
version's (time, updates, accuracy) and the summary ``table()`` renders for
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from async_figures import Variant, table  # noqa: E402

from coordinator.aggregation import Strategy  # noqa: E402
from coordinator.buffer import Buffer, Checked, device_limit  # noqa: E402
from coordinator.evaluation import Evaluator  # noqa: E402
from coordinator.fleet.budget import Calibration, calibrate, estimate_demand  # noqa: E402
from coordinator.fleet.spec import load_fleet  # noqa: E402
from coordinator.influence import InfluenceBounds  # noqa: E402
from coordinator.late import stale_change, staleness_weight  # noqa: E402
from coordinator.robust_strategies import delta_norm  # noqa: E402
from coordinator.strategies import make_strategy  # noqa: E402
from edge_client.data import Normalization, load_dataset, partition  # noqa: E402
from edge_client.local_training import RoundSettings, train_local  # noqa: E402
from edge_client.manifest import Manifest  # noqa: E402
from edge_client.protocol import DeviceMetrics, FoldedUpdate  # noqa: E402
from edge_client.trainable_model import TrainableModel  # noqa: E402

Weights = dict[str, np.ndarray]


@dataclass
class Run:
    partition: str
    mode: str
    seed: int
    points: list[dict[str, float]] = field(default_factory=list)  # one per global model
    wasted: int = 0  # trained, then too stale to fold
    restarted: int = 0  # trainings started over on a newer version (variant rP)

    def time_to(self, target: float) -> float | None:
        return next((p["t"] for p in self.points if p["accuracy"] >= target), None)

    def accuracy_at(self, updates: int) -> float | None:
        """Accuracy of the last global model made from at most ``updates`` updates."""
        done = [p for p in self.points if p["updates"] <= updates]
        return done[-1]["accuracy"] if done else None


class Fleet:
    """The boards: data, cycles, one interpreter for all (weights set per training)."""

    def __init__(
        self, args: argparse.Namespace, model_dir: Path, partition_: str, seed: int,
        cal: Calibration,
    ) -> None:  # fmt: skip
        manifest = Manifest.load(model_dir / "manifest.json")
        tflite = (model_dir / "model.tflite").read_bytes()
        self.partition = partition_
        self.model = TrainableModel(tflite, manifest, num_threads=1)
        self.norm = Normalization.from_dict(manifest.normalization)
        train = load_dataset("fashion-mnist", "train")
        spec = load_fleet(args.fleet)
        self.ids = [b.device_id for b in spec.boards]
        parts = partition(train.y, len(self.ids), partition_, seed)
        self.data = {d: train.subset(idx) for d, idx in zip(self.ids, parts, strict=True)}
        samples = {d: len(x) for d, x in self.data.items()}
        demand = estimate_demand(spec, cal, samples, epochs=args.epochs, mode="continuous")
        self.cycle = {b.device_id: b.busy_s for b in demand.boards}
        self.settings = RoundSettings(args.epochs, float(manifest.hyperparameters["lr"]))
        self.evaluator = Evaluator(
            TrainableModel(tflite, manifest, num_threads=1), load_dataset("fashion-mnist", "test")
        )
        self.trainings = 0

    def train(self, device: str, weights: Weights, tag: int) -> Weights:
        self.model.set_weights(weights)
        result = train_local(
            self.model, self.data[device], self.settings, self.norm,
            rng=[zlib.crc32(device.encode()), tag], evaluate=False,
        )  # fmt: skip
        self.trainings += 1
        return result.weights

    def accuracy(self, weights: Weights) -> float:
        return float(self.evaluator.evaluate(weights).accuracy)


def checked(
    device: str, grant: int, base_round: int, staleness: int, weight: float,
    samples: int, master: Weights, base: Weights, trained: Weights, mode: str = "from-base",
) -> Checked:  # fmt: skip
    rebased = stale_change(master, base, trained, weight, mode)
    metrics = DeviceMetrics(device, samples=samples)
    folded = FoldedUpdate(device, grant, base_round, staleness, weight, samples, f"{grant:064d}")
    return Checked(folded, rebased, delta_norm(rebased, master), metrics, trained)


def bounds(args: argparse.Namespace) -> InfluenceBounds:
    return InfluenceBounds(check_samples=False, max_weight_share=args.max_weight_share)


def run_sync(fleet: Fleet, args: argparse.Namespace, seed: int, w0: Weights) -> Run:
    rng = np.random.default_rng(seed)
    run, weights, t, updates = Run(fleet.partition, "sync", seed), w0, 0.0, 0
    run.points.append(dict(t=0.0, updates=0, accuracy=fleet.accuracy(w0)))
    round_ = 0
    while t < args.horizon:
        round_ += 1
        chosen = sorted(rng.choice(fleet.ids, size=args.k, replace=False))
        buf = Buffer(weights, make_strategy("fedavg"), bounds(args), server_lr=1.0)
        for grant, d in enumerate(chosen, start=1):
            trained = fleet.train(d, weights, round_ * 1000 + grant)
            n = len(fleet.data[d])
            buf.add(checked(d, grant, round_, 0, 1.0, n, weights, weights, trained))
        weights = buf.close().weights
        t += max(fleet.cycle[d] for d in chosen)
        updates += len(chosen)
        run.points.append(dict(t=round(t, 2), updates=updates, accuracy=fleet.accuracy(weights)))
        print(f"  sync r{round_} t={t:.1f} updates={updates} acc={run.points[-1]['accuracy']:.4f}")
    return run


def server_strategy(variant: Variant) -> Strategy:
    """FedAvg, or FedAvgM when the variant has server momentum (it steps by --server-lr)."""
    if variant.momentum:
        return make_strategy(
            "fedavgm", server_lr=variant.server_lr, server_momentum=variant.momentum
        )
    return make_strategy("fedavg")


def server_buffer(
    master: Weights, strategy: Strategy, args: argparse.Namespace, variant: Variant
) -> Buffer:
    return Buffer(
        master, strategy, bounds(args), server_lr=variant.server_lr,
        apply_server_lr=not variant.momentum,
    )  # fmt: skip


def run_fedbuff(
    fleet: Fleet, args: argparse.Namespace, seed: int, w0: Weights, variant: Variant
) -> Run:
    """Every board trains from the newest version when it starts; K updates make a version."""
    run = Run(fleet.partition, f"fedbuff-{variant.name}", seed)
    versions = {0: w0}
    current = 0
    run.points.append(dict(t=0.0, updates=0, accuracy=fleet.accuracy(w0)))
    k = variant.k or args.k
    limit = variant.per_device or device_limit(k, args.max_weight_share, len(fleet.ids))
    strategy = server_strategy(variant)  # one for the run: fedavgm's velocity lasts
    buf = server_buffer(w0, strategy, args, variant)
    average = VersionAverage(variant.ema)
    events: list[tuple[float, int, str, int]] = []  # (finish time, grant, device, base)
    started: dict[int, float | None] = {}  # grant -> when its training began (None: restarted)
    grant = 0
    idle: list[str] = []  # boards with their share of the open buffer: wait for the next
    backlog: list[tuple[str, int, int, Weights]] = []
    for d in fleet.ids:
        grant += 1
        heapq.heappush(events, (fleet.cycle[d], grant, d, 0))
        started[grant] = 0.0
    updates = 0
    t = 0.0
    while events and t < args.horizon:
        t, g, d, base = heapq.heappop(events)
        if base in versions:
            backlog.append((d, g, base, fleet.train(d, versions[base], g)))
        else:  # more than --max-staleness behind already: the coordinator would reject it
            run.wasted += 1
        while backlog and len(buf) < k:
            item = next((b for b in backlog if buf.count(b[0]) < limit), None)
            if item is None:
                break
            backlog.remove(item)
            dev, gr, b, tr = item
            s = current - b
            if s > args.max_staleness:
                run.wasted += 1
                continue
            weight = staleness_weight(max(0, s - variant.hinge), variant.exponent)
            n = len(fleet.data[dev])
            mode = "toward-model" if variant.toward_model else "from-base"
            buf.add(checked(dev, gr, b, s, weight, n, versions[current], versions[b], tr, mode))
            updates += 1
            if len(buf) >= k:
                current += 1
                versions[current] = buf.close().weights
                for old in [v for v in versions if v < current - args.max_staleness]:
                    del versions[old]
                acc = fleet.accuracy(average.add(versions[current]))
                run.points.append(dict(t=round(t, 2), updates=updates, accuracy=acc))
                print(f"  {run.mode} v{current} t={t:.1f} updates={updates} acc={acc:.4f}")
                buf = server_buffer(versions[current], strategy, args, variant)
                if variant.restart:
                    events = _restarted(events, started, fleet.cycle, t, current, variant, run)
                for waiting in idle:
                    grant += 1
                    heapq.heappush(events, (t + fleet.cycle[waiting], grant, waiting, current))
                    started[grant] = t
                idle = []
        # the board trains again at once, unless it has its share of the open buffer
        if buf.count(d) + sum(b[0] == d for b in backlog) >= limit:
            idle.append(d)
        else:
            grant += 1
            heapq.heappush(events, (t + fleet.cycle[d], grant, d, current))
            started[grant] = t
    return run


class VersionAverage:
    """The versions' exponential average, bias-corrected (``decay`` 0: the newest version)."""

    def __init__(self, decay: float) -> None:
        self.decay, self.total, self.sum = decay, 0.0, None

    def add(self, weights: Weights) -> Weights:
        if not self.decay:
            return weights
        d = self.decay
        self.total = d * self.total + (1 - d)
        if self.sum is None:
            self.sum = {k: (1 - d) * v.astype(np.float64) for k, v in weights.items()}
        else:
            self.sum = {k: d * self.sum[k] + (1 - d) * v for k, v in weights.items()}
        return {k: (v / self.total).astype(weights[k].dtype) for k, v in self.sum.items()}


def _restarted(
    events: list[tuple[float, int, str, int]], started: dict[int, float | None],
    cycle: dict[str, float], t: float, current: int, variant: Variant, run: Run,
) -> list[tuple[float, int, str, int]]:  # fmt: skip
    """Version ``current`` is out at ``t``: every training begun from an older version less
    than ``variant.restart`` of its cycle ago (with ``restart_first``: from version 0 only), and
    not started over before, starts over from it (its board drops what it has done)."""
    out = []
    for finish, g, d, base in events:
        begun = started.get(g)
        early = begun is not None and t - begun < variant.restart * cycle[d]
        if base < current and early and (base == 0 or not variant.restart_first):
            finish, base, started[g] = t + cycle[d], current, None
            run.restarted += 1
        out.append((finish, g, d, base))
    heapq.heapify(out)
    return out


def run_cell(
    args: argparse.Namespace, model_dir: Path, part: str, seed: int, cal: Calibration,
    variants: list[Variant],
) -> list[Run]:  # fmt: skip
    """Synchronous FedAvg and every FedBuff variant on one partition and seed."""
    fleet = Fleet(args, model_dir, part, seed, cal)
    w0 = fleet.model.get_weights()
    print(f"{part} seed {seed}: cycles " + ", ".join(
        f"{d} {c:.1f}s" for d, c in fleet.cycle.items() if d.endswith("-00")
    ), flush=True)  # fmt: skip
    runs = [] if args.no_sync else [run_sync(fleet, args, seed, w0)]
    return runs + [run_fedbuff(fleet, args, seed, w0, v) for v in variants]


def summary(
    runs: list[Run], targets: list[float], horizon: float
) -> dict[str, dict[str, list[dict]]]:
    """partition -> mode -> one row per seed, all within ``horizon`` virtual seconds: times
    to the targets, the accuracy after as many updates as sync made (and its gap to sync's),
    the accuracy and updates at the horizon, wasted updates."""
    out: dict[str, dict[str, list[dict]]] = {}
    for r in runs:
        sync = next(
            (x for x in runs if (x.partition, x.mode, x.seed) == (r.partition, "sync", r.seed)),
            None,
        )
        row: dict[str, Any] = {"seed": r.seed}
        within = [p for p in r.points if p["t"] <= horizon]
        for target in targets:
            t = r.time_to(target)
            row[f"t{round(100 * target)}"] = t if t is not None and t <= horizon else None
        if sync is not None:
            same = int([p for p in sync.points if p["t"] <= horizon][-1]["updates"])
            acc, ref = r.accuracy_at(same), sync.accuracy_at(same)
            row["same_updates"] = same
            row["accuracy_at_same_updates"] = acc
            row["gap_points"] = None if acc is None or ref is None else round(100 * (acc - ref), 2)
        row["final_accuracy"] = within[-1]["accuracy"]
        row["updates"] = int(within[-1]["updates"])
        row["wasted"] = r.wasted
        if r.restarted:
            row["restarted"] = r.restarted
        out.setdefault(r.partition, {}).setdefault(r.mode, []).append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--fleet", default="mixed-pi")
    p.add_argument("--partitions", default="iid,dirichlet:0.5")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default="k5", help="FedBuff settings: k5,k10,k5-a1,lr0.5,...")
    p.add_argument("--no-sync", action="store_true", help="FedBuff only")
    p.add_argument("--k", type=int, default=10, help="sync: boards per round (FedBuff's default)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--horizon", type=float, default=80.0, help="virtual seconds")
    p.add_argument("--max-staleness", type=int, default=10)
    p.add_argument("--max-weight-share", type=float, default=0.5)
    p.add_argument("--targets", default="0.85,0.88")
    p.add_argument("--model-dir", required=True, help="an exported cnn (fedcoord export)")
    p.add_argument("--jobs", type=int, default=1, help="processes: (partition, seed) cells")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench/results/async_numerics.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.horizon, args.partitions = "0", 30.0, "iid"
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [Variant.parse(v) for v in args.variants.split(",")]
    targets = [float(x) for x in args.targets.split(",")]
    model_dir = Path(args.model_dir)
    commit = _commit()  # what ran: a commit made while it runs is not what ran
    manifest = Manifest.load(model_dir / "manifest.json")
    cal = calibrate((model_dir / "model.tflite").read_bytes(), manifest)  # once: one clock
    t0, c0 = time.monotonic(), _cpu_s()
    cells = [(part, seed) for part in args.partitions.split(",") for seed in seeds]
    if args.jobs > 1:  # (partition, seed) cells in parallel processes: the clock is virtual
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.jobs, mp_context=ctx) as pool:
            done = pool.map(
                run_cell, *zip(*[(args, model_dir, p, s, cal, variants) for p, s in cells])
            )
            runs = [r for cell in done for r in cell]
    else:
        runs = [r for p, s in cells for r in run_cell(args, model_dir, p, s, cal, variants)]
    result = summary(runs, targets, args.horizon)
    record = {
        "command": "python bench/async_numerics.py " + " ".join(argv or sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit,
        "machine": platform.machine(),
        "wall_s": round(time.monotonic() - t0, 1),
        "cpu_s": round(_cpu_s() - c0, 1),  # this process and its --jobs workers
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "calibration": dataclasses.asdict(cal),
        "summary": result,
        "runs": [dataclasses.asdict(r) for r in runs],
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(table(record))
    print(f"recorded {args.out}")
    return 0


def _cpu_s() -> float:
    """CPU seconds of this process and of its finished child processes (the --jobs workers,
    waited for when their pool closes): process_time alone missed the workers' training."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return ""


if __name__ == "__main__":
    raise SystemExit(main())
