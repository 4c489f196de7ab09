"""The client's state directory, so a reboot or a broker outage resumes cleanly.

Layout of ``<state dir>`` (default ``~/.local/state/edgefl/<job>/<device>``)::

    model.tflite    the last model accepted (verified against manifest.json on load)
    manifest.json
    global.npz      the last global weights: arrays in manifest order plus their names,
                    weights_sha256 and round (numpy only, never pickle)
    progress.json   the rounds sent lately, each with what it was trained from:
                    {"completed": [{"run", "model_sha256", "round", "global_sha256"}, ...],
                     "last_completed_round": r, ...} (the newest one also at the top level);
                    a buffered round's record adds its "grant"
    update.bin      the update envelope last sent, to resend if that round is re-announced

Progress is a set of exact records, never a high-water mark: a board skips a round only if it
sent that very round (same run, model, round number and global weights) before, and in a
buffered job a grant only if it sent that very grant (same run, model and grant number,
whatever version it trained from: each grant is trained once). An unsigned
announcement can add a record (a forged round 10^9 is trained once, from the weights it
names) but cannot make the board skip any other round, now or after a restart.

Every file is written to a temporary name, flushed and renamed, so a power cut leaves the
old file or the new one, never half of one. Unreadable or inconsistent files are logged
and ignored: the coordinator republishes everything the client needs.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from edge_client.errors import ConfigError, EdgeFLError
from edge_client.manifest import Manifest
from edge_client.protocol import RoundAnnouncement, weights_sha256

log = logging.getLogger(__name__)

NO_ROUND = -1  # last_completed_round before any round (rounds are >= 0)
KEEP_COMPLETED = 16  # records kept in progress.json: the recent rounds a retry may repeat


@dataclass(frozen=True)
class Completed:
    """A round this device trained and sent, and what it trained it from."""

    run: str | None  # the job run (the announcement's ``run``; None from older coordinators)
    model_sha256: str
    round: int
    global_sha256: str
    grant: int | None = None  # buffered rounds: the grant it answered; None: a sync round

    @classmethod
    def of(cls, ann: RoundAnnouncement, device: str | None = None) -> Completed:
        """The record of sending ``ann``'s round (with ``device``'s grant when buffered)."""
        grant = ann.grant(device) if device is not None and ann.buffered else None
        return cls(ann.run, ann.model_sha256, ann.round, ann.global_sha256, grant)

    def key(self) -> tuple[object, ...]:
        """What makes two records the same work: a synchronous round is its run, model,
        round and global weights; a buffered grant its run, model and grant number (it was
        trained from whichever version was newest, and is trained once)."""
        if self.grant is not None:
            return ("grant", self.run, self.model_sha256, self.grant)
        return ("round", self.run, self.model_sha256, self.round, self.global_sha256)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "run": self.run,
            "model_sha256": self.model_sha256,
            "round": self.round,
            "global_sha256": self.global_sha256,
        }
        if self.grant is not None:
            out["grant"] = self.grant
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Completed:
        run, model, round_, glob, grant = (
            data.get("run"),
            data["model_sha256"],
            data["round"],
            data["global_sha256"],
            data.get("grant"),
        )
        if not (
            (run is None or isinstance(run, str))
            and isinstance(model, str)
            and isinstance(glob, str)
            and isinstance(round_, int)
            and (grant is None or isinstance(grant, int))
        ):
            raise ValueError(f"malformed progress record {dict(data)!r}")
        return cls(run, model, round_, glob, grant)


@dataclass(frozen=True)
class SavedGlobal:
    weights: dict[str, np.ndarray]
    sha256: str  # weights_sha256(weights)
    round: int  # the round these weights start


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in the same directory, then rename it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EdgeFLError(f"cannot write {path}: {exc.strerror or exc}") from exc


class ClientState:
    """Reads and writes one device's state directory."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the state directory {self.directory}: {exc.strerror or exc}"
            ) from exc
        if not os.access(self.directory, os.W_OK):
            raise ConfigError(f"the state directory {self.directory} is not writable")
        self._completed: list[Completed] | None = None  # progress.json, read once

    @property
    def model_path(self) -> Path:
        return self.directory / "model.tflite"

    @property
    def manifest_path(self) -> Path:
        return self.directory / "manifest.json"

    @property
    def global_path(self) -> Path:
        return self.directory / "global.npz"

    @property
    def progress_path(self) -> Path:
        return self.directory / "progress.json"

    @property
    def update_path(self) -> Path:
        return self.directory / "update.bin"

    # -- model ------------------------------------------------------------------------
    def save_model(self, tflite: bytes, manifest: Manifest) -> None:
        atomic_write(self.model_path, lambda f: f.write(tflite))
        atomic_write(self.manifest_path, lambda f: f.write(manifest.to_json().encode()))

    def load_model(self) -> tuple[bytes, Manifest] | None:
        """The saved model and manifest if both exist and match (sha256), else None."""
        if not (self.model_path.exists() and self.manifest_path.exists()):
            return None
        try:
            manifest = Manifest.load(self.manifest_path)
            tflite = self.model_path.read_bytes()
            manifest.verify_model_bytes(tflite)
        except (EdgeFLError, OSError) as exc:
            log.warning("ignoring the saved model in %s: %s", self.directory, exc)
            return None
        return tflite, manifest

    # -- global weights ---------------------------------------------------------------
    def save_global(self, weights: Mapping[str, np.ndarray], sha256: str, round_: int) -> None:
        names = list(weights)
        arrays = {f"w{i}": np.asarray(weights[n]) for i, n in enumerate(names)}

        def write(f: IO[bytes]) -> None:
            np.savez(
                f,
                names=np.array(names, dtype=str),
                sha256=np.array(sha256),
                round=np.array(round_, dtype=np.int64),
                **arrays,
            )

        atomic_write(self.global_path, write)

    def load_global(self) -> SavedGlobal | None:
        """The saved global weights if readable and their digest matches, else None."""
        if not self.global_path.exists():
            return None
        try:
            with np.load(self.global_path, allow_pickle=False) as f:
                names = [str(n) for n in f["names"]]
                weights = {n: np.array(f[f"w{i}"]) for i, n in enumerate(names)}
                sha, round_ = str(f["sha256"]), int(f["round"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("ignoring unreadable global weights %s: %s", self.global_path, exc)
            return None
        if weights_sha256(weights) != sha:
            log.warning("ignoring global weights %s: their digest does not match", self.global_path)
            return None
        return SavedGlobal(weights, sha, round_)

    # -- progress ---------------------------------------------------------------------
    def completed(self) -> list[Completed]:
        """The rounds sent lately, oldest first (empty when none or unreadable)."""
        if self._completed is None:
            self._completed = self._read_progress()
        return list(self._completed)

    def has_completed(self, record: Completed) -> bool:
        """Whether this device sent exactly this round (same run, model and global weights),
        or in a buffered job this grant (:meth:`Completed.key`)."""
        return any(c.key() == record.key() for c in self.completed())

    def last_completed_round(self, model_sha256: str | None) -> int:
        """The round this device sent last for this model (NO_ROUND when none): for logs;
        decisions use :meth:`has_completed`."""
        for record in reversed(self.completed()):
            if model_sha256 is None or record.model_sha256 == model_sha256:
                return record.round
        return NO_ROUND

    def save_completed(self, record: Completed) -> None:
        """Add ``record`` (the newest) and keep the last KEEP_COMPLETED."""
        records = [c for c in self.completed() if c.key() != record.key()] + [record]
        records = records[-KEEP_COMPLETED:]
        body = {
            "completed": [c.to_dict() for c in records],
            # the newest record again, in the layout of earlier versions
            "last_completed_round": record.round,
            "model_sha256": record.model_sha256,
            "global_sha256": record.global_sha256,
            "run": record.run,
            "time": time.time(),
        }
        data = (json.dumps(body, indent=2) + "\n").encode()
        atomic_write(self.progress_path, lambda f: f.write(data))
        self._completed = records

    def save_completed_round(
        self, round_: int, model_sha256: str, global_sha256: str, run: str | None = None
    ) -> None:
        self.save_completed(Completed(run, model_sha256, round_, global_sha256))

    def _read_progress(self) -> list[Completed]:
        if not self.progress_path.exists():
            return []
        try:
            data = json.loads(self.progress_path.read_text())
            if "completed" in data:
                return [Completed.from_dict(c) for c in data["completed"]][-KEEP_COMPLETED:]
            # an earlier version's file: one record, no run
            return [
                Completed(
                    None,
                    data["model_sha256"],
                    int(data["last_completed_round"]),
                    data["global_sha256"],
                )
            ]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable progress file %s: %s", self.progress_path, exc)
            return []

    # -- the last update sent -----------------------------------------------------------
    def save_update(self, payload: bytes) -> None:
        atomic_write(self.update_path, lambda f: f.write(payload))

    def load_update(self) -> bytes | None:
        """The envelope bytes of the last update sent (the caller decodes and checks them)."""
        try:
            return self.update_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("ignoring unreadable %s: %s", self.update_path, exc)
            return None
