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
    hinged = async_figures.Variant.parse("k2-model-h2-a1")
    assert (hinged.hinge, hinged.exponent, hinged.toward_model) == (2, 1.0, True)
    assert async_figures.mode_name("fedbuff-k2-model-h2-a1", record) == (
        "FedBuff, buffer 2, weight 1/(1+s-2)^1 beyond 2 behind, toward the trained model"
    )
    momentum = async_figures.Variant.parse("k2-model-mom0.9-lr0.1")
    assert (momentum.momentum, momentum.server_lr, momentum.toward_model) == (0.9, 0.1, True)
    assert async_figures.mode_name("fedbuff-k2-model-mom0.9-lr0.1", record) == (
        "FedBuff, buffer 2, server lr 0.1, server momentum 0.9, toward the trained model"
    )
    restart = async_figures.Variant.parse("k2-model-rf50")
    assert (restart.restart, restart.restart_first) == (0.5, True)
    assert async_figures.Variant.parse("k2-r25").restart_first is False
    assert async_figures.mode_name("fedbuff-k2-model-rf50", record) == (
        "FedBuff, buffer 2, trainings from the initial weights started over on a newer version "
        "within 50 %, toward the trained model"
    )
    averaged = async_figures.Variant.parse("k2-model-ema0.8")
    assert (averaged.ema, averaged.k, averaged.toward_model) == (0.8, 2, True)
    assert async_figures.mode_name("fedbuff-k2-model-ema0.8", record) == (
        "FedBuff, buffer 2, toward the trained model, evaluated as the versions' average "
        "decaying by 0.8"
    )
    with pytest.raises(SystemExit, match="unknown variant part 'x2'"):
        async_figures.Variant.parse("k2-x2")


def test_the_versions_average_weighs_each_older_version_by_the_decay():
    # Prepare
    import async_numerics
    import numpy as np

    versions = [{"w": np.full(2, x, np.float32)} for x in (1.0, 4.0, 10.0)]
    newest, average = async_numerics.VersionAverage(0.0), async_numerics.VersionAverage(0.5)
    # Execute
    seen = [average.add(v)["w"] for v in versions]
    # Assert: the first is itself (bias-corrected), then (0.5*4 + 0.25*1)/0.75, then
    # (0.5*10 + 0.25*4 + 0.125*1)/0.875; decay 0 is the newest version unchanged
    assert np.allclose([s[0] for s in seen], [1.0, 3.0, 6.125 / 0.875])
    assert seen[-1].dtype == np.float32
    assert newest.add(versions[2]) is versions[2]


def test_trainings_early_enough_start_over_on_a_new_version_once():
    # Prepare: at t=3 version 1 comes out. Board a began from version 0 at t=0 (cycle 10:
    # 30 % done), b from version 0 at t=0 (cycle 4: 75 % done), c from version 0 at t=2.5
    # but started over already, d from version 1 at t=2.9 (cycle 10, 1 % done)
    import async_numerics

    cycle = {"a": 10.0, "b": 4.0, "c": 10.0, "d": 10.0}
    events = [(10.0, 1, "a", 0), (4.0, 2, "b", 0), (12.5, 3, "c", 0), (12.9, 4, "d", 1)]
    started: dict[int, float | None] = {1: 0.0, 2: 0.0, 3: None, 4: 2.9}
    for variant, first in (("k2-r50", False), ("k2-rf50", True)):
        run = async_numerics.Run("iid", variant, 0)
        # Execute
        out = async_numerics._restarted(
            list(events), dict(started), cycle, 3.0, 1, async_figures.Variant.parse(variant), run
        )
        # Assert: only a starts over (finishing a cycle after t=3, from version 1), once
        assert sorted(out) == [(4.0, 2, "b", 0), (12.5, 3, "c", 0), (12.9, 4, "d", 1),
                               (13.0, 1, "a", 1)], first  # fmt: skip
        assert run.restarted == 1
    # a version 2 at t=4: d (from version 1, 11 % done) starts over only without "first"
    for variant, moved in (("k2-r50", True), ("k2-rf50", False)):
        run = async_numerics.Run("iid", variant, 0)
        out = async_numerics._restarted(
            [(12.9, 4, "d", 1)], {4: 2.9}, cycle, 4.0, 2, async_figures.Variant.parse(variant), run
        )
        assert out == ([(14.0, 4, "d", 2)] if moved else [(12.9, 4, "d", 1)])


