"""Round modes on simulated fleets: synchronous FedAvg, semi-synchronous and FedBuff.

One invocation runs every (fleet, partition, mode) configuration in turn (never two at
once; the modes of one fleet and partition back to back, their order rotated), each for a
fixed wall-clock budget on the real simulator (coordinator/fleet/: `fedge run` processes
behind throttled links, slowed to their boards' speed, going offline and dropping out as
their fleet file says), and records bench/results/fleet.json:

    .venv/bin/python bench/fleet.py                 # mixed-pi and homogeneous, iid and
                                                    # dirichlet:0.5, every mode (~40 min)
    .venv/bin/python bench/fleet.py --quick         # a 4-board fleet, mlp, ~1 min
    .venv/bin/python bench/fleet_figures.py bench/results/fleet   # the tables, from the records

Fashion-MNIST, `cnn` (Adam lr 0.001, batch 32), 2 local epochs, K = 10 updates per global
model in every mode: synchronous FedAvg selects 10 boards and waits for all of them (or the
deadline); semi-synchronous selects 15 (--over-select 1.5) and closes at 10, late updates
folded with a staleness weight (--late-updates fold: on a mixed fleet the boards still
uploading over a slow link when a round closes are one round late, and discarding them
wastes their training); FedBuff folds every --buffer-size updates (the toolkit's default,
5; fedbuffN: N) into a new version. Each run's raw records go to bench/results/fleet/NAME/
(figures recompute from them: bench/fleet_figures.py). The simulator refuses an oversubscribed fleet (its CPU estimate
above 80 % of the cores); the bench records that and goes on with the other configurations.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from coordinator.config import JobConfig  # noqa: E402
from coordinator.fleet.runner import simulate_fleet  # noqa: E402
from coordinator.fleet.spec import FleetSpec, load_fleet  # noqa: E402
from coordinator.simulation import FleetConfig  # noqa: E402
from edge_client.errors import EdgeFLError  # noqa: E402
from edge_client.protocol import RoundMetrics  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import fleet_figures  # noqa: E402

MODES = ("sync", "semi", "fedbuff")
LOAD_EVERY_S = 5.0
# A small fleet for --quick (and the test): two quick boards and two slow ones, one flaky.
QUICK_FLEET = """
name = "quick"
seed = 1
[[boards]]
name = "fast"
profile = "linux-x86_64"
count = 2
slowdown = 3.0
[[boards]]
name = "slow"
profile = "rpi4-64"
count = 2
slowdown = 8.0
link = { down_kbit = 20000, up_kbit = 10000, latency_ms = 20 }
dropout = { probability = 0.2, kill_share = 0.5, mean_downtime_s = 5 }
"""


def mode_settings(
    mode: str, k: int, over_select: float, late: str, buffer_size: int
) -> dict[str, Any]:
    """The job settings of a round mode: K updates per round (synchronous, semi-synchronous),
    ``buffer_size`` per version (FedBuff)."""
    if mode == "sync":
        return {"clients_per_round": k}
    if mode == "semi":
        return {"clients_per_round": k, "over_select": over_select, "late_updates": late}
    if mode.startswith("fedbuff"):
        # fedbuff: a buffer of --buffer-size; the rest: fleet_figures.FEDBUFF_MODE
        names = {f.name for f in dataclasses.fields(JobConfig)}
        if "buffer_size" not in names:
            raise SystemExit(
                "error: FedBuff (--mode buffered) is not in this checkout: run with "
                "--modes sync,semi, or update to a main that has it"
            )
        m = fleet_figures.FEDBUFF_MODE.fullmatch(mode)
        if m is None:
            raise SystemExit(
                f"error: unknown mode {mode!r}: use fedbuff, fedbuffN (N >= 1), fedbuffN-aX, "
                "fedbuffN-lrX, with -model or -base (--stale-changes), then -soX "
                "(--start-over-within)"
            )
        out: dict[str, Any] = {"mode": "buffered", "buffer_size": int(m[1] or buffer_size)}
        if m[2] is not None:
            out["staleness_exponent"] = float(m[2])
        if m[3] is not None:
            out["server_lr"] = float(m[3])
        if m[4]:
            out["stale_changes"] = "toward-model" if m[4] == "-model" else "from-base"
        if m[5] is not None:
            if "start_over_within" not in names:
                raise SystemExit(f"error: {mode}: --start-over-within is not in this checkout")
            out["start_over_within"] = float(m[5])
        return out
    raise SystemExit(f"error: unknown mode {mode!r}: use {', '.join(MODES)} (or fedbuffN-aX)")


class LoadSampler(threading.Thread):
    """The machine's 1-minute load average every few seconds (other work shares it)."""

    def __init__(self, t0: float) -> None:
        super().__init__(daemon=True)
        self.t0, self.samples = t0, [(0.0, round(os.getloadavg()[0], 2))]
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(LOAD_EVERY_S):
            self.samples.append((round(time.time() - self.t0, 1), round(os.getloadavg()[0], 2)))


