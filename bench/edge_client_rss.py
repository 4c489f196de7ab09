"""Peak RSS of the edge client training ``cnn`` on 12,000 Fashion-MNIST images (1 epoch).

Runs the real client (``fedge run``, i.e. ``edge_client.cli``) in a child process per
runtime, against the embedded broker, with a scripted coordinator in this process that
publishes the model, global weights and one round, waits for the update and stops the job.
The child's peak RSS is the ``VmHWM`` it reads from ``/proc/self/status`` as it exits (its
``ru_maxrss`` is useless here: Linux carries the parent's high-water mark, with TensorFlow
loaded for the export, across fork and exec). The child also reports whether TensorFlow
was ever imported (it must not be).

    .venv/bin/python bench/edge_client_rss.py [--board-python .venv-board/bin/python]
        [--samples 12000] [--out bench/results/edge_client_rss.json]

ai-edge-litert runs in this (coordinator) environment, tflite-runtime 2.14 in the board
environment. The 12,000 images are the first of five sequential parts of the training set,
saved as a .npz the way a board holds its own data; a second ai-edge-litert row loads the
named data set and partitions it on the device (``--dataset --partition``), as simulations do.
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
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_MB = 120.0
JOB, DEVICE = "bench", "rss-01"

# Runs in the child: the real CLI, then a report on what was imported and the peak RSS.
_CHILD = """
import json, sys
from edge_client.cli import main
try:
    main(sys.argv[1:], prog_name="fedge")
except SystemExit as exc:
    code = exc.code or 0
