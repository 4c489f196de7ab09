"""Training slots of a buffered job: who may train now, and each device's grant numbers.

At most ``max_concurrency`` devices hold a slot at once (0: every candidate). A slot is a
*grant*: the device's next grant number (1, 2, 3, ... over the run). The device trains the
grant once and answers with an update or a failure naming it; the coordinator then frees
the slot and grants one to an idle device. A slot is also taken back when its device goes
offline or after ``timeout_s``.

Grant numbers never repeat within a run, not even after a crash: the counters and the held
slots are written to ``grants.json`` in the run directory before every announcement that
carries them (:meth:`Grants.save`), and read back by ``--resume``. A board trains each
grant once (edge_client/state.py), so a repeated number would leave its slot idle.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from coordinator.run_dir import atomic_write
from edge_client.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Slot:
    grant: int
    version: int  # the global version when it was granted
    at: float  # unix time it was granted (or restored by --resume)


class Grants:
    """The slots held and the grant counters of one buffered job (``grants.json``)."""

    def __init__(
        self, path: Path, *, max_concurrency: int, timeout_s: float, seed: int = 0
    ) -> None:
        self.path = path
        self.max_concurrency = max_concurrency  # 0: no bound
        self.timeout_s = timeout_s
        self.seed = seed
        self.counters: dict[str, int] = {}  # device -> the last grant number issued to it
        self.slots: dict[str, Slot] = {}  # device -> the slot it holds
        self.benched: dict[str, int] = {}  # device -> no new slot before this version
        self._load()

    # -- persistence ------------------------------------------------------------------
    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            raw = json.loads(self.path.read_text())
            counters = {str(d): int(n) for d, n in raw["counters"].items()}
            slots = {
                str(d): Slot(int(s["grant"]), int(s["version"]), time.time())
                for d, s in raw["slots"].items()
            }
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"cannot resume: {self.path} is unreadable ({exc}); grant numbers must never "
                "repeat in a run, so start a new run (another --run-dir)"
            ) from exc
        self.counters, self.slots = counters, slots
        if slots:
            log.info("restored %d training slot(s) from %s", len(slots), self.path.name)

    def save(self) -> None:
        """Write the counters and slots (before an announcement that carries them)."""
        raw = {
            "counters": dict(sorted(self.counters.items())),
            "slots": {
                d: {"grant": s.grant, "version": s.version} for d, s in sorted(self.slots.items())
            },
        }
        atomic_write(self.path, (json.dumps(raw, indent=1) + "\n").encode())

    # -- questions --------------------------------------------------------------------
    def issued(self, device: str, grant: int) -> bool:
        """Whether ``grant`` was issued to ``device`` in this run (held or not)."""
        return 1 <= grant <= self.counters.get(device, 0)

    def holds(self, device: str, grant: int) -> bool:
        slot = self.slots.get(device)
        return slot is not None and slot.grant == grant

    def announced(self) -> dict[str, int]:
        """device -> grant of every slot held, by device id (the announcement's grants)."""
        return {d: self.slots[d].grant for d in sorted(self.slots)}

    def deadline(self) -> float:
        """When the last listed slot times out (now + timeout when none is held)."""
        ends = [s.at + self.timeout_s for s in self.slots.values()]
        return max(ends, default=time.time() + self.timeout_s)

    # -- changes ------------------------------------------------------------------------
    def release(self, device: str, grant: int | None = None) -> bool:
        """Free ``device``'s slot (only if it is ``grant``'s); True if one was freed."""
        slot = self.slots.get(device)
        if slot is None or (grant is not None and slot.grant != grant):
            return False
        del self.slots[device]
        return True

    def bench(self, device: str, until_version: int) -> None:
        """No new slot for ``device`` before ``until_version`` (it just failed)."""
        self.benched[device] = until_version

    def expired(self, now: float | None = None) -> list[str]:
        """Devices whose slot is older than the timeout (the caller takes them back)."""
        now = time.time() if now is None else now
        return sorted(d for d, s in self.slots.items() if now - s.at > self.timeout_s)

    def fill(
        self,
        candidates: Iterable[str],
        version: int,
        *,
        in_buffer: Mapping[str, int] | None = None,
        now: float | None = None,
    ) -> list[str]:
        """Grant slots to idle ``candidates`` up to the bound; the devices granted.

        Devices with fewer updates in the version's buffer go first (a fast board does not
        fill a buffer alone while others wait), then a seeded shuffle: reproducible, fair."""
        now = time.time() if now is None else now
        idle = sorted(
            d for d in set(candidates) if d not in self.slots and self.benched.get(d, 0) <= version
        )
        free = len(idle) if self.max_concurrency == 0 else self.max_concurrency - len(self.slots)
        if free <= 0 or not idle:
            return []
        issued = sum(self.counters.values())
        random.Random(f"{self.seed}:{version}:{issued}").shuffle(idle)
        counts = in_buffer or {}
        idle.sort(key=lambda d: counts.get(d, 0))  # stable: the shuffle breaks ties
        granted = idle[:free]
        for device in granted:
            self.counters[device] = self.counters.get(device, 0) + 1
            self.slots[device] = Slot(self.counters[device], version, now)
        return granted
