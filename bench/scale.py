"""One coordinator against 100, 1,000 and 5,000 virtual devices on Mosquitto.

For each fleet size: a fresh Mosquitto with raised limits on a free port, the coordinator
in its own process (the real ``run_job`` on ``MqttTransport``, model ``mlp``, FedAvg,
every online device selected, a round closes only with all of them), and the load
generator (``fedcoord loadgen``: one MQTT connection per virtual device) in its own
processes. Reported per fleet size: time to close a round (announcement ``open`` to
``closed``, as the coordinator publishes them), messages per second the coordinator took
in while the round was open, update MB/s, the coordinator's peak RSS (``VmHWM``) and its
RSS once the model was loaded, Mosquitto's peak RSS, and whether the aggregate equals the
planned FedAvg.

    .venv/bin/python bench/scale.py [--sizes 100,1000,5000] [--rounds 3] [--processes 2]
        [--encoding float32] [--delay 0] [--out bench/results/scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PYTHON = sys.executable
MOSQUITTO_CONF = """
max_connections -1
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages 100
max_keepalive 600
set_tcp_nodelay true
"""

# The coordinator process: run_job without the final TensorFlow export, counting what its
# transport takes in and timing the round announcements it publishes.
_COORDINATOR = r"""
import json, logging, sys, time
from coordinator.config import JobConfig
from coordinator import job as job_module
from edge_client import transport as tr

args = json.loads(sys.argv[1])
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
events, counts = [], {"messages": 0, "bytes": 0}

class Counting(tr.MqttTransport):
    def get(self, timeout=None):
        m = super().get(timeout)
        if m is not None:
            counts["messages"] += 1
            counts["bytes"] += len(m.payload)
        return m
    def publish(self, topic, payload, *, qos=1, retain=False):
        if topic.endswith("/round"):
            state = json.loads(payload)["state"]
            events.append((state, time.time(), counts["messages"], counts["bytes"]))
        super().publish(topic, payload, qos=qos, retain=retain)

job_module.MqttTransport = Counting
def rss(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field)) / 1024
marks = {}
def on_round(m):
    marks.setdefault("rss_after_round_mb", []).append(round(rss("VmRSS"), 1))
