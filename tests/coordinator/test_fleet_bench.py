"""bench/fleet.py --quick end to end: real simulated boards (a 4-board fleet, mlp), the real
coordinator and broker, each mode for a short wall-clock budget; the record has every figure
and recomputes from the raw records it copied."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from coordinator.simulation import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import fleet_claims  # noqa: E402
import fleet_figures  # noqa: E402

RUN_FILES = {"bench.json", "config.json", "events.jsonl", "metrics.jsonl", "summary.json"}


def quick_modes() -> list[str]:
    """Synchronous FedAvg and FedBuff (semi-synchronous until FedBuff is there): the bench
    reads every mode's records the same way, and two runs keep the test under a minute."""
    from dataclasses import fields

    from coordinator.config import JobConfig

    names = {f.name for f in fields(JobConfig)}
    return ["sync", "fedbuff" if "buffer_size" in names else "semi"]


@pytest.mark.slow
def test_quick_bench_records_every_figure_and_recomputes_from_its_raw_records(export_dir, tmp_path):
    # Prepare
    modes = quick_modes()
    out = tmp_path / "fleet.json"
    cmd = [sys.executable, str(ROOT / "bench/fleet.py"), "--quick", "--modes", ",".join(modes)]
    cmd += ["--model-dir", str(export_dir("mlp", "adam")), "--out", str(out)]
    cmd += ["--work", str(tmp_path / "work"), "--budget", "quick=15", "--targets", "0.5,0.99"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # Execute
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env, cwd=ROOT)
    # Assert: one run per mode, each with its figures
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["command"].startswith("python bench/fleet.py --quick")
    assert sorted(x["mode"] for x in record["runs"]) == sorted(modes)
    for run in record["runs"]:
        assert run["budget_s"] == 15.0
        assert run["accepted_updates"] >= 1, run
        assert run["accuracy_at_budget"] > 0.5, run  # mlp on Fashion-MNIST after 1 round
        assert run["time_to"]["50"] is not None and 0 < run["time_to"]["50"] <= 15, run
        assert run["time_to"]["99"] is None  # not reached: reported as beyond the budget
        assert run["same_updates"]["n"] >= 1 and run["same_updates"]["accuracy"] is not None
        assert run["wasted_updates"] >= 0 and run["stopped_trainings"] >= 0
        assert run["trainings_started"] >= run["accepted_updates"]
        assert run["link_bytes_per_accepted_update"] > run["update_bytes_per_accepted_update"]
        assert run["update_bytes_per_accepted_update"] > 100_000  # an mlp update is ~0.8 MB
        assert 0 < run["utilisation_measured"] < 1 and not run["oversubscribed"]
        assert run["device_cpu_s"] > 0 and run["coordinator_process_cpu_s"] > 0
        assert run["wall_s"] >= 15  # the budget, then the boards' exit
        assert run["load_average"]["median"] is not None and run["cores"] >= 1
        assert run["startup_s"] > 0  # the boards start, then the first local training
        assert set(os.listdir(tmp_path / "fleet" / run["name"])) == RUN_FILES
        bench = json.loads((tmp_path / "fleet" / run["name"] / "bench.json").read_text())
        assert bench["fleet_seed"] == 1  # the quick fleet's own: --vary-fleet-seed not given
    # ...and the figures recompute from the raw records alone
    again = fleet_figures.figures(tmp_path / "fleet", [0.5, 0.99])
    assert again["runs"] == record["runs"]
    assert "| quick | iid | synchronous FedAvg |" in fleet_figures.table(again, [0.5, 0.99])


def test_an_unknown_mode_is_a_one_line_error(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench/fleet.py"), "--quick", "--modes", "sync,async"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: unknown mode 'async': use sync, semi, fedbuff (or fedbuffN-aX)"
    ]


