"""Each job's signing key: created on the first run, reused by every later run and resume.

Signing is the default: ``fedcoord start`` and ``fedcoord simulate`` sign the model and every
round announcement. Without ``--signing-key`` the job's own Ed25519 key pair is used, kept in

    $EDGEFL_KEYS_DIR/<job>/signing.key   (private, 0600; the directory is 0700)
    $EDGEFL_KEYS_DIR/<job>/signing.pub   (public PEM: what boards trust, fedge run --trust-key)

with ``EDGEFL_KEYS_DIR`` defaulting to ``$XDG_CONFIG_HOME/edgefl/keys`` (usually
``~/.config/edgefl/keys``). A key per job name, outside the run directory, so that a new run
of the job, ``--resume`` and the boards flashed for the job all agree on one key. An unsigned
job is an explicit choice (``--unsigned``): the coordinator logs a warning at start and its
retained ``control`` message says ``"signed": false``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from coordinator.pki import SIGNING_KEY, SIGNING_PUB, SigningKeys, generate_signing_key
from edge_client.errors import ConfigError, ProtocolError
from edge_client.protocol import check_id
from edge_client.signing import Signer

if TYPE_CHECKING:
    from coordinator.config import JobConfig

log = logging.getLogger(__name__)

KEYS_DIR_ENV = "EDGEFL_KEYS_DIR"


def keys_root() -> Path:
    """Where job keys live: $EDGEFL_KEYS_DIR, else $XDG_CONFIG_HOME/edgefl/keys."""
    if os.environ.get(KEYS_DIR_ENV):
        return Path(os.environ[KEYS_DIR_ENV]).expanduser()
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "edgefl" / "keys"


def job_key_dir(job: str) -> Path:
    try:
        check_id(job, "job id")  # also keeps the name a single, harmless path component
    except ProtocolError as exc:
        raise ConfigError(str(exc)) from exc
    return keys_root() / job


def _describe(directory: Path) -> SigningKeys:
    signer = Signer.from_file(directory / SIGNING_KEY)
    if not (directory / SIGNING_PUB).exists():
        raise ConfigError(
            f"{directory / SIGNING_PUB} is missing beside {directory / SIGNING_KEY}: restore it "
            "or remove the directory to make a new key (boards must then trust the new one)"
        )
    return SigningKeys(
        directory / SIGNING_KEY, directory / SIGNING_PUB, signer.key_id, signer.public_b64
    )


def job_signing_key(job: str) -> tuple[SigningKeys, bool]:
    """The job's key pair, made if it does not exist yet; True when made now.

    Safe against several coordinators creating it at once: the pair is written into a
    temporary directory and renamed into place, and whoever loses the race uses the winner's."""
    directory = job_key_dir(job)
    if (directory / SIGNING_KEY).exists():
        return _describe(directory), False
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{job}-", dir=directory.parent))
    try:
        generate_signing_key(tmp)
        try:
            tmp.rename(directory)  # atomic; fails if another process made it first
            made = True
        except OSError:
            if not (directory / SIGNING_KEY).exists():
                raise
            made = False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _describe(directory), made


def with_signing_key(cfg: JobConfig) -> JobConfig:
    """``cfg`` with the key it signs with: its --signing-key, else the job's own key (made
    on the first run); unchanged for an unsigned job (the coordinator warns at start)."""
    if cfg.unsigned or cfg.signing_key:
        return cfg
    keys, made = job_signing_key(cfg.job)
    log.info(
        "%s the job's signing key %s (key id %s); boards verify with "
        "fedge run --trust-key %s (or %s)",
        "made" if made else "using",
        keys.private,
        keys.key_id,
        keys.public,
        keys.public_b64,
    )
    return dataclasses.replace(cfg, signing_key=str(keys.private))
