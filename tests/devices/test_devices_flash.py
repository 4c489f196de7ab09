"""Flashing over a real SSH server onto a directory standing in for a board.

The lab: Debian's sshd on a loopback port (temporary host and user keys), a Mosquitto
that loads the generated password and ACL files, and ``fedcoord devices`` run as a user
would. The board has no systemd, so the client runs under the ``fedge-service``
supervisor; the unit file is still written (and checked with systemd-analyze).
The tests run in order and share one board: each leaves it installed and running.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from test_devices_support import Board, SshServer, fedcoord, this_python, write_inventory

from devices.security import read_password
from devices.wheels import build_board_wheel
from edge_client.protocol import DeviceStatus
from tests.fixtures.brokers import MosquittoProcess, free_port, mqtt_client, start_mosquitto

pytestmark = pytest.mark.slow  # over ~5 s: left out of the fast loop (pytest -m "not slow")

CHECK = "2"  # seconds the client must keep running after a start (--check-seconds)


@dataclass
class Lab:
    tmp: Path
    ssh: SshServer
    broker: MosquittoProcess
    board: Board
    boards: list[Board] = field(default_factory=list)  # every board to stop at the end

    @property
    def inventory(self) -> Path:
        return self.tmp / "fleet" / "fleet.toml"

    def write(self, board: Board | None = None, path: Path | None = None, **kw: object) -> Path:
        board = board or self.board
        if board not in self.boards:
            self.boards.append(board)
        return write_inventory(
            path or self.inventory, ssh=self.ssh, boards=[board], broker=self.broker.url, **kw
        )  # type: ignore[arg-type]

    def flash(self, *args: str, inventory: Path | None = None) -> subprocess.CompletedProcess:
        """``fedcoord devices flash`` with the client wheel built when the lab started.

        (The same wheel every time, even if someone edits edge_client meanwhile.)
        """
        inv = str(inventory or self.inventory)
        wheel = str(self.client_wheel)
        return fedcoord(
            "devices", "flash", "-i", inv, "--check-seconds", CHECK, "--client-wheel", wheel, *args
        )

    @property
    def client_wheel(self) -> Path:
        return next((self.tmp / "client").glob("*.whl"))

    def status_of(self, device: str, timeout: float = 15) -> DeviceStatus:
        """The device's retained status, read as the coordinator user."""
        password = read_password(self.tmp / "fleet" / "secrets", "coordinator")
        with mqtt_client(self.broker, "t-coord", username="coordinator", password=password) as c:
            c.subscribe_wait(f"fl/v1/lab/status/{device}", qos=1)
            deadline = time.monotonic() + timeout
            while True:
                found = c.collector.matching(f"fl/v1/lab/status/{device}")
                status = DeviceStatus.from_json(found[-1].payload) if found else None
                if (status and status.state == "online") or time.monotonic() > deadline:
                    assert status is not None, f"no status of {device} within {timeout} s"
                    return status
                time.sleep(0.1)