hwm = next((int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")), 0)
heavy = sorted({n.split(".")[0] for n in sys.modules} & {"tensorflow", "keras", "coordinator", "model_export"})
print("RSS-REPORT " + json.dumps({"exit": code, "vmhwm_kb": hwm, "heavy_modules": heavy}))
"""
_BASELINE = """
import edge_client.client, edge_client.runtime as r
r.load_runtime().interpreter_class
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(hwm)
"""


def prepare(tmp: Path, samples: int) -> tuple[Path, Path]:
    """Export the cnn and write the first ``samples`` training images as a .npz."""
    from edge_client.data import load_dataset, partition, save_npz
    from model_export.export import ExportConfig, export_model
    from model_export.optimizers import OptimizerConfig

    model_dir = tmp / "cnn"
    export_model(ExportConfig("cnn", optimizer=OptimizerConfig("sgd", 0.05)), model_dir)
    full = load_dataset("fashion-mnist", "train")
    parts = partition(full.y, len(full) // samples, "sequential")
    data = save_npz(tmp / "fashion-mnist-part0.npz", full.subset(parts[0]))
    return model_dir, data


def run_client(python: str, data_args: list[str], runtime: str, url: str, state: Path) -> dict:
    """One round through the real client; returns its peak RSS and the update's meta."""
    import paho.mqtt.client as mqtt

    from edge_client.protocol import JobControl, Reassembler, Topics, decode

    topics = Topics(JOB)
    updates: list = []
    reassembler = Reassembler()

    def on_message(client, userdata, msg):  # noqa: ANN001
        whole = reassembler.feed(msg.topic.rsplit("/", 1)[0], msg.payload)
        if whole is not None:
            updates.append(decode(whole))

    host, port = url.removeprefix("mqtt://").split(":")
    coord = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-coord-{runtime}")
    coord.on_message = on_message
    coord.connect(host, int(port))
    coord.loop_start()
    coord.subscribe(f"{topics.update(DEVICE)}/#", qos=1)
    args = [
        "run", "--broker", url, "--job", JOB, "--device-id", DEVICE, *data_args,
        "--runtime", runtime, "--state-dir", str(state), "--exit-on-stop", "--heartbeat", "5",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    out_path, err_path = state.with_suffix(".out"), state.with_suffix(".err")
    with out_path.open("wb") as out, err_path.open("wb") as err:  # files: pipes could fill up
        proc = subprocess.Popen([python, "-c", _CHILD, *args], env=env, stdout=out, stderr=err)
    try:
        while not updates and time.monotonic() - start < 600 and proc.poll() is None:
            time.sleep(0.05)
        ctl = JobControl(JOB, "stopped", time.time(), "benchmark done")
        coord.publish(topics.control, ctl.to_json(), qos=1, retain=True).wait_for_publish(10)
        proc.wait(timeout=120)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
        coord.publish(topics.control, b"", qos=1, retain=True).wait_for_publish(10)
        coord.loop_stop()
        coord.disconnect()
    stdout, stderr = out_path.read_text(), err_path.read_text()
    report_line = [ln for ln in stdout.splitlines() if ln.startswith("RSS-REPORT ")]
    if not updates or not report_line:
        raise SystemExit(f"the client produced no update:\n{stderr[-3000:]}")
    report = json.loads(report_line[-1].removeprefix("RSS-REPORT "))
    meta = updates[0].meta
    return {
        "peak_rss_mb": round(report["vmhwm_kb"] / 1024, 1),  # VmHWM of the client process
        "runtime": f"{meta['interpreter']} {meta['interpreter_version']}",
        "samples": updates[0].samples,
        "train_s": meta["duration_s"],
        "local_accuracy": round(meta["accuracy"], 4),
        "heavy_modules_imported": report["heavy_modules"],
        "exit_code": report["exit"],
    }


def baseline_rss(python: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([python, "-c", _BASELINE], env=env, capture_output=True, text=True)
    return round(int(out.stdout.strip()) / 1024, 1) if out.returncode == 0 else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--samples", type=int, default=12_000)
    p.add_argument("--board-python", default=str(ROOT / ".venv-board/bin/python"))
    p.add_argument("--out", default=str(ROOT / "bench/results/edge_client_rss.json"))
    args = p.parse_args()

    from coordinator.broker import EmbeddedBroker

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedBroker(port=0) as broker:
        tmp = Path(tmp_name)
        model_dir, data = prepare(tmp, args.samples)
        publish_round(broker.url, model_dir)
        runs = [
            ("ai-edge-litert", sys.executable, ["--data", str(data)]),
            ("tflite-runtime", args.board_python, ["--data", str(data)]),
            (
                "ai-edge-litert",
                sys.executable,
                ["--dataset", "fashion-mnist", "--partition", "sequential"]
                + ["--num-partitions", str(60_000 // args.samples), "--partition-index", "0"],
            ),
        ]
        for i, (runtime, python, data_args) in enumerate(runs):
            if not Path(python).exists():
                print(f"skipping {runtime}: {python} not found")
                continue
            row = {"data": " ".join(a if "/" not in a else Path(a).name for a in data_args)}
            row.update(run_client(python, data_args, runtime, broker.url, tmp / f"state{i}"))
            row["import_only_rss_mb"] = baseline_rss(python)
            rows.append(row)
            met = "met" if row["peak_rss_mb"] < TARGET_MB else "MISSED"
            verdict = (
                f" (target < {TARGET_MB:.0f} MB: {met})" if runtime == "ai-edge-litert" else ""
            )
            print(
                f"{row['runtime']:22s} {row['data']:60s} peak RSS {row['peak_rss_mb']:6.1f} MB"
                f"{verdict}; imports alone {row['import_only_rss_mb']} MB; "
                f"train {row['train_s']:.1f} s on {row['samples']}; "
                f"heavy modules {row['heavy_modules_imported'] or 'none'}",
                flush=True,
            )
    record = {
        "command": " ".join(["python bench/edge_client_rss.py", *sys.argv[1:]]),
        "what": f"fedge run, cnn, 1 epoch over {args.samples} Fashion-MNIST images, batch 32, "
        "embedded broker, scripted coordinator; peak RSS = VmHWM of the client process at exit",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "target_mb": TARGET_MB,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


def publish_round(url: str, model_dir: Path) -> None:
    """Retained model, global weights and round 1 (every client run trains it)."""
    import paho.mqtt.client as mqtt

    from edge_client.manifest import Manifest
    from edge_client.protocol import (
        RoundAnnouncement,
        Topics,
        chunked,
        encode_model,
        encode_weights,
        weights_sha256,
    )
    from edge_client.trainable_model import TrainableModel

    tflite = (model_dir / "model.tflite").read_bytes()
    manifest = Manifest.load(model_dir / "manifest.json")
    weights = TrainableModel(tflite, manifest).get_weights()
    topics = Topics(JOB)
    host, port = url.removeprefix("mqtt://").split(":")
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-coordinator")
    c.connect(host, int(port))
    c.loop_start()
    messages = chunked(
        topics.model, encode_model(tflite, manifest.to_dict(), job=JOB, sender="coordinator")
    )
    messages += chunked(
        topics.global_weights,
        encode_weights(weights, kind="global", job=JOB, round=1, sender="coordinator"),
    )
    ann = RoundAnnouncement(
        JOB, 1, time.time() + 3600, (DEVICE,), {"epochs": 1, "lr": 0.05},
        manifest.sha256, weights_sha256(weights),
    )  # fmt: skip
    messages.append((topics.round, ann.to_json()))
    for topic, payload in messages:
        c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


RUNTIME_NOTES = {"tflite-runtime": " (board env, numpy 1.26)"}  # the doc's labels


def table(record: dict) -> str:
    """docs/benchmarks.md's table; the first row (the target's setting) in bold."""
    lines = ["| runtime | data | peak RSS | of which imports |", "|---|---|---|---|"]
    for i, r in enumerate(record["rows"]):
        note = RUNTIME_NOTES.get(r["runtime"].split()[0], "")
        peak = f"{r['peak_rss_mb']:.1f} MB"
        lines.append(
            f"| {r['runtime']}{note} | `{r['data']}` | {f'**{peak}**' if i == 0 else peak} "
            f"| {r['import_only_rss_mb']:.1f} MB |"
        )
    return "\n".join(lines)


def claims(record: dict) -> list[str]:
    """The phrases of the section's prose that quote the record."""
    tf_free = all(not r["heavy_modules_imported"] for r in record["rows"])
    return [
        f"Target: below {record['target_mb']:.0f} MB with ai-edge-litert",
        "No TensorFlow module is loaded in the client" if tf_free else "TensorFlow is loaded",
    ]


if __name__ == "__main__":
    raise SystemExit(main())
