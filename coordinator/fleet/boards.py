"""The processes of simulated boards: started, killed (power cut), rebooted, accounted.

Each incarnation of a board is one ``fedge run`` process; a reaper thread collects its exit
and its CPU time (``wait4``), so the simulator knows exactly how much CPU the fleet used,
including boards killed on the way.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class BoardProcess:
    """One simulated board: its command, environment and log, across reboots."""

    def __init__(self, device_id: str, cmd: Sequence[str], env: dict[str, str], log_path: Path):
        self.device_id, self.cmd, self.env, self.log_path = device_id, list(cmd), env, log_path
        self.cpu_s = 0.0  # user + system CPU time of every finished incarnation
        self.starts = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._exited = threading.Event()
        self._exited.set()

    @property
    def alive(self) -> bool:
        return not self._exited.is_set()

    def start(self) -> None:
        with self._lock:
            if self.alive:
                return
            out = open(self.log_path, "ab")  # noqa: SIM115 - the child holds it; closed below
            try:
                self._proc = subprocess.Popen(
                    self.cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env
                )
            finally:
                out.close()
            self.starts += 1
            self._exited.clear()
            threading.Thread(target=self._reap, args=(self._proc,), daemon=True).start()

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        # The only waiter on this pid: Popen.poll/wait are never called, so no one else reaps.
        _, status, usage = os.wait4(proc.pid, 0)
        with self._lock:
            proc.returncode = os.waitstatus_to_exitcode(status)
            self.cpu_s += usage.ru_utime + usage.ru_stime
            self._exited.set()

    def signal(self, sig: int) -> None:
        with self._lock:
            if self._proc is not None and self.alive:
                os.kill(self._proc.pid, sig)  # not reaped yet: the pid is still ours

    def kill(self) -> None:
        """Pull the plug: SIGKILL, no goodbye (the broker publishes the Last Will)."""
        self.signal(signal.SIGKILL)
        self._exited.wait(10)

    def wait(self, timeout: float) -> bool:
        return self._exited.wait(timeout)


def stop_all(boards: Sequence[BoardProcess], grace_s: float) -> None:
    """Let the boards exit by themselves (the job's "stopped"), then terminate, then kill."""
    deadline = time.monotonic() + grace_s
    for b in boards:
        b.wait(max(0.0, deadline - time.monotonic()))
    for b in boards:
        b.signal(signal.SIGTERM)
    for b in boards:
        if not b.wait(5):
            b.kill()