def fleet_spec(name: str, work: Path, offset: int = 0) -> FleetSpec:
    """The fleet ``name`` (a preset, or ``quick``), its seed moved by ``offset``
    (``--vary-fleet-seed``: the repeat number, so each repeat draws its own availability
    sessions and dropouts)."""
    if name == "quick":
        path = work / "quick.toml"
        path.write_text(QUICK_FLEET)
        spec = load_fleet(str(path))
    else:
        spec = load_fleet(name)
    return dataclasses.replace(spec, seed=spec.seed + offset) if offset else spec


def part_tag(partition: str) -> str:
    return partition.replace("dirichlet:", "dir").replace(":", "")


def run_one(
    args: argparse.Namespace, fleet: str, partition: str, mode: str, repeat: int, model_dir: Path
) -> Path | None:
    """One configuration: simulate, copy the raw records; their directory (None: refused)."""
    name = f"{fleet}-{part_tag(partition)}-{mode}" + (
        f"-r{repeat}" if args.repeats > 1 or args.first_repeat else ""
    )
    run = args.work / name
    budget = args.budget[fleet]
    job = JobConfig(
        job=name.replace(".", ""),
        rounds=100_000,  # the wall-clock budget ends the job
        run_dir=str(run),
        model_dir=str(model_dir),
        epochs=args.epochs,
        round_timeout=args.round_timeout,
        listen="127.0.0.1:0",
        seed=repeat,
        **mode_settings(mode, args.k, args.over_select, args.late_updates, args.buffer_size),
    )
    fc = FleetConfig(dataset="fashion-mnist", partition=partition, partition_seed=repeat)
    spec = fleet_spec(fleet, args.work, repeat if args.vary_fleet_seed else 0)
    tag = f"[{fleet} {partition} {mode}]"
    print(f"{tag} start, budget {budget:g} s", flush=True)

    def on_round(m: RoundMetrics) -> None:
        acc = "—" if m.accuracy is None else f"{100 * m.accuracy:.2f} %"
        print(f"{tag} {m.round:4d}: {acc}, {m.updates_aggregated} updates", flush=True)

    sampler = LoadSampler(time.time())
    sampler.start()
    error = None
    try:
        _, summary = simulate_fleet(
            job,
            fc,
            spec,
            allow_oversubscribed=args.allow_oversubscribed,
            on_round=on_round,
            stop_after_s=budget,
        )
    except EdgeFLError as exc:
        error, summary = str(exc), None
    finally:
        sampler.done.set()
    if summary is None:
        print(f"{tag} REFUSED: {error}", flush=True)
        return None
    est = summary["estimate"]
    if est["oversubscribed"]:
        print(f"{tag} WARNING: OVERSUBSCRIBED FLEET, wall times not faithful", flush=True)
    loads = [x[1] for x in sampler.samples]
    if max(loads) > summary["cores"]:
        print(
            f"{tag} WARNING: the machine's load average reached {max(loads):.1f} on "
            f"{summary['cores']} cores (other work): boards waited for cores",
            flush=True,
        )
    out = args.raw / name
    out.mkdir(parents=True, exist_ok=True)
    for src in ("metrics.jsonl", "config.json", "fleet/summary.json", "fleet/events.jsonl"):
        if (run / src).exists():
            shutil.copy(run / src, out / Path(src).name)
    bench = {
        "fleet": fleet,
        "partition": partition,
        "mode": mode,
        "repeat": repeat,
        "fleet_seed": spec.seed,
        "budget_s": budget,
        "targets": args.targets,
        "load_samples": sampler.samples,  # (seconds since the run's start, 1-minute load)
        "job_settings": mode_settings(
            mode, args.k, args.over_select, args.late_updates, args.buffer_size
        ),
    }
    (out / "bench.json").write_text(json.dumps(bench, indent=1) + "\n")
    print(
        f"{tag} done: utilisation estimated {100 * est['utilisation']:.0f} %, measured "
        f"{100 * summary['measured']['utilisation']:.0f} %; load {min(loads):.1f}-{max(loads):.1f}",
        flush=True,
    )
    return out


