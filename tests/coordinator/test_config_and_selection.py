"""Job configuration precedence and participant selection."""

from __future__ import annotations

import subprocess
import sys

import pytest

from coordinator.config import JobConfig, resolve
from coordinator.selection import round_size, select_devices
from coordinator.simulation import ROOT
from edge_client.errors import ConfigError


def test_precedence_flag_over_env_over_file_over_default(tmp_path):
    job_file = tmp_path / "job.toml"
    job_file.write_text('job = "from-file"\nrounds = 7\n[devices]\nepochs = 3\nlr = 0.5\n')
    env = {"EDGEFL_ROUNDS": "9", "EDGEFL_EPOCHS": "4"}
    cfg = resolve({"epochs": 5, "rounds": None}, str(job_file), env)
    assert cfg.job == "from-file"  # file over default
    assert cfg.rounds == 9  # env over file
    assert cfg.epochs == 5  # flag over env
    assert cfg.lr == 0.5
    assert cfg.strategy == JobConfig().strategy  # default


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"file": "rounds = 'many'"}, "rounds = 'many' is not a valid int"),
        ({"file": "colour = 'red'"}, "unknown settings colour"),
        ({"env": {"EDGEFL_INSECURE": "maybe"}}, "EDGEFL_INSECURE: insecure = 'maybe'"),
        ({"flags": {"fraction": 1.5}}, "fraction must be in"),
        ({"flags": {"strategy": "fedsgd"}}, "unknown strategy 'fedsgd'"),
        ({"flags": {"over_select": 0.5}}, "over_select must be in"),
        ({"flags": {"over_select": 1.3}}, "over_select selects more devices than a round"),
        ({"file": "late_updates = 'keep'"}, "late_updates must be one of discard, fold"),
        ({"env": {"EDGEFL_MAX_STALENESS": "-1"}}, "max_staleness must be >= 0"),
        ({"flags": {"mode": "async"}}, "unknown mode 'async': use one of sync, buffered"),
        ({"file": "mode = 'buffered'\nbuffer_size = 0"}, "buffer_size must be at least 1"),
        (
            {"flags": {"mode": "buffered", "over_select": 1.5, "fraction": 0.5}},
            "over_select is for synchronous rounds",
        ),
        (
            {"env": {"EDGEFL_MODE": "buffered", "EDGEFL_LATE_UPDATES": "fold"}},
            "late_updates fold is for synchronous rounds",
        ),
        ({"flags": {"max_concurrency": -1}}, "max_concurrency must be >= 0"),
        ({"flags": {"staleness_exponent": -0.5}}, "staleness_exponent must be a number >= 0"),
        ({"file": "staleness_exponent = nan"}, "staleness_exponent must be a number >= 0"),
        ({"flags": {"stale_changes": "sideways"}}, "stale_changes must be one of from-base, "),
        ({"flags": {"start_over_within": 1.5}}, "start_over_within must be a share from 0"),
        ({"file": "start_over_within = -0.1"}, "start_over_within must be a share from 0"),
        (
            {"flags": {"mode": "buffered", "secure_aggregation": True}},
            "--secure-aggregation needs synchronous rounds",
        ),
    ],
)
def test_bad_configuration_names_the_problem(tmp_path, source, message):
    job_file = None
    if "file" in source:
        job_file = tmp_path / "job.toml"
        job_file.write_text(source["file"])
    with pytest.raises(ConfigError, match=message):
        resolve(source.get("flags", {}), str(job_file) if job_file else None, source.get("env", {}))


HIDDEN = "which secure aggregation hides from the coordinator"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        *(
            (
                {"flags": {"strategy": name}},
                f"--secure-aggregation cannot run strategy {name}: it looks at each board's "
                f"update, {HIDDEN}; use fedavg, fedprox or fedavgm",
            )
            for name in ("median", "trimmed_mean", "krum", "multi_krum")
        ),
        ({"file": "strategy = 'krum'"}, "cannot run strategy krum: .*; use fedavg"),
        *(
            (
                {"flags": dp},
                r"--secure-aggregation cannot run DP-FedAvg \(--dp-clip, --dp-noise-multiplier\)"
                f": it clips each update, {HIDDEN}; leave both at 0",
            )
            for dp in (
                {"dp_clip": 1.0},
                {"dp_noise_multiplier": 1.0},
                {"dp_clip": 1.0, "dp_noise_multiplier": 0.5},
            )
        ),
        (
            {"env": {"EDGEFL_EVAL_DEVICES": "1"}},
            f"--secure-aggregation cannot run --eval-devices: it scores each board's update, "
            f"{HIDDEN}; turn --eval-devices off",
        ),
        (
            {"file": "late_updates = 'fold'"},
            f"--secure-aggregation cannot run --late-updates fold: .*{HIDDEN}; use --late-updates "
            "discard",
        ),
        (
            {"flags": {"max_update_norm": 5.0}},
            f"--secure-aggregation cannot run --max-update-norm 5: it judges each update, {HIDDEN}; "
            "leave it at 10 or 0",
        ),
        ({"flags": {"max_weight_share": 0.3}}, "cannot run --max-weight-share 0.3: .*at 0.5 or 0"),
        (
            {"env": {"EDGEFL_MAX_CHANGE_RATIO": "3"}},
            "cannot run --max-change-ratio 3: .*at 10 or 0",
        ),
    ],
)
def test_secure_aggregation_refuses_what_needs_single_updates_in_one_line(
    tmp_path, source, message
):
    # Prepare: secure aggregation on, and one setting that needs each board's update
    job_file = tmp_path / "job.toml"
    job_file.write_text("secure_aggregation = true\n" + source.get("file", ""))
    flags = source.get("flags", {})
    # Execute / Assert: refused, naming the setting and what to do, on one line
    with pytest.raises(ConfigError, match=message) as refused:
        resolve(flags, str(job_file), source.get("env", {}))
    assert "\n" not in str(refused.value)


