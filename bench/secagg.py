"""Secure aggregation's cost: secure rounds against plain FedAvg rounds, 5 / 20 / 100 devices.

For each fleet size, one job on a fresh Mosquitto whose rounds alternate the arms in a
rotating order (cycle c runs the arms shifted by c; the first cycle is warm-up, left out of
the figures): ``plain`` (FedAvg, the synchronous round mode), ``complete`` (SecAgg+ over the
complete graph, t = (n - 1) // 2 + 1: SecAgg) and ``k-regular`` (SecAgg+ over a random
k-regular graph: the parameters fedcoord picks where it picks a sparse graph, 100 devices:
k = 34, t = 18; below that fedcoord uses the complete graph, and the bench forces the even
k = 2 ceil(log2 n), at most n - 2, with t = k / 2 + 1: 20 devices k = 10, t = 6; 5 devices
k = 2, t = 2). The same devices, coordinator process, broker and machine serve every arm.

Devices: up to ``--real-max`` devices are real boards (``fedge run`` processes training
``cnn`` on their IID share of Fashion-MNIST's 60,000 training images, ``--epochs`` local
epochs, verifying the job's signature); above it, the load generator's virtual devices
(``fedcoord loadgen``: no training, planned updates; in secure rounds the board's own
secure-round code, coordinator/loadgen/secure.py), whose aggregate is checked against the
plan every round. Each round's figures (bench/secagg_coordinator.py): wall time, CPU time
of the coordinator, the devices and the broker, payload bytes per device up and down (all
stages), the secure stages' durations.

    .venv/bin/python bench/secagg.py                       # 5, 20 (real boards), 100 (virtual)
    .venv/bin/python bench/secagg.py --quick               # 4 virtual devices, mlp, ~40 s
    .venv/bin/python bench/secagg.py --figures bench/results/secagg.json   # the doc's tables

Record: bench/results/secagg.json (every round, the command, load averages).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PYTHON = sys.executable
ARMS = ("plain", "complete", "k-regular")
TARGET = {"devices": 20, "wall": 1.3, "bytes": 1.5}  # issue 13: secure vs plain at 20 devices
MOSQUITTO_CONF = """
max_connections -1
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 100
set_tcp_nodelay true
"""


class LoadSampler(threading.Thread):
    """The machine's 1-minute load average every 5 s (other work shares the 2 cores)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.t0, self.samples = time.time(), [(0.0, round(os.getloadavg()[0], 2))]
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(5.0):
            self.samples.append((round(time.time() - self.t0, 1), round(os.getloadavg()[0], 2)))


def schedule(reps: int, arms: tuple[str, ...]) -> list[dict[str, Any]]:
    """Round by round: cycle 0 is warm-up; cycle c runs ``arms`` rotated by c."""
    out = []
    for cycle in range(reps + 1):
        shift = cycle % len(arms)
        for arm in arms[shift:] + arms[:shift]:
            out.append({"arm": arm, "cycle": cycle, "warmup": cycle == 0})
    return out


def export_model(name: str, model_dir: str | None) -> Path:
    if model_dir:
        return Path(model_dir)
    out = Path(tempfile.gettempdir()) / "edgefl-bench-models" / f"{name}-adam"
    if not (out / "manifest.json").exists():
        from model_export.export import ExportConfig
        from model_export.export import export_model as export
        from model_export.optimizers import OptimizerConfig

        export(ExportConfig(name, optimizer=OptimizerConfig("adam", 0.001)), out)
    return out