state = job_module.run_job(JobConfig(**args["cfg"]), on_round=on_round, broker=tr.BrokerConfig("127.0.0.1", args["port"]), final_models=False)
print("SCALE-REPORT " + json.dumps({"events": events, "peak_rss_mb": round(rss("VmHWM"), 1), **marks}))
"""


def export_mlp(cache: Path) -> Path:
    model = cache / "mlp"
    if not (model / "manifest.json").exists():
        subprocess.run(
            [PYTHON, "-m", "coordinator.cli", "export", "--model", "mlp", "--input-shape",
             "28,28,1", "--classes", "10", "--batch-size", "32", "--optimizer", "sgd",
             "--lr", "0.05", "--out", str(model)],
            check=True, cwd=ROOT,
        )  # fmt: skip
    return model


def peak_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return 0.0


def run_size(n: int, args: argparse.Namespace, model: Path, tmp: Path) -> dict:
    from coordinator.loadgen import Plan
    from coordinator.run_dir import RunDir
    from tests.fixtures.brokers import start_mosquitto

    broker = start_mosquitto(tmp / f"mosquitto-{n}", MOSQUITTO_CONF)
    job, run_dir = f"scale{n}", tmp / f"run-{n}"
    cfg = {
        "job": job, "rounds": args.rounds, "run_dir": str(run_dir), "model_dir": str(model),
        "min_devices": n, "min_results": n, "round_timeout": args.timeout, "wait_timeout": 600,
        "max_retries": 0, "encoding": args.encoding, "broker": broker.url,
    }  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.time()
    with (
        open(tmp / f"coordinator-{n}.log", "w") as coord_log,
        open(tmp / f"loadgen-{n}.log", "w") as load_log,
    ):
        profile = []  # py-spy: flame data of the coordinator, every thread
        if args.py_spy:
            out_file = tmp / f"coordinator-{n}.pyspy.txt"
            profile = [args.py_spy, "record", "-r", "100", "--threads", "-f", "raw", "-o",
                       str(out_file), "--"]  # fmt: skip
        coord = subprocess.Popen(
            [*profile, PYTHON, "-c", _COORDINATOR, json.dumps({"cfg": cfg, "port": broker.port})],
            stdout=subprocess.PIPE, stderr=coord_log, text=True, env=env,
        )  # fmt: skip
        load = subprocess.Popen(
            [PYTHON, "-m", "coordinator.cli", "loadgen", "--broker", broker.url, "--job", job,
             "--devices", str(n), "--processes", str(args.processes), "--delay", str(args.delay)],
            stdout=subprocess.PIPE, stderr=load_log, text=True, env=env,
        )  # fmt: skip
        broker_peak = 0.0
        while coord.poll() is None:
            broker_peak = max(broker_peak, peak_rss_mb(broker._process.pid))  # noqa: SLF001
            time.sleep(0.5)
        out = coord.stdout.read()
        load_out = load.communicate(timeout=120)[0]
    broker.stop()
    if "SCALE-REPORT " not in out:
        raise SystemExit(f"the coordinator failed: see {tmp / f'coordinator-{n}.log'}")
    report = json.loads(out.split("SCALE-REPORT ", 1)[1].splitlines()[0])
    rounds = _rounds(report["events"])
    state = RunDir(run_dir).load_state(job)
    plan, history = Plan(), state.history
    weights = [RunDir(run_dir).load_weights(state)[0]]
    ok = len(history) == args.rounds and all(len(h.participants) == n for h in history)
    return {
        "devices": n,
        "rounds": rounds,
        "round_close_s_median": _median([r["close_s"] for r in rounds]),
        "messages_per_s_median": _median([r["messages_per_s"] for r in rounds]),
        "update_mb_per_s_median": _median([r["mb_per_s"] for r in rounds]),
        "coordinator_peak_rss_mb": report["peak_rss_mb"],
        "coordinator_rss_after_each_round_mb": report.get("rss_after_round_mb"),
        "mosquitto_peak_rss_mb": round(broker_peak, 1),
        "all_devices_in_every_round": ok,
        "fedavg_matches_plan": _check_last_round(run_dir, plan, history, weights[0], args.encoding),
        "wall_s": round(time.time() - t0, 1),
        "loadgen": load_out.strip().splitlines()[-1] if load_out.strip() else "",
    }


def _rounds(events: list) -> list[dict]:
    rounds, opened = [], None
    for state, when, messages, nbytes in events:
        if state == "open":
            opened = (when, messages, nbytes)
        elif opened is not None:
            close = when - opened[0]
            got = messages - opened[1]
            rounds.append({
                "close_s": round(close, 2),
                "messages": got,
                "messages_per_s": round(got / close, 1),
                "mb_per_s": round((nbytes - opened[2]) / close / 1e6, 1),
            })  # fmt: skip
    return rounds


def _check_last_round(run_dir: Path, plan, history: list, final: dict, encoding: str) -> bool:  # noqa: ANN001
    """The last round's aggregate = the planned FedAvg of the previous round's global."""
    import numpy as np

    from coordinator.loadgen import expected_average

    checkpoints = sorted((run_dir / "checkpoints").glob("*.npz"))
    if len(checkpoints) < 2 or not history:
        return False
    with np.load(checkpoints[-2]) as previous:
        base = {k[2:]: previous[k] for k in previous.files if k.startswith("w/")}
    if set(base) != set(final):
        return False
    expected = expected_average(base, plan, history[-1].participants, encoding)
    return all(np.allclose(final[k], expected[k], atol=1e-5) for k in final)


def _median(values: list[float]) -> float:
    values = sorted(values)
    return values[len(values) // 2] if values else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,5000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2, help="load generator processes")
    parser.add_argument("--encoding", default="float32", choices=["float32", "float16", "int8"])
    parser.add_argument("--delay", type=float, default=0.0, help="simulated training spread (s)")
    parser.add_argument("--timeout", type=float, default=900.0, help="round deadline (s)")
    parser.add_argument("--py-spy", default=None, help="profile the coordinator with this py-spy")
    parser.add_argument("--out", default=str(ROOT / "bench/results/scale.json"))
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="edgefl-scale-"))  # logs and run dirs stay for a look
    print(f"logs and run directories in {tmp}", flush=True)
    model = export_mlp(Path(tempfile.gettempdir()) / "edgefl-bench-models")
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        row = run_size(n, args, model, tmp)
        print(json.dumps({k: v for k, v in row.items() if k != "rounds"}), flush=True)
        rows.append(row)
    record = {
        "command": "python bench/scale.py " + " ".join(sys.argv[1:]),
        "what": "one coordinator (model mlp, 199,210 float32 parameters, FedAvg) against N "
        "virtual devices with one MQTT connection each, Mosquitto on loopback; a round "
        "closes when all N updates are in",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "encoding": args.encoding,
        "delay_s": args.delay,
        "loadgen_processes": args.processes,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")


def _update_mb(row: dict) -> float:
    """One update's size, from the load generator's own count ("N updates sent (X MB)")."""
    m = re.search(r"(\d+) updates sent \(([\d.]+) MB\)", row["loadgen"])
    assert m, row["loadgen"]
    return float(m[2]) / int(m[1])


def _broker(mb: float) -> str:
    """The record's RSS "MB" are VmHWM kB / 1024 (MiB): 1024 of them make the doc's GB."""
    return f"{mb:.0f} MB" if mb < 1000 else f"{mb / 1024:.1f} GB"


def table(records: list[dict]) -> str:
    """docs/benchmarks.md's table: every size of every record (one record per encoding)."""
    lines = [
        "| devices | encoding | round closes in | messages/s | updates in, MB/s | coordinator "
        "peak RSS | Mosquitto peak RSS | FedAvg = plan |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for rec in records:
        for i, r in enumerate(rec["rows"]):
            enc = rec["encoding"] + (f" ({_update_mb(r):.2f} MB)" if i == 0 else "")
            lines.append(
                f"| {r['devices']:,} | {enc} | {r['round_close_s_median']:.2f} s "
                f"| {r['messages_per_s_median']:,.0f} | {r['update_mb_per_s_median']:,.0f} "
                f"| {r['coordinator_peak_rss_mb']:.1f} MB | {_broker(r['mosquitto_peak_rss_mb'])} "
                f"| {'yes' if r['fedavg_matches_plan'] else 'no'} |"
            )
    return "\n".join(lines)


def claims(record: dict) -> list[str]:
    """The phrases of the section's prose that quote the float32 record."""
    by = {r["devices"]: r for r in record["rows"]}
    small, large = by[1000], by[5000]
    gb = lambda r: f"{round(_update_mb(r) * r['devices'] / 1000, 1):g}"
    after = large["coordinator_rss_after_each_round_mb"]
    growth = (after[-1] - after[0]) / (len(after) - 1)
    return [
        f"(+{large['coordinator_peak_rss_mb'] - small['coordinator_peak_rss_mb']:.0f} MB from "
        f"{small['devices']:,} to {large['devices']:,} devices while the updates grow from "
        f"{gb(small)} to {gb(large)} GB per round; about {growth:.0f} MB per round of it",
        f"({_broker(large['mosquitto_peak_rss_mb'])} at {large['devices']:,} float32 updates)",
    ]


if __name__ == "__main__":
    main()
