"""Installed size and peak RSS: the edge client (ai-edge-litert) vs a TensorFlow client.

Two throwaway virtual environments in /tmp (kept for reuse; ``--fresh`` recreates them),
from the same base Python:

- ``board``: ``pip install .[board]``: edgefl with numpy, paho-mqtt, click, ai-edge-litert
  and cryptography (signature checks), what ``fedcoord devices flash`` puts on a board;
- ``tf``: ``pip install tensorflow==<the coordinator's version> paho-mqtt numpy``: the
  least a TensorFlow-based client needs to train the same model and speak MQTT.

Installed size is ``du -sk`` of each environment's site-packages, minus that of an empty
environment (pip alone). Peak RSS (``VmHWM``) is measured for the same local training, one
epoch over the same 12,000 Fashion-MNIST images (the first of five sequential parts), batch
32, SGD lr 0.05, ``cnn``:

- board: the real client, ``fedge run --data part.npz``, trains one round published by a
  scripted coordinator on the embedded broker (the harness of bench/edge_client_rss.py);
- tf: a process that imports paho-mqtt and TensorFlow, loads the same .npz, runs Keras
  ``fit`` on the same architecture and flattens the weights as a client would to publish.

    .venv/bin/python bench/tf_client_comparison.py [--fresh] [--out bench/results/tf_client_comparison.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
VENVS = Path(tempfile.gettempdir()) / "edgefl-client-comparison"
BASE_PYTHON = Path(sys.base_prefix) / "bin" / "python3"

# The TensorFlow client's local training: Keras fit of the same cnn on the same images.
_TF_CLIENT = r"""
import json, os, sys, time
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
import paho.mqtt.client  # a client speaks MQTT too
import tensorflow as tf
with np.load(sys.argv[1]) as f:
    x, y = f["x"].astype(np.float32) / 255.0, f["y"].astype(np.int64)
x = x.reshape(len(x), 28, 28, 1)
tf.keras.utils.set_random_seed(0)
model = tf.keras.Sequential([
    tf.keras.Input((28, 28, 1)),
    tf.keras.layers.Conv2D(16, 5, 2, "same", activation="relu"),
    tf.keras.layers.Conv2D(32, 5, 2, "same", activation="relu"),
    tf.keras.layers.Flatten(),
    tf.keras.layers.Dense(128, activation="relu"),
    tf.keras.layers.Dense(10),
])
model.compile(optimizer=tf.keras.optimizers.SGD(0.05), metrics=["accuracy"],
              loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
t0 = time.monotonic()
history = model.fit(x, y, batch_size=32, epochs=1, shuffle=True, verbose=0)
train_s = time.monotonic() - t0
update = b"".join(w.astype("<f4").tobytes() for w in model.get_weights())  # what would be sent
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print("TF-REPORT " + json.dumps({
    "vmhwm_kb": hwm, "train_s": round(train_s, 3), "samples": len(x),
    "local_accuracy": round(float(history.history["accuracy"][-1]), 4),
    "update_bytes": len(update), "tensorflow": tf.__version__,
}))
"""
_TF_IMPORT_ONLY = r"""
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy, paho.mqtt.client, tensorflow
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


def venv(name: str, packages: list[str], fresh: bool) -> Path:
    """A virtual environment under VENVS with ``packages`` installed; its python."""
    path = VENVS / name
    python = path / "bin" / "python"
    marker = path / ".installed"
    if fresh and path.exists():
        shutil.rmtree(path)
    if not marker.exists():
        subprocess.run([str(BASE_PYTHON), "-m", "venv", "--clear", str(path)], check=True)
        if packages:
            subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], check=True)
        marker.write_text(" ".join(packages) + "\n")
    return python


def source_copy() -> Path:
    """The project's source in /tmp, so that pip's build leaves the working tree alone."""
    target = VENVS / "src"
    shutil.rmtree(target, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("edge_client", "coordinator", "model_export", "devices"):
        shutil.copytree(ROOT / package, target / package, ignore=skip)
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, target / name)
    return target


def site_packages_kb(python: Path) -> int:
    where = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    du = subprocess.run(["du", "-sk", where], capture_output=True, text=True, check=True)
    return int(du.stdout.split()[0])


