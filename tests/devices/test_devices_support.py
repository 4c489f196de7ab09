"""Helpers for the devices tests: a real sshd standing in for a board, fleet inventories.

(Named test_devices_*.py so the module name stays unique; it holds no tests.)

:class:`SshServer` runs Debian's ``/usr/sbin/sshd`` as the current user on a free loopback
port with a host key and a user key made in a temporary directory; a :class:`Board` is a
temporary directory standing in for the board's file system (``opt/edgefl``,
``etc/systemd/system``, ``data``), reached through that sshd.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.brokers import free_port, wait_until_listening

SSHD = "/usr/sbin/sshd"
ROOT = Path(__file__).resolve().parents[2]


def fedcoord(
    *args: str, timeout: float = 300, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run ``fedcoord`` as a user would, in a subprocess."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "fedcoord"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def keygen(path: Path) -> Path:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgefl-test", "-f", str(path)],
        check=True,
    )
    return path


class SshServer:
    """Debian's sshd on 127.0.0.1, accepting ``key`` for one user (default: the current one).

    sshd reads ``authorized_keys`` as that user: for another user, ``directory`` must be
    readable by it (:class:`BoardUser` makes such a directory).
    """

    host = "127.0.0.1"

    def __init__(self, directory: Path, user: str | None = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user = user or getpass.getuser()
        self.port = free_port()
        self.key = keygen(self.dir / "id_ed25519")
        self.other_key = keygen(self.dir / "other_ed25519")  # never authorised
        self.known_hosts = self.dir / "known_hosts"
        host_key = keygen(self.dir / "host_ed25519")
        (self.dir / "authorized_keys").write_text((self.dir / "id_ed25519.pub").read_text())
        (self.dir / "authorized_keys").chmod(0o600 if user is None else 0o644)
        self.log = self.dir / "sshd.log"
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {self.host}\n"
            f"HostKey {host_key}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            f"AllowUsers {self.user}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PrintMotd no\n"
            "LogLevel VERBOSE\n"
        )
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> SshServer:
        if not Path(SSHD).exists():
            pytest.fail(f"{SSHD} is missing: apt-get install openssh-server (scripts/setup.sh)")
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        wait_until_listening(
            "sshd", self._process, self.host, self.port, self.log.read_text, self.stop
        )
        return self

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(5)


def this_python() -> str:
    """The real interpreter behind this venv: the test board's Python."""
    return os.path.realpath(sys.executable)  # a venv's bin/python links to it


def this_machine_profile() -> dict[str, str]:
    """A profile for this machine: x86-64 (or whatever it is), this Python, this glibc."""
    arch = {"arm64": "aarch64"}.get(platform.machine(), platform.machine())
    glibc = platform.libc_ver()[1]
    return {
        "base": "linux-x86_64",
        "arch": arch,
        "python": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "glibc": ".".join(glibc.split(".")[:2]),
    }


@dataclass
class Board:
    """A temporary directory standing in for a board's file system."""

    root: Path
    device: str = "board-1"

    @property
    def install_dir(self) -> Path:
        return self.root / "opt" / "edgefl"

    @property
    def unit_dir(self) -> Path:
        return self.root / "etc" / "systemd" / "system"

    @property
    def data(self) -> Path:
        return self.root / "data" / "train.npz"

    def make_data(self, n: int = 64) -> None:
        rng = np.random.default_rng(0)
        self.data.parent.mkdir(parents=True, exist_ok=True)
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        np.savez(self.data, x=x, y=np.arange(n) % 10)

    def releases(self) -> list[str]:
        d = self.install_dir / "releases"
        return sorted(p.name for p in d.iterdir()) if d.exists() else []

    def current(self) -> str | None:
        link = self.install_dir / "current"
        return os.readlink(link).rsplit("/", 1)[-1] if link.is_symlink() else None

    def client_pid(self) -> int | None:
        f = self.install_dir / "run" / "fedge.child.pid"
        try:
            pid = int(f.read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def service(self, command: str) -> int:
        script = self.install_dir / "fedge-service"
        if not script.exists():
            return 1
        return subprocess.run([str(script), command], timeout=60).returncode


def write_inventory(
    path: Path,
    *,
    ssh: SshServer,
    boards: list[Board],
    broker: str,
    job: str = "lab",
    key: Path | None = None,
    data: str | None = None,
    env: dict[str, str] | None = None,
    device_extra: str = "",
    fleet_extra: str = "",
) -> Path:
    """A fleet inventory with one device per board, all reached through ``ssh``."""
    profile = this_machine_profile()
    env = env if env is not None else {"EDGEFL_HEARTBEAT": "1", "EDGEFL_CONNECT_TIMEOUT": "10"}
    env_line = "env = { " + ", ".join(f'{k} = "{v}"' for k, v in env.items()) + " }"
    lines = [
        "[fleet]",
        f'job = "{job}"',
        f'broker = "{broker}"',
        fleet_extra,
        "",
        "[profiles.test-board]",
        *(f'{k} = "{v}"' for k, v in profile.items()),
        "",
        "[defaults]",
        f'ssh_user = "{ssh.user}"',
        f"ssh_port = {ssh.port}",
        f'ssh_key = "{key or ssh.key}"',
        f'known_hosts = "{ssh.known_hosts}"',
        'profile = "test-board"',
        f'python = "{this_python()}"',
        "",
    ]
    for board in boards:
        lines += [
            f"[devices.{board.device}]",
            f'host = "{ssh.host}"',
            f'data = "{data or board.data}"',
            f'install_dir = "{board.install_dir}"',
            f'unit_dir = "{board.unit_dir}"',
            env_line,
            device_extra,
            "",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    return path


class BoardUser:
    """A throwaway unprivileged user (no sudo) owning a board directory; root only.

    ``root`` (world-readable, so sshd and the user reach their files) holds the sshd
    directory and the board, whose install and unit directories belong to the user.
    """

    def __init__(self, root: Path) -> None:
        if os.geteuid() != 0:
            pytest.skip("creating a board user needs root (CI and the lab machine run as root)")
        self.name = f"edgefl-t{os.getpid()}"[:32]
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        root.chmod(0o755)
        home = root / "home"
        subprocess.run(
            ["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh", self.name],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        # "*": no password, but not locked (sshd without PAM refuses locked accounts)
        subprocess.run(["usermod", "-p", "*", self.name], check=True, timeout=60)
        self.uid = int(subprocess.check_output(["id", "-u", self.name], text=True))

    def board(self, device: str = "board-1") -> Board:
        """A board whose install and unit directories (and data) belong to this user."""
        board = Board(self.root / device, device)
        board.make_data()
        for d in (board.install_dir, board.unit_dir):
            d.mkdir(parents=True, exist_ok=True)
        for path in (board.root, *board.root.rglob("*")):
            os.chown(path, self.uid, -1)
            if path.is_dir():
                path.chmod(0o755)
        return board

    def remove(self) -> None:
        """Delete the user once the processes the tests started as it are gone."""
        deadline = time.monotonic() + 15
        while True:
            left = subprocess.run(["pgrep", "-u", self.name], capture_output=True, text=True)
            pids = [int(p) for p in left.stdout.split()]
            if not pids or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        for pid in pids:  # still there after 15 s: the test's own leftovers, by pid
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["userdel", "--remove", self.name], capture_output=True, timeout=60)