def test_secure_aggregation_takes_averaging_strategies_and_per_update_bounds_off():
    for strategy in ("fedavg", "fedprox", "fedavgm"):
        assert resolve({"secure_aggregation": True, "strategy": strategy}, None, {}).strategy
    off = {"max_update_norm": 0.0, "max_weight_share": 0.0, "max_change_ratio": 0.0}
    assert resolve({"secure_aggregation": True, **off}, None, {}).secure_aggregation


def test_fedcoord_start_refuses_secure_aggregation_with_a_robust_strategy_in_one_line(tmp_path):
    # Execute: the CLI as a user runs it (refused before it connects or writes anything)
    cmd = [sys.executable, "-m", "coordinator.cli", "start", "--secure-aggregation"]
    cmd += ["--strategy", "median", "--broker", "mqtt://127.0.0.1:1"]
    cmd += ["--run-dir", str(tmp_path / "run")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    # Assert: exit 1, one line naming the problem and the fix, no traceback, no run dir
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [
        f"error: --secure-aggregation cannot run strategy median: it looks at each board's "
        f"update, {HIDDEN}; use fedavg, fedprox or fedavgm"
    ]
    assert "Traceback" not in r.stdout + r.stderr and not (tmp_path / "run").exists()


def test_missing_and_malformed_job_files(tmp_path):
    with pytest.raises(ConfigError, match="job file not found"):
        resolve({}, str(tmp_path / "nope.toml"), {})
    (tmp_path / "bad.toml").write_text("rounds = [")
    with pytest.raises(ConfigError, match="cannot read job file"):
        resolve({}, str(tmp_path / "bad.toml"), {})


def test_selection_all_fraction_and_k():
    online = {f"d{i}" for i in range(10)}
    assert select_devices(online, 1, fraction=1.0, k=0, seed=0) == tuple(sorted(online))
    assert len(select_devices(online, 1, fraction=0.3, k=0, seed=0)) == 3
    picks = [select_devices(online, r, fraction=1.0, k=4, seed=7) for r in range(1, 20)]
    assert all(len(p) == 4 for p in picks)
    assert len(set(picks)) > 5  # K random devices, different per round
    assert picks == [
        select_devices(online, r, fraction=1.0, k=4, seed=7) for r in range(1, 20)
    ]  # seeded
    assert select_devices(set(), 1, fraction=1.0, k=0, seed=0) == ()


def test_over_selection_picks_more_devices_and_the_same_ones_again():
    online = {f"d{i}" for i in range(20)}
    # Prepare: what a synchronous round selects, and its size
    plain = select_devices(online, 3, fraction=1.0, k=10, seed=1)
    assert round_size(20, fraction=1.0, k=10) == 10 and round_size(20, fraction=0.25, k=0) == 5
    # Execute
    over = select_devices(online, 3, fraction=1.0, k=10, seed=1, over_select=1.3)
    # Assert: 13 devices, seeded (a resumed job selects the same), capped at the online ones
    assert len(over) == 13 and over == select_devices(
        online, 3, fraction=1.0, k=10, seed=1, over_select=1.3
    )
    assert select_devices(online, 3, fraction=1.0, k=10, seed=1, over_select=1.0) == plain
    assert len(select_devices(online, 3, fraction=0.5, k=0, seed=1, over_select=3)) == 20


def test_over_selection_and_late_updates_from_a_job_file(tmp_path):
    job_file = tmp_path / "job.toml"
    job_file.write_text(
        "[participants]\nclients_per_round = 10\nover-select = 1.3\n"
        "late-updates = 'fold'\nmax_staleness = 3\n"
    )
    cfg = resolve({}, str(job_file), {})
    assert (cfg.over_select, cfg.late_updates, cfg.max_staleness) == (1.3, "fold", 3)


def test_buffered_mode_from_a_job_file_and_its_staleness_default(tmp_path):
    # Prepare
    job_file = tmp_path / "job.toml"
    job_file.write_text(
        "rounds = 40\n[round-mode]\nmode = 'buffered'\nbuffer-size = 4\nmax_concurrency = 8\n"
        "server_lr = 0.8\n"
    )
    # Execute
    cfg = resolve({}, str(job_file), {})
    # Assert: max_staleness 0 means the mode's default (10 versions; 2 rounds in sync)
    assert (cfg.mode, cfg.buffer_size, cfg.max_concurrency, cfg.server_lr) == (
        "buffered", 4, 8, 0.8,
    )  # fmt: skip
    assert cfg.buffered and cfg.max_staleness == 0 and cfg.staleness_limit == 10
    assert resolve({"max_staleness": 3}, str(job_file), {}).staleness_limit == 3
    assert JobConfig().staleness_limit == 2 and not JobConfig().buffered