def installed(python: Path) -> list[str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "freeze", "--exclude", "pip"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()


def tf_client(python: Path, data: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run(
        [str(python), "-c", _TF_CLIENT, str(data)], capture_output=True, text=True, env=env
    )
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("TF-REPORT ")]
    if out.returncode or not line:
        raise SystemExit(f"the TensorFlow client failed:\n{out.stderr[-3000:]}")
    report = json.loads(line[-1].removeprefix("TF-REPORT "))
    imports = subprocess.run(
        [str(python), "-c", _TF_IMPORT_ONLY], capture_output=True, text=True, env=env
    )
    report["import_only_rss_mb"] = round(int(imports.stdout.strip()) / 1024, 1)
    report["peak_rss_mb"] = round(report.pop("vmhwm_kb") / 1024, 1)
    return report


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--fresh", action="store_true", help="recreate the environments")
    p.add_argument("--samples", type=int, default=12_000)
    p.add_argument("--out", default=str(ROOT / "bench/results/tf_client_comparison.json"))
    args = p.parse_args()

    import edge_client_rss as harness
    import tensorflow as tf  # the coordinator's version, pinned for the TensorFlow client

    from coordinator.broker import EmbeddedBroker

    empty = venv("empty", [], args.fresh)
    board = venv("board", [f"{source_copy()}[board]"], args.fresh)
    tfenv = venv("tf", [f"tensorflow=={tf.__version__}", "paho-mqtt>=2.0", "numpy"], args.fresh)
    base_kb = site_packages_kb(empty)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp_name, EmbeddedBroker(port=0) as broker:
        tmp = Path(tmp_name)
        model_dir, data = harness.prepare(tmp, args.samples)
        harness.publish_round(broker.url, model_dir)
        ours = harness.run_client(
            str(board), ["--data", str(data)], "ai-edge-litert", broker.url, tmp / "state"
        )
        ours["import_only_rss_mb"] = harness.baseline_rss(str(board))
        rows["edge client (ai-edge-litert)"] = {"python": str(board), **ours}
        rows["TensorFlow client (Keras fit)"] = {"python": str(tfenv), **tf_client(tfenv, data)}
    for name, python in (("edge client (ai-edge-litert)", board), ("TensorFlow client (Keras fit)", tfenv)):  # fmt: skip
        kb = site_packages_kb(python)
        rows[name]["site_packages_mb"] = round(kb / 1024, 1)
        rows[name]["installed_mb"] = round((kb - base_kb) / 1024, 1)  # minus pip itself
        rows[name]["packages"] = installed(python)
    ours, theirs = rows["edge client (ai-edge-litert)"], rows["TensorFlow client (Keras fit)"]
    ratios = {
        "installed_size": round(theirs["installed_mb"] / ours["installed_mb"], 1),
        "peak_rss": round(theirs["peak_rss_mb"] / ours["peak_rss_mb"], 1),
    }
    for name, row in rows.items():
        print(
            f"{name:32s} installed {row['installed_mb']:8.1f} MB  peak RSS {row['peak_rss_mb']:6.1f} MB"
            f"  (imports {row['import_only_rss_mb']} MB)  train {row['train_s']:.1f} s"
            f"  local accuracy {row['local_accuracy']:.4f}",
            flush=True,
        )
    print(f"TensorFlow client / edge client: {ratios}")
    record = {
        "command": " ".join(["python bench/tf_client_comparison.py", *sys.argv[1:]]),
        "what": f"one epoch of cnn over {args.samples} Fashion-MNIST images, batch 32, SGD 0.05; "
        "installed size = du -sk of site-packages minus an empty venv's (pip); peak RSS = VmHWM",
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "empty_venv_site_packages_mb": round(base_kb / 1024, 1),
        "rows": rows,
        "tensorflow_over_edge_client": ratios,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


EDGE, TF = "edge client (ai-edge-litert)", "TensorFlow client (Keras fit)"  # the record's rows


def table(record: dict) -> str:
    """docs/benchmarks.md's table: both clients and TensorFlow's over ours."""
    ours, theirs = record["rows"][EDGE], record["rows"][TF]
    ratio = record["tensorflow_over_edge_client"]
    mb = lambda x: f"{x:,.1f} MB"
    return "\n".join(
        [
            "| client | installed size | peak RSS | of which imports | one epoch |",
            "|---|---|---|---|---|",
            f"| edge client, {ours['runtime']} (+ numpy, paho-mqtt, click, cryptography) "
            f"| **{mb(ours['installed_mb'])}** | **{mb(ours['peak_rss_mb'])}** "
            f"| {mb(ours['import_only_rss_mb'])} | {ours['train_s']:.1f} s |",
            f"| TensorFlow {theirs['tensorflow']} client (+ numpy, paho-mqtt), Keras `fit` "
            f"| {mb(theirs['installed_mb'])} | {mb(theirs['peak_rss_mb'])} "
            f"| {mb(theirs['import_only_rss_mb'])} | {theirs['train_s']:.1f} s |",
            f"| TensorFlow / edge client | {ratio['installed_size']:.1f}x | "
            f"{ratio['peak_rss']:.1f}x | | {theirs['train_s'] / ours['train_s']:.1f}x |",
        ]
    )


def claims(record: dict) -> list[str]:
    """The phrases of the section's prose that quote the record."""
    return [f"Of the edge client's {record['rows'][EDGE]['installed_mb']:.1f} MB"]


if __name__ == "__main__":
    raise SystemExit(main())
