"""Run an experiment file and keep its raw record under docs/results/<name>/.

    nice -n 19 .venv/bin/python bench/record_experiment.py experiments/fashion_mnist_paper.toml
    .venv/bin/python bench/record_experiment.py experiments/X.toml --copy-only   # record only

Run it from the repository's root (the paths below are relative to it).
It runs ``fedcoord experiment FILE --out runs/experiments`` (run directories stay under the
gitignored runs/), samples the machine's load average every 30 s while it runs, then copies
what docs/results.md's figures are computed from (tests/test_doc_figures.py recomputes them):

    docs/results/<name>/experiment.toml      the experiment file as run
    docs/results/<name>/summary.json         fedcoord experiment's summary (wall times)
    docs/results/<name>/run.json             command, commit, start/end, load average samples
    docs/results/<name>/<variant>/metrics.jsonl, config.json, baseline.json (if any)
    docs/results/<name>/<variant>/<png>      the report's plots named by --png

No weights, models or data are copied. With ``--variant`` only that variant is run and
recorded; the other variants' records already under docs/results/<name>/ are kept.
"""

from __future__ import annotations

import argparse
import json
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

RECORD_FILES = ("metrics.jsonl", "config.json", "baseline.json")
LOAD_EVERY_S = 30.0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _load_sample() -> list[Any]:
    one, five, fifteen = os.getloadavg()
    return [_now(), round(one, 2), round(five, 2), round(fifteen, 2)]


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip()


def run(experiment: Path, out_root: Path, variant: str | None) -> dict[str, Any]:
    """Run the experiment at the caller's priority; return the run.json record."""
    cmd = ["fedcoord", "experiment", str(experiment), "--out", str(out_root)]
    if variant:
        cmd += ["--variant", variant]
    samples = [_load_sample()]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(LOAD_EVERY_S):
            samples.append(_load_sample())

    thread = threading.Thread(target=sample, daemon=True)
    record: dict[str, Any] = {
        "command": f"nice -n {os.nice(0)} .venv/bin/" + " ".join(cmd),
        "commit": _commit(),
        "cpus": os.cpu_count(),
        "start": _now(),
    }
    thread.start()
    exe = Path(sys.executable).parent / "fedcoord"
    rc = subprocess.run([str(exe), *cmd[1:]]).returncode
    done.set()
    thread.join()
    samples.append(_load_sample())
    record.update(end=_now(), returncode=rc, loadavg=samples)
    if rc != 0:
        raise SystemExit(f"fedcoord experiment exited with {rc}: nothing recorded")
    return record


def copy_record(
    experiment: Path, out_root: Path, dest_root: Path, pngs: list[str], only: str | None
) -> Path:
    """Copy the experiment's raw record (no weights, no models) to dest_root/<name>/."""
    from coordinator.experiments import load_experiment

    spec = load_experiment(experiment)
    name = str(spec["experiment"]["name"])
    src, dest = out_root / name, dest_root / name
    if not (src / "summary.json").is_file():
        raise SystemExit(
            f"{src}/summary.json not found: run the experiment first (without --copy-only)"
        )
    summary = json.loads((src / "summary.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(experiment, dest / "experiment.toml")
    old = dest / "summary.json"
    if only and old.exists():  # keep the other variants' entries
        kept = [v for v in json.loads(old.read_text())["variants"] if v["variant"] != only]
        summary["variants"] = kept + summary["variants"]
    (dest / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    for v in summary["variants"]:
        if only and v["variant"] != only:
            continue
        run_dir, vdest = src / v["variant"], dest / v["variant"]
        vdest.mkdir(exist_ok=True)
        for f in RECORD_FILES:
            if (run_dir / f).exists():
                shutil.copyfile(run_dir / f, vdest / f)
        for png in pngs:
            shutil.copyfile(run_dir / "report" / png, vdest / png)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("experiment", type=Path)
    ap.add_argument("--variant", default=None, help="run and record only this variant")
    ap.add_argument("--out", type=Path, default=Path("runs/experiments"))
    ap.add_argument("--dest", type=Path, default=ROOT / "docs" / "results")
    ap.add_argument(
        "--png",
        action="append",
        default=None,
        help="report plot to keep per variant (repeatable; default: accuracy.png)",
    )
    ap.add_argument("--copy-only", action="store_true", help="record a finished run only")
    args = ap.parse_args()
    pngs = args.png or ["accuracy.png"]
    record = None if args.copy_only else run(args.experiment, args.out, args.variant)
    dest = copy_record(args.experiment, args.out, args.dest, pngs, args.variant)
    if record is not None:
        tag = f"run-{args.variant}.json" if args.variant else "run.json"
        (dest / tag).write_text(json.dumps(record, indent=1) + "\n")
    print(f"recorded {dest}")


if __name__ == "__main__":
    main()