def error_line(done: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a failed command (and no traceback)."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, done.stderr
    return errors[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("lab")
    build_board_wheel(tmp / "client")
    ssh = SshServer(tmp / "ssh").start()
    port = free_port()
    board = Board(tmp / "board-1")
    board.make_data()
    broker_dir = tmp / "fleet" / "broker"
    write_inventory(
        tmp / "fleet" / "fleet.toml", ssh=ssh, boards=[board], broker=f"mqtt://127.0.0.1:{port}"
    )
    done = fedcoord(
        "devices", "broker-files", "-i", str(tmp / "fleet" / "fleet.toml"),
        "--install-dir", str(broker_dir),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    broker = start_mosquitto(tmp / "mosquitto", (broker_dir / "edgefl.conf").read_text(), port)
    lab = Lab(tmp, ssh, broker, board, [board])
    try:
        yield lab
    finally:
        for b in lab.boards:
            b.service("stop")
        broker.stop()
        ssh.stop()


def test_dry_run_prints_the_plan_and_touches_nothing(lab):
    # Execute
    done = lab.flash("board-1", "--dry-run")
    from_tree = fedcoord("devices", "flash", "-i", str(lab.inventory), "--all", "--dry-run")
    # Assert: a plan, no SSH contact (no host key learnt), nothing on the board
    assert done.returncode == 0, done.stderr
    assert "board-1: plan (dry run: nothing is changed)" in done.stdout
    assert f"client    {lab.client_wheel.name} + ai-edge-litert" in done.stdout
    assert from_tree.returncode == 0 and "built from this tree" in from_tree.stdout
    assert f"{lab.board.install_dir}/current" in done.stdout
    assert not lab.ssh.known_hosts.exists()
    assert not lab.board.install_dir.exists() and not lab.board.unit_dir.exists()
    assert "signing.pub (made on the first flash)" in done.stdout
    assert not (Path(os.environ["EDGEFL_KEYS_DIR"]) / "lab").exists()  # no key made either


def test_flash_installs_the_client_and_it_joins_the_job(lab):
    # Execute
    started = time.monotonic()
    done = lab.flash("board-1")
    took = time.monotonic() - started
    # Assert: installed into a release, switched, unit written, client running
    assert done.returncode == 0, done.stdout + done.stderr
    release = lab.board.current()
    assert f"board-1: installed release {release} (first install), running under supervisor" in (
        done.stdout
    )
    print(f"first flash: {took:.1f} s")
    root = lab.board.install_dir
    assert (root / "current" / "venv" / "bin" / "fedge").exists()
    assert (root / "current" / "venv").is_symlink() and len(list((root / "venvs").iterdir())) == 1
    assert (root / "current" / "password").stat().st_mode & 0o777 == 0o600
    env = (root / "current" / "fedge.env").read_text()
    assert 'EDGEFL_MQTT_USERNAME="board-1"' in env and 'EDGEFL_JOB="lab"' in env
    assert read_password(lab.tmp / "fleet" / "secrets", "board-1") not in env
    # Assert: signed by default: the job's own key was made and the board trusts it
    job_pub = Path(os.environ["EDGEFL_KEYS_DIR"]) / "lab" / "signing.pub"
    assert "made job lab's signing key" in done.stdout
    assert (root / "current" / "signing.pub").read_bytes() == job_pub.read_bytes()
    assert f'EDGEFL_TRUST_KEY="{root}/current/signing.pub"' in env
    assert "signatures   enforced" in (root / "current" / "fedge-info.txt").read_text()
    unit = (lab.board.unit_dir / "fedge-board-1.service").read_text()
    assert f"ExecStart={root}/current/venv/bin/fedge run" in unit and "Restart=on-failure" in unit
    if shutil.which("systemd-analyze"):  # the unit a Raspberry Pi would run is valid
        verify = subprocess.run(
            ["systemd-analyze", "verify", str(lab.board.unit_dir / "fedge-board-1.service")],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert "fedge-board-1" not in verify.stderr, verify.stderr
    assert lab.board.client_pid() is not None
    # Assert: the device joined the job with its own credentials (the broker runs the ACL)
    status = lab.status_of("board-1")
    assert (status.state, status.samples) == ("online", 64)
    assert status.interpreter.startswith("ai-edge-litert")
    shown = fedcoord("devices", "status", "-i", str(lab.inventory))
    assert shown.returncode == 0, shown.stderr
    assert "1 of 1 device(s) online" in shown.stdout
    row = next(ln for ln in shown.stdout.splitlines() if ln.startswith("board-1"))
    assert row.split()[1] == "online" and "ai-edge-litert" in row
    as_json = fedcoord("devices", "status", "-i", str(lab.inventory), "--json")
    (entry,) = [json.loads(ln) for ln in as_json.stdout.splitlines()]
    assert (entry["device"], entry["state"], entry["samples"]) == ("board-1", "online", 64)
    logs = fedcoord("devices", "logs", "-i", str(lab.inventory), "board-1", "-n", "20")
    assert logs.returncode == 0 and "device board-1 joined job lab" in logs.stdout


def test_flashing_again_changes_nothing(lab):
    # Prepare
    pid, releases = lab.board.client_pid(), lab.board.releases()
    unit = lab.board.unit_dir / "fedge-board-1.service"
    mtime = unit.stat().st_mtime_ns
    # Execute
    started = time.monotonic()
    done = lab.flash("board-1")
    took = time.monotonic() - started
    # Assert
    assert done.returncode == 0, done.stderr
    assert f"board-1: up to date (release {releases[0]}, running under supervisor, connected)" in (
        done.stdout
    )
    assert lab.board.client_pid() == pid and lab.board.releases() == releases
    assert unit.stat().st_mtime_ns == mtime
    assert took < 15, f"an up-to-date flash took {took:.1f} s"


def test_a_damaged_wheel_fails_the_update_and_the_old_install_keeps_running(lab):
    # Prepare: the board's Python moved (a new venv is needed) and a wheel is truncated
    old, pid = lab.board.current(), lab.board.client_pid()
    python = lab.tmp / "python-bin" / "python3"
    python.parent.mkdir()
    python.symlink_to(this_python())
    lab.write(device_extra=f'python = "{python}"')
    wheel = next((lab.board.install_dir / "wheelhouse").glob("numpy-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[:1000])
    # Execute
    failed = lab.flash("board-1")
    # Assert: one line, the staging release removed, the running client untouched
    line = error_line(failed)
    assert "board-1: install failed: missing or damaged wheels on the board: numpy-" in line
    assert lab.board.releases() == [old] and lab.board.current() == old
    assert lab.board.client_pid() == pid
    # Execute: flash again, which uploads the wheel again
    done = lab.flash("board-1")
    # Assert
    assert done.returncode == 0, done.stdout + done.stderr
    new = lab.board.current()
    assert new != old and f"installed release {new} (was {old})" in done.stdout
    assert sorted(lab.board.releases()) == sorted([old, new])  # the previous one is kept
    assert lab.board.client_pid() not in (None, pid)
    assert len(list((lab.board.install_dir / "venvs").iterdir())) == 2  # old and new
    assert lab.status_of("board-1").state == "online"


def test_a_settings_change_reuses_the_installed_environment(lab):
    # Prepare
    old, venvs = lab.board.current(), sorted((lab.board.install_dir / "venvs").iterdir())
    python = lab.tmp / "python-bin" / "python3"
    lab.write(
        env={"EDGEFL_HEARTBEAT": "2", "EDGEFL_CONNECT_TIMEOUT": "10"},
        device_extra=f'python = "{python}"',
    )
    # Execute
    started = time.monotonic()
    done = lab.flash("board-1")
    took = time.monotonic() - started
    # Assert: a new release, no pip install, the new setting in effect
    assert done.returncode == 0, done.stdout + done.stderr
    assert "reusing the installed environment" in done.stdout and "uploading" in done.stdout
    assert lab.board.current() != old
    in_use = Path(os.readlink(lab.board.install_dir / "current" / "venv")).name
    assert in_use in {v.name for v in venvs}  # the same venv as before
    assert [v.name for v in (lab.board.install_dir / "venvs").iterdir()] == [in_use]  # pruned
    assert lab.status_of("board-1").heartbeat_s == 2
    print(f"settings-only flash: {took:.1f} s")


def test_a_client_that_does_not_stay_up_is_rolled_back(lab):
    # Prepare: data that does not exist on the board: the client exits at once
    old, releases = lab.board.current(), lab.board.releases()
    python = lab.tmp / "python-bin" / "python3"
    lab.write(data=str(lab.board.root / "missing.npz"), device_extra=f'python = "{python}"')
    # Execute
    failed = lab.flash("board-1")
    # Assert: back on the previous release, running again
    line = error_line(failed)
    assert "did not stay running" in line and f"went back to {old}" in line
    assert "missing.npz" in line  # the client's own error, from its log
    assert lab.board.current() == old and lab.board.releases() == releases  # as it was
    assert lab.board.client_pid() is not None
    assert lab.status_of("board-1").state == "online"


def test_a_first_install_that_fails_leaves_nothing_enabled(lab):
    # Prepare: a new board whose data is missing
    board = Board(lab.tmp / "board-3", device="board-3")
    inventory = lab.write(board, lab.tmp / "fleet" / "board-3.toml", data="/nonexistent.npz")
    # Execute
    failed = lab.flash("board-3", inventory=inventory)
    # Assert
    assert "the service was removed" in error_line(failed)
    assert board.current() is None and board.releases() == []
    assert not list((board.install_dir / "venvs").iterdir())  # the new venv is gone too
    assert not (board.unit_dir / "fedge-board-3.service").exists()
    assert not (board.install_dir / "fedge-service").exists() and board.client_pid() is None


def test_flashing_a_trusted_key_makes_the_board_enforce_signatures_unless_unsigned(lab):
    # Prepare: the coordinator's signing key pair
    keys = lab.tmp / "keys"
    made = fedcoord("keys", "generate", "--out", str(keys))
    assert made.returncode == 0, made.stderr
    python = lab.tmp / "python-bin" / "python3"
    lab.write(device_extra=f'python = "{python}"', fleet_extra='trust_key = "../keys/signing.pub"')
    plan = lab.flash("board-1", "--dry-run")
    # Execute
    done = lab.flash("board-1")
    # Assert: the key is on the board, the client trusts it (fedge info) and runs connected
    assert done.returncode == 0, done.stdout + done.stderr
    assert "boards trust " in plan.stdout and "keys/signing.pub (EDGEFL_TRUST_KEY)" in plan.stdout
    current = lab.board.install_dir / "current"
    assert (current / "signing.pub").read_bytes() == (keys / "signing.pub").read_bytes()
    env = (current / "fedge.env").read_text()
    assert f'EDGEFL_TRUST_KEY="{lab.board.install_dir}/current/signing.pub"' in env
    from edge_client.signing import Verifier

    kid = Verifier.from_spec(str(keys / "signing.pub")).key_id
    info = (current / "fedge-info.txt").read_text()
    assert (
        f"signatures   enforced: the model and every round announcement must be signed by key {kid}"
        in info
    )
    assert "running under supervisor, connected" in done.stdout
    # Execute: a trust_key that is not a public key
    (keys / "bad.pub").write_text("not a key\n")
    lab.write(device_extra=f'python = "{python}"', fleet_extra='trust_key = "../keys/bad.pub"')
    failed = lab.flash("board-1")
    # Assert: refused before anything is uploaded
    line = error_line(failed)
    assert line.startswith("error: trust_key ") and "bad.pub is not an Ed25519 public key" in line
    assert lab.board.current() == current.resolve().name
    # Execute: an unsigned fleet, by explicit choice
    lab.write(device_extra=f'python = "{python}"', fleet_extra="unsigned = true")
    unsigned = lab.flash("board-1")
    # Assert: no key on the board, and fedge info says nothing is enforced
    assert unsigned.returncode == 0, unsigned.stdout + unsigned.stderr
    assert not (current / "signing.pub").exists()
    assert "EDGEFL_TRUST_KEY" not in (current / "fedge.env").read_text()
    assert "signatures   not enforced" in (current / "fedge-info.txt").read_text()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unreachable", "cannot reach"),
        ("wrong key", "refused the key"),
        ("missing key", "does not exist"),
        ("unknown profile", "unknown profile 'rpi9-64'"),
        ("missing host", 'devices.board-2 is missing host = "..."'),
        ("no python", "no working Python at '/nonexistent/python3'"),
        ("systemd", "systemd is not running on the board"),
    ],
)
def test_bad_input_is_one_clear_line_and_installs_nothing(lab, case, message):
    # Prepare
    board = Board(lab.tmp / f"board-2-{case.replace(' ', '-')}", device="board-2")
    path = lab.tmp / "fleet" / "board-2.toml"
    kw: dict = {
        "unreachable": {},
        "wrong key": {"key": lab.ssh.other_key},
        "missing key": {"key": lab.tmp / "no-such-key"},
        "unknown profile": {"device_extra": 'profile = "rpi9-64"'},
        "missing host": {},
        "no python": {"device_extra": 'python = "/nonexistent/python3"'},
        "systemd": {"device_extra": 'service = "systemd"'},
    }[case]
    lab.write(board, path, **kw)
    text = path.read_text()
    if case == "unreachable":
        text = text.replace(f"ssh_port = {lab.ssh.port}", f"ssh_port = {free_port()}")
    if case == "missing host":
        text = text.replace('host = "127.0.0.1"\n', "")
    path.write_text(text)
    # Execute
    done = lab.flash("board-2", inventory=path)
    # Assert
    line = error_line(done)
    assert message in line, line
    assert not board.install_dir.exists() and not board.unit_dir.exists()
