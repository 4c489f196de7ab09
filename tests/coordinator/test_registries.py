"""One registry each for strategies, architectures and data sets: the command lines, the
job-file validation and the docs all follow it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from coordinator.config import JobConfig, resolve
from coordinator.strategies import STRATEGIES, STRATEGY_NAMES, build_strategy
from edge_client.data import DATASETS, dataset_names
from edge_client.errors import ConfigError
from model_export.registry import ARCHITECTURE_NAMES, JOB_ARCHITECTURES, OPTIMIZERS

ROOT = Path(__file__).resolve().parents[2]


def choices(command: click.Command, name: str) -> tuple[str, ...]:
    (param,) = [p for p in command.params if p.name == name]
    assert isinstance(param.type, click.Choice)
    return tuple(param.type.choices)


@pytest.mark.parametrize("name", STRATEGY_NAMES)
def test_every_registered_strategy_builds_under_its_own_name(name):
    assert build_strategy(JobConfig(strategy=name, prox_mu=0.1)).name == name


def test_command_line_choices_are_the_registries():
    from coordinator.commands.export import export
    from coordinator.commands.simulate import simulate
    from coordinator.commands.start import start
    from edge_client.cli import run

    assert choices(start, "strategy") == choices(simulate, "strategy") == STRATEGY_NAMES
    assert choices(start, "model") == JOB_ARCHITECTURES
    assert choices(start, "optimizer") == choices(export, "optimizer") == OPTIMIZERS
    assert choices(export, "architecture") == ARCHITECTURE_NAMES
    assert choices(simulate, "dataset") == choices(run, "dataset") == dataset_names()
    assert set(JOB_ARCHITECTURES) < set(ARCHITECTURE_NAMES)  # transfer needs a base model


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('strategy = "fedsgd"', "unknown strategy 'fedsgd': use one of fedavg, fedavgm"),
        ('model = "resnet"', "unknown model 'resnet': use one of mlp, cnn, cifar_cnn"),
        ('model = "transfer"', "unknown model 'transfer'"),
        ('optimizer = "rmsprop"', "unknown optimizer 'rmsprop': use one of sgd, adam"),
        ('strategy = "median"\ndp_clip = 1.0', "use strategy fedavg or fedprox, not median"),
    ],
)
def test_job_files_are_checked_against_the_registries(tmp_path, text, message):
    job_file = tmp_path / "job.toml"
    job_file.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        resolve({}, str(job_file), {})


def test_simulated_fleets_and_experiments_are_checked_too(tmp_path):
    from coordinator.experiments import run_experiment
    from coordinator.simulation import FleetConfig

    with pytest.raises(ConfigError, match="unknown data set 'emnist': use one of fashion-mnist"):
        FleetConfig(dataset="emnist")
    spec = tmp_path / "exp.toml"
    spec.write_text('[experiment]\nname = "x"\n[job]\nround = 3\n')
    with pytest.raises(ConfigError, match="variant run: unknown settings round"):
        run_experiment(spec, tmp_path / "out")
    spec.write_text('[experiment]\nname = "x"\n[job]\nrounds = "many"\n')
    with pytest.raises(ConfigError, match="rounds = 'many' is not a valid int"):
        run_experiment(spec, tmp_path / "out")


def _named(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def test_the_docs_name_every_registered_strategy_architecture_and_data_set():
    readme = (ROOT / "README.md").read_text()
    security = (ROOT / "docs" / "security.md").read_text()
    missing = [n for n in STRATEGIES if not _named(security, n)]
    missing += [
        n for n in (*STRATEGY_NAMES, *ARCHITECTURE_NAMES, *DATASETS) if not _named(readme, n)
    ]
    assert not missing, f"undocumented registry entries: {missing}"


def test_the_command_lines_read_the_registries_without_tensorflow():
    code = (
        "import sys, coordinator.cli, coordinator.config, model_export.registry; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"
