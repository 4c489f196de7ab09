"""bench/async_numerics.py (and bench/async_figures.py, its rendering): FedBuff against synchronous FedAvg on a virtual clock.

The quick setting runs for real (the mlp, one seed, a short horizon): every board's update
is a real local training and the coordinator's Buffer folds them; the virtual clock is the
fleet's, so its figures do not depend on this machine's load."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from coordinator.simulation import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import async_figures  # noqa: E402


def test_variants_parse_and_name_their_settings():
    # Prepare
    record = {"settings": {"k": 10}}
    # Execute
    v = async_figures.Variant.parse("k2-a1-lr0.5-per1")
    # Assert
    assert (v.k, v.exponent, v.server_lr, v.per_device, v.toward_model) == (2, 1.0, 0.5, 1, False)
    assert async_figures.mode_name("fedbuff-k5", record) == "FedBuff, buffer 5, from its base"
    assert async_figures.mode_name("fedbuff-k2-model", record) == (
        "FedBuff, buffer 2, toward the trained model"
    )
    assert async_figures.mode_name("sync", record) == "synchronous FedAvg, 10 boards per round"
    with pytest.raises(SystemExit, match="unknown variant part 'x2'"):
        async_figures.Variant.parse("k2-x2")


@pytest.mark.slow
def test_quick_run_records_versions_that_learn_on_the_fleets_clock(export_dir, tmp_path):
    # Prepare
    out = tmp_path / "numerics.json"
    cmd = [sys.executable, str(ROOT / "bench/async_numerics.py"), "--quick"]
    cmd += ["--model-dir", str(export_dir("mlp", "adam")), "--variants", "k2", "--out", str(out)]
    cmd += ["--horizon", "12", "--targets", "0.5,0.99"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Execute
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    # Assert: sync and FedBuff ran on the same clock; versions are ordered in time and
    # updates; both learned; FedBuff (fast boards first, 2 per version) made more versions
    # than sync (each round waits for its slowest of 10) within the horizon
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    record = json.loads(out.read_text())
    runs = {x["mode"]: x for x in record["runs"]}
    assert set(runs) == {"sync", "fedbuff-k2"}
    for run in runs.values():
        times = [p["t"] for p in run["points"]]
        updates = [p["updates"] for p in run["points"]]
        assert times == sorted(times) and updates == sorted(updates)
        assert run["points"][-1]["accuracy"] > 0.5, run["points"]
    assert len(runs["fedbuff-k2"]["points"]) > len(runs["sync"]["points"])
    assert all(p["updates"] % 2 == 0 for p in runs["fedbuff-k2"]["points"])
    rows = record["summary"]["iid"]
    assert rows["sync"][0]["t50"] is not None and rows["sync"][0]["t99"] is None
    assert "| mixed-pi | iid | FedBuff, buffer 2, from its base |" in async_figures.table(record)
