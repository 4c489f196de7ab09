"""SSH to a board with the system's ``ssh`` client: batch mode, clear one-line errors.

Never prompts (``BatchMode``): a board whose key is not authorised fails at once instead
of waiting for a password. An unknown host key is accepted on first contact and checked
on every later one (``StrictHostKeyChecking=accept-new``).
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devices.errors import SshError
from devices.inventory import Device

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10  # a board on Wi-Fi answers well within this
_UNREACHABLE = (
    "connection refused",
    "timed out",
    "no route to host",
    "could not resolve",
    "network is unreachable",
    "connection reset",
    "connection closed",
    "name or service not known",
)


@dataclass(frozen=True)
class SshTarget:
    device: str
    host: str
    user: str
    port: int = 22
    key: Path | None = None  # None: ssh's default keys and agent
    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts

    @classmethod
    def of(cls, device: Device) -> SshTarget:
        return cls(
            device.id, device.host, device.ssh_user, device.ssh_port, device.ssh_key,
            device.known_hosts,
        )  # fmt: skip

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def check_key(self) -> None:
        if self.key is not None and not self.key.is_file():
            raise SshError(f"{self.device}: SSH key {self.key} does not exist")

    def command(self, remote: str) -> list[str]:
        cmd = ["ssh", "-T", "-p", str(self.port)]
        cmd += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}"]
        cmd += ["-o", "StrictHostKeyChecking=accept-new", "-o", "LogLevel=ERROR"]
        cmd += ["-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if self.known_hosts is not None:
            cmd += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.key is not None:
            cmd += ["-i", str(self.key), "-o", "IdentitiesOnly=yes"]
        return [*cmd, f"{self.user}@{self.host}", remote]

    def _error(self, stderr: str) -> SshError:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else "ssh failed without a message"
        text = stderr.lower()
        if "permission denied" in text:
            key = f"the key {self.key}" if self.key else "every key ssh tried"
            return SshError(
                f"{self.device}: {self.where} refused {key} (Permission denied); "
                f"add the public key to ~{self.user}/.ssh/authorized_keys on the board"
            )
        if "host key verification failed" in text or "remote host identification" in text:
            where = self.known_hosts or "~/.ssh/known_hosts"
            return SshError(
                f"{self.device}: the host key of {self.host} does not match {where}; if the "
                "board was reinstalled, remove its old key with ssh-keygen -R"
            )
        if any(s in text for s in _UNREACHABLE):
            return SshError(f"{self.device}: cannot reach {self.where} over SSH: {last}")
        return SshError(f"{self.device}: ssh to {self.where} failed: {last}")

    def run(
        self, script: str, *args: str, timeout: float | None = 900, capture: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with ``sh -s`` and ``args`` on the board; SshError if SSH fails.

        The remote exit status is left to the caller (``returncode``); 255 is SSH's own.
        With ``capture=False`` the output goes straight to this terminal (``devices logs``).
        """
        self.check_key()
        remote = "sh -s -- " + " ".join(shlex.quote(a) for a in args)
        pipe = subprocess.PIPE if capture else None
        try:
            done = subprocess.run(
                self.command(remote), input=script.encode(), stdout=pipe, stderr=subprocess.PIPE,
                timeout=timeout,
            )  # fmt: skip
        except FileNotFoundError:
            raise SshError("the ssh client is not installed (apt install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise SshError(
                f"{self.device}: ssh to {self.where} timed out after {timeout:.0f} s"
            ) from None
        result = subprocess.CompletedProcess(
            done.args,
            done.returncode,
            (done.stdout or b"").decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )
        if result.returncode == 255:
            raise self._error(result.stderr)
        return result

    def upload(
        self, remote_dir: str, write: Callable[[tarfile.TarFile], None], timeout: float = 1800
    ) -> None:
        """Stream a tar archive (filled by ``write``) into ``remote_dir`` on the board."""
        self.check_key()
        d = shlex.quote(remote_dir)
        remote = f"mkdir -p {d} && tar --no-same-owner -xf - -C {d}"
        with tempfile.TemporaryFile() as err_file:
            try:
                proc = subprocess.Popen(
                    self.command(remote),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=err_file,
                )
            except FileNotFoundError:
                raise SshError(
                    "the ssh client is not installed (apt install openssh-client)"
                ) from None
            assert proc.stdin is not None
            try:
                with tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
                    write(tar)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # ssh ended early: its exit status and stderr say why
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise SshError(f"{self.device}: upload to {self.where} timed out") from None
            err_file.seek(0)
            err = err_file.read()
        stderr = err.decode(errors="replace")
        if proc.returncode == 255:
            raise self._error(stderr)
        if proc.returncode != 0:
            last = (stderr.strip().splitlines() or ["?"])[-1]
            raise SshError(f"{self.device}: upload to {self.where}:{remote_dir} failed: {last}")