def start_devices(n: int, real: bool, job: Any, broker: Any, tmp: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    logs = tmp / f"devices-{n}"
    logs.mkdir(parents=True, exist_ok=True)
    if not real:
        cmd = [PYTHON, "-m", "coordinator.cli", "loadgen", "--broker", broker.url, "--job",
               job.job, "--devices", str(n), "--processes", "2"]  # fmt: skip
        return [subprocess.Popen(cmd, stdout=open(logs / "loadgen.log", "wb"),  # noqa: SIM115
                                 stderr=subprocess.STDOUT, env=env, cwd=ROOT)]  # fmt: skip
    from coordinator.simulation import FleetConfig, device_command
    from edge_client.signing import Signer

    fleet = FleetConfig(devices=n, dataset="fashion-mnist", partition="iid")
    trust = ["--trust-key", Signer.from_file(job.signing_key).public_b64]
    procs = []
    for i in range(n):
        cmd = device_command(fleet, job, broker, i, logs / f"state-{i:02d}") + trust
        out = open(logs / f"sim-{i:02d}.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT))
    return procs


def run_size(n: int, args: argparse.Namespace, model: Path, tmp: Path) -> dict[str, Any]:
    from coordinator.config import JobConfig
    from coordinator.job_keys import with_signing_key
    from tests.fixtures.brokers import start_mosquitto

    real = n <= args.real_max
    broker = start_mosquitto(tmp / f"mosquitto-{n}", MOSQUITTO_CONF)
    plan = schedule(args.reps, ARMS)
    job = with_signing_key(JobConfig(
        job=f"secagg{n}", rounds=len(plan), run_dir=str(tmp / f"run-{n}"), model_dir=str(model),
        min_devices=n, min_results=3, round_timeout=args.timeout, wait_timeout=900,
        max_retries=0, epochs=args.epochs, secagg_timeout=args.timeout, broker=broker.url,
    ))  # fmt: skip
    t0, rows, load0 = time.time(), [], os.getloadavg()
    devices = start_devices(n, real, job, broker, tmp)
    try:
        cfg = {k: getattr(job, k) for k in (
            "job", "rounds", "run_dir", "model_dir", "min_devices", "min_results",
            "round_timeout", "wait_timeout", "max_retries", "epochs", "secagg_timeout",
            "broker", "signing_key")}  # fmt: skip
        spec = {
            "cfg": cfg, "port": broker.port, "schedule": plan, "check_plan": not real,
            "device_pids": [p.pid for p in devices], "broker_pid": broker._process.pid,  # noqa: SLF001
            "profile": str(tmp / f"profile-{n}") if args.profile else None,
        }  # fmt: skip
        if args.profile:
            (tmp / f"profile-{n}").mkdir(exist_ok=True)
        with open(tmp / f"coordinator-{n}.log", "w") as log:
            coord = subprocess.Popen(
                [PYTHON, str(ROOT / "bench/secagg_coordinator.py"), json.dumps(spec)],
                stdout=subprocess.PIPE, stderr=log, text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            assert coord.stdout is not None
            for line in coord.stdout:
                if line.startswith("SECAGG-ROW "):
                    row = json.loads(line.split(" ", 1)[1])
                    rows.append(row)
                    print(f"  {n} devices, round {row['round']:2d} {row['arm']:9s} "
                          f"{row['wall_s']:7.2f} s  ok={row['ok']}", flush=True)  # fmt: skip
            coord.wait()
    finally:
        for p in devices:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.terminate()
        broker.stop()
    if len(rows) != len(plan):
        raise SystemExit(f"the coordinator stopped early: see {tmp / f'coordinator-{n}.log'}")
    return {
        "devices": n,
        "kind": "real boards (fedge run)" if real else "virtual devices (fedcoord loadgen)",
        "samples_per_device": 60_000 // n if real else None,
        "epochs": args.epochs if real else None,
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "wall_s": round(time.time() - t0, 1),
        "rows": rows,
    }


# -- figures: recomputed from the rows ----------------------------------------------------------
FIELDS = ("wall_s", "cpu_s", "coordinator_cpu_s", "bytes_up_per_device", "bytes_down_per_device")


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    m = len(xs) // 2
    return xs[m] if len(xs) % 2 else (xs[m - 1] + xs[m]) / 2


def after_training(row: dict[str, Any]) -> float:
    """A secure round's shares, masked and unmask stages: from the key list to the sum."""
    stages = row["secagg"]["stages"]
    return round(sum(stages[s]["duration_s"] for s in ("shares", "masked", "unmask")), 3)


def summarise(size: dict[str, Any]) -> dict[str, Any]:
    """Per arm: min and median of every field over the measured (non-warm-up) rounds, the
    ratios of the medians to plain's, and the rounds that failed."""
    out: dict[str, Any] = {}
    for arm in ARMS:
        rows = [r for r in size["rows"] if r["arm"] == arm and not r["warmup"]]
        if not rows:
            continue
        s: dict[str, Any] = {"rounds": len(rows), "failed": sum(not r["ok"] for r in rows)}
        for f in FIELDS:
            vals = [r[f] for r in rows]
            s[f] = {"min": min(vals), "median": _median(vals)}
        if any("aggregate_ok" in r for r in rows):
            s["aggregate_ok"] = all(r.get("aggregate_ok") for r in rows)
        if arm != "plain":
            g = rows[0]["secagg"]
            s["graph"] = {"k": g["k"], "threshold": g["threshold"], "kind": g["graph"]}
            after = [after_training(r) for r in rows]  # the stages a plain round has not
            s["after_training_s"] = {"min": min(after), "median": _median(after)}
        out[arm] = s
    plain = out.get("plain")
    for arm, s in out.items():
        if plain and arm != "plain":
            s["vs_plain"] = {
                f: round(s[f]["median"] / plain[f]["median"], 3) if plain[f]["median"] else None
                for f in FIELDS
            }
            s["vs_plain_min"] = {
                f: round(s[f]["min"] / plain[f]["min"], 3) if plain[f]["min"] else None
                for f in FIELDS
            }
    return out


def target_check(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 13's target at 20 devices, for each secure arm (median ratios)."""
    out: dict[str, Any] = {"devices": TARGET["devices"], "wall_at_most": TARGET["wall"],
                           "bytes_at_most": TARGET["bytes"]}  # fmt: skip
    for size in sizes:
        if size["devices"] != TARGET["devices"]:
            continue
        for arm, s in size["summary"].items():
            if arm == "plain":
                continue
            r = s["vs_plain"]
            up, down = r["bytes_up_per_device"], r["bytes_down_per_device"]
            out[arm] = {
                "wall_ratio": r["wall_s"], "bytes_up_ratio": up, "bytes_down_ratio": down,
                "met": r["wall_s"] <= TARGET["wall"] and max(up, down) <= TARGET["bytes"],
            }  # fmt: skip
    return out


def table(record: dict[str, Any]) -> str:
    """The markdown table of docs/benchmarks.md, from the record."""
    lines = [
        "| devices | arm (k, t) | round wall: median (min) | round CPU, all processes | "
        "coordinator CPU | up / device | down / device | wall, bytes up / down vs plain "
        "(medians) | stages after training |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for size in record["sizes"]:
        for arm, s in summarise(size).items():
            g = s.get("graph")
            name = arm if g is None else f"{arm} ({g['k']}, {g['threshold']})"
            w, c, cc = s["wall_s"], s["cpu_s"], s["coordinator_cpu_s"]
            up, down = s["bytes_up_per_device"]["median"], s["bytes_down_per_device"]["median"]
            vs = "1" if arm == "plain" else (
                f"{s['vs_plain']['wall_s']:.2f}x, "
                f"{s['vs_plain']['bytes_up_per_device']:.3f}x / "
                f"{s['vs_plain']['bytes_down_per_device']:.3f}x"
            )  # fmt: skip
            if arm != "plain" and size["devices"] == TARGET["devices"]:
                vs = f"**{vs}**"  # the target's figures
            n = size["devices"]
            devices = f"{n} (virtual)" if size["kind"].startswith("virtual") else str(n)
            failed = f" ({s['failed']} failed)" if s["failed"] else ""
            a = s.get("after_training_s")
            after = f"{a['median']:.2f} s ({a['min']:.2f})" if a else "—"
            lines.append(
                f"| {devices} | {name}{failed} | {w['median']:.2f} s ({w['min']:.2f}) | "
                f"{c['median']:.2f} s ({c['min']:.2f}) | {cc['median']:.2f} s ({cc['min']:.2f}) "
                f"| {up / 1e6:.3f} MB | {down / 1e6:.3f} MB | {vs} | {after} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5,20,100")
    parser.add_argument("--real-max", type=int, default=20, help="real boards up to this size")
    parser.add_argument("--reps", type=int, default=3, help="measured cycles (after 1 warm-up)")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--model-dir", default=None, help="an exported model (else exported)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="round and stage deadline")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile (CPU time) of the coordinator per arm, in the log directory",
    )
    parser.add_argument("--quick", action="store_true", help="4 virtual devices, mlp, 1 rep")
    parser.add_argument("--out", default=str(ROOT / "bench/results/secagg.json"))
    parser.add_argument("--figures", metavar="RECORD", help="print the tables of a record")
    args = parser.parse_args()
    if args.figures:
        record = json.loads(Path(args.figures).read_text())
        print(table(record))
        print(json.dumps(record["target"], indent=2))
        return
    if args.quick:
        args.sizes, args.real_max, args.reps, args.model = "4", 0, 1, "mlp"
        args.timeout = min(args.timeout, 60.0)
    tmp = Path(tempfile.mkdtemp(prefix="edgefl-secagg-"))  # logs and run dirs stay for a look
    print(f"logs and run directories in {tmp}", flush=True)
    model = export_model(args.model, args.model_dir)
    sampler = LoadSampler()
    sampler.start()
    started, load0 = time.time(), os.getloadavg()
    sizes = []
    for n in (int(x) for x in args.sizes.split(",")):
        size = run_size(n, args, model, tmp)
        size["summary"] = summarise(size)
        sizes.append(size)
    sampler.done.set()
    record = {
        "command": "python bench/secagg.py " + " ".join(sys.argv[1:]),
        "what": "secure aggregation (SecAgg+, complete and k-regular graphs) against plain "
        "FedAvg: rounds of one job alternating the arms, the same devices, coordinator and "
        "Mosquitto on loopback; figures over the rounds after the warm-up cycle",
        "model": args.model,
        "git": _git("rev-parse", "--short", "HEAD"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; shared with other work (see the load averages)",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "loadavg_samples": sampler.samples,
        "sizes": sizes,
    }
    record["target"] = target_check(sizes)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(table(record))
    print(json.dumps(record["target"], indent=2))
    print(f"wrote {args.out}")


def _git(*cmd: str) -> str:
    try:
        return subprocess.run(
            ["git", *cmd], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    main()
