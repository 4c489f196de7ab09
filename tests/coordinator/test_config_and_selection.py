"""Job configuration precedence and participant selection."""

from __future__ import annotations

import pytest

from coordinator.config import JobConfig, resolve
from coordinator.selection import select_devices
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
    ],
)
def test_bad_configuration_names_the_problem(tmp_path, source, message):
    job_file = None
    if "file" in source:
        job_file = tmp_path / "job.toml"
        job_file.write_text(source["file"])
    with pytest.raises(ConfigError, match=message):
        resolve(source.get("flags", {}), str(job_file) if job_file else None, source.get("env", {}))


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