def export_model(args: argparse.Namespace) -> Path:
    if args.model_dir is not None:
        return Path(args.model_dir)
    out = args.work / "model"
    if not (out / "manifest.json").exists():
        from model_export.export import ExportConfig, export_model
        from model_export.optimizers import OptimizerConfig

        export_model(ExportConfig(args.model, optimizer=OptimizerConfig("adam", 0.001)), out)
    return out


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="a 4-board fleet, mlp, short budgets")
    p.add_argument("--fleets", default=None, help="presets or files (mixed-pi,homogeneous)")
    p.add_argument("--partitions", default=None, help="iid,dirichlet:0.5")
    p.add_argument(
        "--modes",
        default=None,
        help=f"of {','.join(MODES)} and fedbuffN (FedBuff, a buffer of N) (default: all three)",
    )
    p.add_argument(
        "--budget",
        default=None,
        help="wall-clock seconds per run, FLEET=S,... (mixed-pi=240,homogeneous=120)",
    )
    p.add_argument("--targets", default="0.85,0.88", help="test accuracies to time")
    p.add_argument("--k", type=int, default=10, help="updates per round (sync, semi)")
    p.add_argument(
        "--buffer-size",
        type=int,
        default=JobConfig.buffer_size,
        help=f"FedBuff's updates per version (default: the toolkit's, {JobConfig.buffer_size})",
    )
    p.add_argument("--over-select", type=float, default=1.5)
    p.add_argument("--late-updates", default="fold", choices=("discard", "fold"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--round-timeout", type=float, default=120.0)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument(
        "--first-repeat",
        type=int,
        default=0,
        help="seed of the first repeat (more repeats of an earlier run, into another --out)",
    )
    p.add_argument(
        "--vary-fleet-seed",
        action="store_true",
        help="each repeat also draws its own availability and dropouts (the fleet's seed + "
        "the repeat number); by default every repeat keeps the fleet file's seed",
    )
    p.add_argument("--model", default="cnn")
    p.add_argument("--model-dir", default=None, help="an exported model (skips the export)")
    p.add_argument("--allow-oversubscribed", action="store_true")
    p.add_argument("--work", type=Path, default=None, help="run directories (default runs/)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/fleet.json")
    p.add_argument("--raw", type=Path, default=None, help="raw records (default next to --out)")
    args = p.parse_args(argv)
    q = args.quick
    args.fleets = (args.fleets or ("quick" if q else "mixed-pi,homogeneous")).split(",")
    args.partitions = (args.partitions or ("iid" if q else "iid,dirichlet:0.5")).split(",")
    args.modes = (args.modes or ",".join(MODES)).split(",")
    budget = args.budget or ("quick=15" if q else "mixed-pi=240,homogeneous=120")
    args.budget = {k: float(v) for k, v in (x.split("=") for x in budget.split(","))}
    args.targets = [float(x) for x in args.targets.split(",")]
    if q:
        args.model = "mlp" if args.model == "cnn" else args.model
        args.epochs, args.k, args.buffer_size, args.round_timeout = 1, 2, 2, 30.0
    args.raw = args.raw or args.out.with_suffix("")
    args.work = args.work or ROOT / "runs" / f"bench-fleet-{time.strftime('%Y%m%d-%H%M%S')}"
    for f in args.fleets:
        if f not in args.budget:
            p.error(f"--budget names no budget for fleet {f}")
    for m in args.modes:
        mode_settings(
            m, args.k, args.over_select, args.late_updates, args.buffer_size
        )  # fail before running
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        filename=args.work / "bench.log",
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.raw.exists():
        shutil.rmtree(args.raw)  # the record is this run's, whole
    model_dir = export_model(args)
    started = time.time()
    commit = _git("rev-parse", "--short", "HEAD")  # what ran (a commit made meanwhile did not)
    for repeat in range(args.first_repeat, args.first_repeat + args.repeats):
        for fleet in args.fleets:  # sequentially: never two fleets at once
            for i, partition in enumerate(args.partitions):
                turn = (i + repeat) % len(args.modes)  # rotate which mode goes first
                for mode in args.modes[turn:] + args.modes[:turn]:
                    run_one(args, fleet, partition, mode, repeat, model_dir)
    result = fleet_figures.figures(args.raw, args.targets)
    record = {
        "command": "python bench/fleet.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "commit": commit,
        "bench_wall_s": round(time.time() - started, 1),
        "settings": {
            "dataset": "fashion-mnist",
            "model": args.model,
            "epochs": args.epochs,
            "k": args.k,
            "buffer_size": args.buffer_size,
            "over_select": args.over_select,
            "late_updates": args.late_updates,
            "round_timeout_s": args.round_timeout,
            "budget_s": args.budget,
            "targets": args.targets,
            "fleets": args.fleets,
            "partitions": args.partitions,
            "modes": args.modes,
            "repeats": args.repeats,
            "first_repeat": args.first_repeat,
            "vary_fleet_seed": args.vary_fleet_seed,
        },
        "raw_records": str(
            args.raw.relative_to(ROOT) if args.raw.is_relative_to(ROOT) else args.raw
        ),
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(fleet_figures.table(result, args.targets))
    print()
    print(fleet_figures.acceptance_table(result))
    print(f"record: {args.out}; raw records: {args.raw}")
    return 0


def _git(*cmd: str) -> str:
    r = subprocess.run(["git", "-C", str(ROOT), *cmd], capture_output=True, text=True)
    return r.stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
