"""Flashing as an unprivileged board user (no sudo), and the health check that follows.

A throwaway user owns the board's install and unit directories and has no sudo, as on a
board where an administrator prepared ``/opt/edgefl`` for the ``pi`` user. It logs in
through a real sshd; the broker is a Mosquitto loading the generated files. The board's
Python is one that user may run (Debian's ``/usr/bin/python3.X`` when this venv's lives
under ``/root``). The tests run in order and share the board.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_devices_flash import error_line
from test_devices_support import Board, BoardUser, SshServer, fedcoord, this_python, write_inventory

from devices.security import read_password
from devices.wheels import build_board_wheel
from edge_client.protocol import DeviceStatus
from tests.fixtures.brokers import MosquittoProcess, free_port, mqtt_client, start_mosquitto

CHECK, CONNECT = "2", "6"  # --check-seconds, --connect-seconds


@dataclass
class UserLab:
    tmp: Path
    user: BoardUser
    ssh: SshServer
    broker: MosquittoProcess
    board: Board
    python: str

    @property
    def inventory(self) -> Path:
        return self.tmp / "fleet" / "fleet.toml"

    def write(self, broker: str | None = None, data: str | None = None) -> None:
        write_inventory(
            self.inventory, ssh=self.ssh, boards=[self.board], broker=broker or self.broker.url,
            data=data, device_extra=f'python = "{self.python}"',
            # fedge's own connect timeout well beyond the flash's check: the client keeps trying
            env={"EDGEFL_HEARTBEAT": "1", "EDGEFL_CONNECT_TIMEOUT": "60"},
        )  # fmt: skip

    def flash(self) -> subprocess.CompletedProcess:
        wheel = str(next((self.tmp / "client").glob("*.whl")))
        return fedcoord(
            "devices", "flash", "-i", str(self.inventory), "board-1", "--client-wheel", wheel,
            "--check-seconds", CHECK, "--connect-seconds", CONNECT,
        )  # fmt: skip

    def online_since(self, since: float, timeout: float = 20) -> DeviceStatus:
        """The device's retained status once it says online after ``since`` (Unix time)."""
        password = read_password(self.tmp / "fleet" / "secrets", "coordinator")
        topic = "fl/v1/lab/status/board-1"
        deadline = time.monotonic() + timeout
        while True:
            with mqtt_client(
                self.broker, "t-coord", username="coordinator", password=password
            ) as c:
                c.subscribe_wait(topic, qos=1)
                time.sleep(0.3)
                found = c.collector.matching(topic)
            status = DeviceStatus.from_json(found[-1].payload) if found else None
            if status is not None and status.state == "online" and status.time >= since:
                return status
            assert time.monotonic() < deadline, f"board-1 not online since {since}: {status}"
            time.sleep(0.5)

    def client_owner(self) -> int:
        pid = self.board.client_pid()
        assert pid is not None, "no client process"
        return os.stat(f"/proc/{pid}").st_uid


def runnable_python(uid: int) -> str:
    """This Python if ``uid`` may run it, else the system's Python of the same version."""
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    for candidate in (this_python(), f"/usr/bin/python{version}"):
        try:
            done = subprocess.run([candidate, "-c", "import venv"], user=uid, capture_output=True)
        except OSError:  # not even executable for that user
            continue
        if done.returncode == 0:
            return candidate
    pytest.fail(f"no Python {version} the board user may run (apt-get install python3)")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UserLab]:
    tmp = tmp_path_factory.mktemp("userlab")
    user = BoardUser(Path(f"/tmp/edgefl-userlab-{os.getpid()}"))
    ssh = board = broker = None
    try:
        build_board_wheel(tmp / "client")
        ssh = SshServer(user.root / "ssh", user=user.name).start()
        board = user.board()
        port = free_port()
        broker_dir = tmp / "fleet" / "broker"
        lab = UserLab(tmp, user, ssh, None, board, runnable_python(user.uid))  # type: ignore[arg-type]
        lab.write(broker=f"mqtt://127.0.0.1:{port}")
        done = fedcoord(
            "devices", "broker-files", "-i", str(lab.inventory), "--install-dir", str(broker_dir)
        )
        assert done.returncode == 0, done.stderr
        broker = start_mosquitto(tmp / "mosquitto", (broker_dir / "edgefl.conf").read_text(), port)
        lab.broker = broker
        yield lab
    finally:
        if board is not None:
            board.service("stop")
        if broker is not None:
            broker.stop()
        if ssh is not None:
            ssh.stop()
        user.remove()
        subprocess.run(["rm", "-rf", str(user.root)], check=False)


def test_a_board_user_without_sudo_is_flashed_when_its_directories_are_writable(lab):
    # Prepare: the user has no sudo (sudo -n fails or sudo is missing)
    try:
        no_sudo = subprocess.run(["sudo", "-n", "true"], user=lab.user.uid, capture_output=True)
        assert no_sudo.returncode != 0
    except OSError:  # no sudo at all
        pass
    started = time.time()
    # Execute
    done = lab.flash()
    # Assert: installed, the unit written without sudo, the client runs as the user and joined
    assert done.returncode == 0, done.stdout + done.stderr
    release = lab.board.current()
    assert f"installed release {release} (first install), running under supervisor" in done.stdout
    unit = lab.board.unit_dir / "fedge-board-1.service"
    assert unit.stat().st_uid == lab.user.uid and f"User={lab.user.name}" in unit.read_text()
    assert lab.client_owner() == lab.user.uid
    assert lab.online_since(started).samples == 64


def test_a_wrong_broker_address_is_rolled_back(lab):
    # Prepare: nothing listens on the new broker port; the client would retry forever
    old, releases = lab.board.current(), lab.board.releases()
    wrong = f"mqtt://127.0.0.1:{free_port()}"
    lab.write(broker=wrong)
    # Execute
    failed = lab.flash()
    started = time.time()
    # Assert: one line naming the broker; back on the previous release, online again
    line = error_line(failed)
    assert f"did not connect to its broker {wrong} within {CONNECT} s" in line, line
    assert f"went back to {old}" in line
    assert lab.board.current() == old and lab.board.releases() == releases
    assert lab.online_since(started).state == "online"
    lab.write()  # the good inventory again
    again = lab.flash()
    assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr


def test_a_crash_looping_client_is_not_up_to_date(lab):
    # Prepare: the data vanishes and the client dies; the supervisor restarts it every 10 s
    # and it exits at once each time, while the supervisor itself stays alive
    release = lab.board.current()
    hidden = lab.board.data.with_name("hidden.npz")
    lab.board.data.rename(hidden)
    pid = lab.board.client_pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    assert lab.board.service("status") == 0  # the supervisor is alive
    # Execute
    failed = lab.flash()
    # Assert: not "up to date": restarted, and the client's own error reported
    assert "up to date" not in failed.stdout
    assert f"release {release} is installed but its client is not running" in failed.stdout
    line = error_line(failed)
    assert "did not stay running" in line and "train.npz" in line, line
    assert f"release {release} stays installed" in line and lab.board.current() == release
    # Execute: the data is back; flashing again restarts it and it connects
    hidden.rename(lab.board.data)
    started = time.time()
    done = lab.flash()
    # Assert
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"board-1: restarted (release {release}, running under supervisor, connected)" in (
        done.stdout
    )
    assert lab.online_since(started).state == "online"
