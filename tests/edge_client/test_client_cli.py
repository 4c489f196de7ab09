"""``fedge``: options, precedence, exit codes, secrets, ``info``, and what it imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner

from edge_client import cli
from edge_client.data import Dataset, save_npz
from tests.conftest import BOARD_PYTHON, ROOT
from tests.fixtures.brokers import free_port

RUN_OPTIONS = [
    "--broker",
    "--job",
    "--device-id",
    "--data",
    "--dataset",
    "--split",
    "--partition",
    "--partition-index",
    "--num-partitions",
    "--partition-seed",
    "--state-dir",
    "--runtime",
    "--threads",
    "--heartbeat",
    "--username",
    "--password-file",
    "--ca-file",
    "--cert-file",
    "--key-file",
    "--insecure",
    "--exit-on-stop",
    "--max-chunk",
    "--prefix",
    "--eval",
    "--connect-timeout",
    "--verbose",
]
SECRET = "pa55-w0rd-never-shown"


@pytest.fixture
def data_file(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    ds = Dataset(
        rng.integers(0, 256, (64, 28, 28, 1), dtype=np.uint8),
        rng.integers(0, 10, 64),
        tuple(str(i) for i in range(10)),
    )
    return save_npz(tmp_path / "train.npz", ds)


def fedge(*args: str, env: dict[str, str] | None = None, python: str = sys.executable):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [python, "-m", "edge_client.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
    )


def test_help_documents_every_option_and_its_environment_variable():
    result = CliRunner().invoke(cli.main, ["run", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in RUN_OPTIONS:
        assert option in result.output, option
    for env in ("EDGEFL_BROKER", "EDGEFL_JOB", "EDGEFL_DEVICE_ID", "EDGEFL_MQTT_PASSWORD_FILE"):
        assert env in result.output
    assert "--password " not in result.output  # passwords never on the command line


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "Missing option '--broker'"),
        (["--data", "a", "--dataset", "mnist"], "exactly one of --data PATH or --dataset NAME"),
        (["--dataset", "mnist", "--partition", "iid"], "--partition needs --num-partitions"),
        (["--dataset", "mnist", "--num-partitions", "3"], "--num-partitions needs --partition"),
        (
            [
                "--dataset",
                "mnist",
                "--partition",
                "iid",
                "--num-partitions",
                "3",
                "--partition-index",
                "3",
            ],
            "must be below --num-partitions 3",
        ),
        (
            ["--dataset", "mnist", "--partition", "halves", "--num-partitions", "2"],
            "unknown partition",
        ),
        (["--dataset", "imagenet"], "'imagenet' is not one of"),
        (["--dataset", "mnist", "--heartbeat", "-1"], "Invalid value for '--heartbeat'"),
    ],
)
def test_usage_errors_exit_2(args, message):
    base = ["run", "--broker", "mqtt://127.0.0.1:1", "--job", "demo", "--device-id", "pi-01"]
    full = ["run", *args] if not args else [*base, *args]
    result = CliRunner().invoke(cli.main, full, terminal_width=200)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_invalid_ids_are_usage_errors():
    result = CliRunner().invoke(
        cli.main, ["run", "--broker", "mqtt://h", "--job", "a/b", "--device-id", "x", "--data", "d"]
    )
    assert result.exit_code == 2 and "invalid job id 'a/b'" in result.output


def test_flag_beats_environment_beats_default(monkeypatch, tmp_path):
    # Prepare: capture the config instead of running a client
    import edge_client.client as client_module

    seen = []

    class FakeClient:
        def __init__(self, config, transport):
            seen.append(config)

        def run(self) -> int:
            return 0

        def stop(self) -> None: ...

    monkeypatch.setattr(client_module, "EdgeClient", FakeClient)
    monkeypatch.setattr(client_module, "mqtt_transport", lambda config: SimpleNamespace())
    secret = tmp_path / "password"
    secret.write_text(SECRET + "\n")
    env = {
        "EDGEFL_BROKER": "mqtt://env-host:1884",
        "EDGEFL_JOB": "envjob",
        "EDGEFL_DEVICE_ID": "env-device",
        "EDGEFL_DATASET": "mnist",
        "EDGEFL_HEARTBEAT": "5",
        "EDGEFL_MQTT_USERNAME": "env-user",
        "EDGEFL_MQTT_PASSWORD_FILE": str(secret),
        "EDGEFL_EXIT_ON_STOP": "1",
    }
    # Execute
    result = CliRunner().invoke(
        cli.main, ["run", "--device-id", "flag-device", "--heartbeat", "7"], env=env
    )
    # Assert
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert (config.job, config.device_id, config.heartbeat_s) == ("envjob", "flag-device", 7.0)
    assert (config.broker.host, config.broker.port) == ("env-host", 1884)
    assert (config.broker.username, config.broker.password) == ("env-user", SECRET)
    assert config.exit_on_stop and config.dataset == "mnist"
    assert (config.prefix, config.max_chunk, config.split) == ("fl/v1", 960_000, "train")
    assert SECRET not in result.output and SECRET not in repr(config)


def test_bad_data_is_one_line_error_and_exit_1(tmp_path):
    result = fedge(
        "run", "--broker", "mqtt://127.0.0.1:1", "--job", "demo", "--device-id", "pi-01",
        "--data", str(tmp_path / "missing"), "--state-dir", str(tmp_path / "s"),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: data path not found:")
    assert "Traceback" not in result.stderr


def test_unreachable_broker_exits_1_without_showing_the_password(tmp_path, data_file):
    result = fedge(
        "run", "--broker", f"mqtt://127.0.0.1:{free_port()}", "--job", "demo",
        "--device-id", "pi-01", "--data", str(data_file), "--state-dir", str(tmp_path / "s"),
        "--username", "pi-01", "--connect-timeout", "1", "-v",
        env={"EDGEFL_MQTT_PASSWORD": SECRET},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "error: cannot reach broker mqtt://127.0.0.1:" in result.stderr
    assert "Traceback" not in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_info_reports_runtime_numpy_and_paho_without_importing_tensorflow():
    code = (
        "import sys; from edge_client.cli import main; main(['info'], standalone_mode=False); "
        "print('TF-IMPORTED' if 'tensorflow' in sys.modules else 'TF-NOT-IMPORTED')"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert "runtime      ai-edge-litert" in r.stdout
    assert "numpy        2." in r.stdout and "paho-mqtt    2." in r.stdout
    assert r.stdout.strip().endswith("TF-NOT-IMPORTED")


def test_info_says_whether_signatures_can_be_and_are_enforced(tmp_path):
    # Prepare: a key pair as `fedcoord keys generate` writes it
    from edge_client.signing import Verifier, key_id

    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public = ed25519.Ed25519PrivateKey.generate().public_key()
    pub = tmp_path / "signing.pub"
    pub.write_bytes(
        public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    kid = Verifier.from_spec(str(pub)).key_id
    assert kid == key_id(
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    # Execute
    plain = fedge("info")
    by_env = fedge("info", env={"EDGEFL_TRUST_KEY": str(pub)})
    broken = fedge("info", "--trust-key", str(tmp_path / "missing.pub"))
    # Assert
    assert plain.returncode == 0 and by_env.returncode == 0, plain.stderr + by_env.stderr
    assert "cryptography " in plain.stdout and "(signature checks)" in plain.stdout
    assert "signatures   not enforced: no --trust-key / EDGEFL_TRUST_KEY" in plain.stdout
    assert (
        f"signatures   enforced: the model and every round announcement must be signed by key {kid}"
        in by_env.stdout
    )
    assert broken.returncode == 1 and "signatures   REQUIRED but unusable" in broken.stdout
    assert broken.stderr.startswith("error: ") and "Traceback" not in broken.stderr


@pytest.mark.board
def test_info_runs_in_the_board_environment():
    if not BOARD_PYTHON.exists():
        pytest.fail(f"board environment missing: {BOARD_PYTHON}")
    r = fedge("info", python=str(BOARD_PYTHON))
    assert r.returncode == 0, r.stderr
    assert "runtime      tflite-runtime 2.14.0 (used by default)" in r.stdout
    assert "numpy        1." in r.stdout
    assert "tensorflow" not in r.stdout
    assert "cryptography " in r.stdout and "signatures   not enforced" in r.stdout
