"""What one edge client needs to know: broker, job, device, local data, state, runtime.

The command line (``fedge run``) builds a :class:`ClientConfig` from flags and
``EDGEFL_*`` environment variables (flag > environment > default); library users build
one directly. Construction validates every field and raises :class:`ConfigError`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from edge_client.errors import ConfigError, DataError, ProtocolError
from edge_client.protocol import CHUNK_HEADER_SIZE, DEFAULT_MAX_CHUNK, DEFAULT_PREFIX
from edge_client.protocol.topics import check_prefix
from edge_client.protocol.validation import check_id
from edge_client.transport import BrokerConfig

DEFAULT_HEARTBEAT_S = 15.0
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # largest model/global weights message held


def default_state_dir(job: str, device_id: str) -> Path:
    """``$XDG_STATE_HOME/edgefl/<job>/<device>``, else ``~/.local/state/edgefl/<job>/<device>``."""
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "edgefl" / job / device_id


@dataclass(frozen=True)
class ClientConfig:
    """One device taking part in one job. Local data comes from ``data_path`` or ``dataset``."""

    broker: BrokerConfig
    job: str
    device_id: str
    data_path: str | None = None  # a file or directory load_path() can read
    dataset: str | None = None  # a named data set: fashion-mnist, mnist, cifar10
    split: str = "train"
    partition: str | None = None  # iid | dirichlet:ALPHA | shards:K | sequential (simulations)
    partition_index: int = 0  # which part this device holds, 0-based
    num_partitions: int = 1
    partition_seed: int = 0  # same seed on every simulated device, or the parts overlap
    state_dir: str | Path | None = None  # None: default_state_dir(job, device_id)
    runtime: str | None = None  # None: $EDGEFL_RUNTIME, else the first interpreter installed
    num_threads: int | None = None  # interpreter threads; None lets the runtime decide
    heartbeat_s: float = DEFAULT_HEARTBEAT_S  # status republished this often; 0 = never
    max_chunk: int = DEFAULT_MAX_CHUNK  # bytes per MQTT payload of an update
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES  # bounds reassembly memory on a board
    prefix: str = DEFAULT_PREFIX
    exit_on_stop: bool = False  # leave run() when the job is stopped (simulations)
    evaluate: bool = True  # report local train accuracy (one forward pass over the data)
    connect_timeout_s: float = 30.0  # first connection only; reconnects retry forever
    seed: int | None = None  # batch order; None derives it from device id and round
    # Ed25519 public key (a file, or its base64) the model and announcements must be signed
    # with; None: signatures are not checked
    trust_key: str | None = None

    def __post_init__(self) -> None:
        try:
            check_id(self.job, "job id")
            check_id(self.device_id, "device id")
            check_prefix(self.prefix)
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from None
        if (self.data_path is None) == (self.dataset is None):
            raise ConfigError("give exactly one source of local data: a data path or a data set")
        if self.split not in ("train", "test"):
            raise ConfigError(f"unknown split {self.split!r}: use 'train' or 'test'")
        self._check_partition()
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"threads must be at least 1, got {self.num_threads}")
        if not math.isfinite(self.heartbeat_s) or self.heartbeat_s < 0:
            raise ConfigError(f"heartbeat must be >= 0 seconds, got {self.heartbeat_s}")
        if self.max_chunk <= CHUNK_HEADER_SIZE:
            raise ConfigError(
                f"max chunk must exceed the {CHUNK_HEADER_SIZE}-byte chunk header, "
                f"got {self.max_chunk}"
            )
        if self.max_message_bytes < 1:
            raise ConfigError("max message bytes must be positive")
        if self.connect_timeout_s <= 0:
            raise ConfigError("connect timeout must be positive")

    def _check_partition(self) -> None:
        if self.partition is None:
            return
        from edge_client.data import parse_scheme

        try:
            parse_scheme(self.partition)
        except DataError as exc:
            raise ConfigError(str(exc)) from None
        if self.num_partitions < 1:
            raise ConfigError(f"number of partitions must be >= 1, got {self.num_partitions}")
        if not 0 <= self.partition_index < self.num_partitions:
            raise ConfigError(
                f"partition index {self.partition_index} is outside "
                f"[0, {self.num_partitions}): the first part is 0"
            )

    @property
    def resolved_state_dir(self) -> Path:
        if self.state_dir is not None:
            return Path(self.state_dir).expanduser()
        return default_state_dir(self.job, self.device_id)

    @property
    def data_description(self) -> str:
        """Where the local data comes from, for logs (never the data itself)."""
        source = self.data_path if self.data_path is not None else f"{self.dataset} {self.split}"
        if self.partition is not None:
            source += (
                f" (part {self.partition_index} of {self.num_partitions}, {self.partition}, "
                f"seed {self.partition_seed})"
            )
        return str(source)