def test_dips_are_the_lowest_version_after_the_floor_within_half_the_horizon():
    # Prepare: two seeds of one setting; the second seed never reaches the floor
    points = [(0, 0.1), (5, 0.845), (8, 0.80), (12, 0.86), (30, 0.70)]  # t=30: past half
    record = {
        "settings": {"k": 10, "horizon": 40, "targets": "0.85"},
        "summary": {"iid": {"sync": [], "fedbuff-k2-model": []}},
        "runs": [
            {"partition": "iid", "mode": "fedbuff-k2-model", "seed": 0,
             "points": [{"t": t, "accuracy": a} for t, a in points]},
            {"partition": "iid", "mode": "fedbuff-k2-model", "seed": 1,
             "points": [{"t": 0, "accuracy": 0.1}, {"t": 5, "accuracy": 0.83}]},
        ],
    }  # fmt: skip
    # Execute
    out = async_figures.dips(record, floor=0.84)
    # Assert: 80 % (t=8), not 70 % (after half the horizon); the second seed has no dip
    assert out == [
        "once they had first reached 84 % (within the first 20 s",
        "FedBuff, buffer 2, toward the trained model: down to 80.00 % (80.00-80.00)",
    ]


def test_none_sooner_says_so_only_when_no_setting_beat_the_default():
    # Prepare: medians of the time to 85 %: default 18, a1 18, h1 25 (one seed never: 40)
    def rows(*ts):
        return [{"t85": t} for t in ts]

    record = {
        "settings": {"horizon": 40, "targets": "0.85,0.88"},
        "summary": {"iid": {"sync": rows(80), "fedbuff-k2": rows(18), "fedbuff-k2-a1": rows(18),
                            "fedbuff-k2-h1": rows(25, None)}},
    }  # fmt: skip
    # Execute, Assert
    assert async_figures.none_sooner(record, "fedbuff-k2") == "neither crossed 85 % sooner"
    record["summary"]["iid"]["fedbuff-k2-a1"] = rows(17)
    assert async_figures.none_sooner(record, "fedbuff-k2").startswith("NOT SO")


@pytest.mark.slow
def test_quick_run_records_versions_that_learn_on_the_fleets_clock(export_dir, tmp_path):
    # Prepare
    out = tmp_path / "numerics.json"
    cmd = [sys.executable, str(ROOT / "bench/async_numerics.py"), "--quick"]
    cmd += ["--model-dir", str(export_dir("mlp", "adam")), "--out", str(out)]
    cmd += ["--variants", "k2,k2-mom0.5-lr0.5"]  # FedAvg's step, and server momentum's
    cmd += ["--horizon", "12", "--targets", "0.5,0.99", "--jobs", "2"]  # a worker trains
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Execute
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    # Assert: sync and FedBuff ran on the same clock; versions are ordered in time and
    # updates; both learned; FedBuff (fast boards first, 2 per version) made more versions
    # than sync (each round waits for its slowest of 10) within the horizon
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    record = json.loads(out.read_text())
    runs = {x["mode"]: x for x in record["runs"]}
    assert set(runs) == {"sync", "fedbuff-k2", "fedbuff-k2-mom0.5-lr0.5"}
    # the CPU column counts the worker's training, not only the parent's waiting
    assert record["cpu_s"] > 0.25 * record["wall_s"], (record["cpu_s"], record["wall_s"])
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
    # server momentum keeps its velocity across versions: its versions differ from FedAvg's
    plain, moved = (runs[m]["points"] for m in ("fedbuff-k2", "fedbuff-k2-mom0.5-lr0.5"))
    assert [p["accuracy"] for p in plain[2:]] != [p["accuracy"] for p in moved[2:]]