def test_fedbuff_n_runs_fedbuff_with_a_buffer_of_n_and_is_labelled_so():
    # Prepare
    sys.path.insert(0, str(ROOT / "bench"))
    import fleet

    # Execute
    two = fleet.mode_settings("fedbuff2", 10, 1.5, "fold", 5)
    default = fleet.mode_settings("fedbuff", 10, 1.5, "fold", 5)
    # Assert: fedbuffN overrides --buffer-size; a malformed N is a one-line error
    assert two == {"mode": "buffered", "buffer_size": 2}
    assert default == {"mode": "buffered", "buffer_size": 5}
    assert fleet_figures.label("fedbuff2") == "FedBuff, buffer 2"
    assert fleet_figures.label("fedbuff") == "FedBuff"
    assert fleet.mode_settings("fedbuff2-a1", 10, 1.5, "fold", 5) == {
        "mode": "buffered",
        "buffer_size": 2,
        "staleness_exponent": 1.0,
    }
    assert fleet_figures.label("fedbuff2-a1") == "FedBuff, buffer 2, weight 1/(1+s)^1"
    assert fleet.mode_settings("fedbuff2-model", 10, 1.5, "fold", 5)["stale_changes"] == (
        "toward-model"
    )
    assert fleet_figures.label("fedbuff2-model") == "FedBuff, buffer 2, toward the trained model"
    assert fleet.mode_settings("fedbuff2-lr0.25-model", 10, 1.5, "fold", 5) == {
        "mode": "buffered",
        "buffer_size": 2,
        "server_lr": 0.25,
        "stale_changes": "toward-model",
    }
    assert fleet_figures.label("fedbuff2-lr0.25-model") == (
        "FedBuff, buffer 2, server lr 0.25, toward the trained model"
    )
    assert fleet.mode_settings("fedbuff-base", 10, 1.5, "fold", 5)["stale_changes"] == "from-base"
    assert fleet.mode_settings("fedbuff2-model-so0", 10, 1.5, "fold", 5)["start_over_within"] == 0
    assert fleet_figures.label("fedbuff2-model-so0.5") == (
        "FedBuff, buffer 2, toward the trained model, started over within 50 %"
    )
    assert fleet_figures.label("fedbuff2-model-so0") == (
        "FedBuff, buffer 2, toward the trained model, no start over"
    )
    assert fleet_figures.label("fedbuff-base") == "FedBuff, from its base"
    for bad in ("fedbuff0", "fedbuffx", "fedbuff2-b1"):
        with pytest.raises(SystemExit, match=f"unknown mode '{bad}': use fedbuff, fedbuffN"):
            fleet.mode_settings(bad, 10, 1.5, "fold", 5)


def test_vary_fleet_seed_gives_each_repeat_its_own_draw_of_the_fleet(tmp_path):
    # Prepare
    sys.path.insert(0, str(ROOT / "bench"))
    import fleet

    # Execute: repeat 0, and repeat 3 with and without --vary-fleet-seed
    same = fleet.fleet_spec("mixed-pi", tmp_path)
    moved = fleet.fleet_spec("mixed-pi", tmp_path, 3)
    quick = fleet.fleet_spec("quick", tmp_path, 2)
    # Assert: only the seed moves (by the repeat number); the boards stay the fleet file's
    assert same.seed == 1 and moved.seed == 4 and quick.seed == 3
    assert moved.boards == same.boards
    assert fleet.parse_args(["--vary-fleet-seed"]).vary_fleet_seed
    assert not fleet.parse_args([]).vary_fleet_seed


@pytest.mark.parametrize(
    "name",
    [
        "fleet",
        "fleet_stale_changes",
        "fleet_scoring",
        "fleet_scoring_more",
        "fleet_ahead",
        "fleet_idle",
        "fleet_seeds",
        "fleet_seeds_dirichlet",
        "fleet_start_over",
        "fleet_start_over_dirichlet",
        "fleet_start_over_more",
        "fleet_defaults",
    ],
)
def test_each_committed_fleet_record_is_its_raw_records(name):
    # Prepare: the committed record of a full run (the modes; the follow-up on stale
    # changes; the repeats) and its raw records
    record = json.loads((ROOT / f"bench/results/{name}.json").read_text())
    targets = record["settings"]["targets"]
    # Execute
    again = fleet_figures.figures(ROOT / f"bench/results/{name}", targets)
    # Assert: the record's figures are the raw records' own (docs/benchmarks.md quotes the
    # raw records' tables and prose: tests/test_benchmark_figures.py checks them)
    assert again["runs"] == record["runs"] and again["acceptance"] == record["acceptance"]


def test_a_statement_the_records_no_longer_support_is_rendered_so():
    # Prepare: the main run's records and the repeats' acceptance rows
    def records(name):
        record = json.loads((ROOT / f"bench/results/{name}.json").read_text())
        return fleet_claims.Records(record, ROOT / f"bench/results/{name}")

    main = records("fleet")
    repeats = [
        a for n in ("fleet_scoring", "fleet_scoring_more") for a in records(n).result["acceptance"]
    ]
    claim = "FedBuff is faster, not 3x faster"
    # Execute: as recorded, then with the buffer of 2 reaching 85 % 3.5x sooner
    before = fleet_claims.modes_claims(main, repeats)
    main.acceptance("fedbuff2")["speedup_to_85"] = 3.5
    after = fleet_claims.modes_claims(main, repeats)
    # Assert: the doc check then fails on the phrase until the sentence is rewritten
    assert claim in before and fleet_claims.NOT_SO + claim not in before
    assert fleet_claims.NOT_SO + claim in after
