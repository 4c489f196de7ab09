"""The client's state directory, so a reboot or a broker outage resumes cleanly.

Layout of ``<state dir>`` (default ``~/.local/state/edgefl/<job>/<device>``)::

    model.tflite    the last model accepted (verified against manifest.json on load)
    manifest.json
    global.npz      the last global weights: arrays in manifest order plus their names,
                    weights_sha256 and round (numpy only, never pickle)
    progress.json   {"last_completed_round": r, "model_sha256": ...}
    update.bin      the update envelope last sent, to resend if that round is re-announced

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
from edge_client.protocol import weights_sha256

log = logging.getLogger(__name__)

NO_ROUND = -1  # last_completed_round before any round (rounds are >= 0)


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
    def last_completed_round(self, model_sha256: str | None) -> int:
        """The last round this device finished for this model (NO_ROUND when none)."""
        if not self.progress_path.exists():
            return NO_ROUND
        try:
            data = json.loads(self.progress_path.read_text())
            round_ = int(data["last_completed_round"])
            saved_model = data.get("model_sha256")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable progress file %s: %s", self.progress_path, exc)
            return NO_ROUND
        if model_sha256 is not None and saved_model not in (None, model_sha256):
            return NO_ROUND  # progress of another model: a new job run
        return round_

    def save_completed_round(self, round_: int, model_sha256: str, global_sha256: str) -> None:
        body = {
            "last_completed_round": round_,
            "model_sha256": model_sha256,
            "global_sha256": global_sha256,
            "time": time.time(),
        }
        data = (json.dumps(body, indent=2) + "\n").encode()
        atomic_write(self.progress_path, lambda f: f.write(data))

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
