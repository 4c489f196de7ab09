"""One round's collection: validate each update, fold it into the strategy, dedupe.

Every rejection is logged with its reason and counted; nothing a device sends can
raise out of ``offer`` or reach the aggregate unless it passed every check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from coordinator.aggregation import Strategy
from edge_client.errors import ProtocolError
from edge_client.protocol import Envelope, UpdateDeduper, UpdateKey

log = logging.getLogger(__name__)

MAX_SAMPLES = 10**9  # a larger claimed sample count is a lie that would dominate FedAvg


@dataclass
class DeviceResult:
    device: str
    samples: int = 0
    loss: float | None = None
    accuracy: float | None = None
    duration_s: float | None = None
    interpreter: str = ""
    failed: str = ""  # reason, for a reported failure
    bytes: int = 0


@dataclass
class RoundCollector:
    """Collects round ``round`` of ``job`` from the ``selected`` devices."""

    job: str
    round: int
    selected: frozenset[str]
    base_sha256: str  # weights_sha256 of the global weights of this round
    shapes: Mapping[str, tuple[int, ...]]  # expected tensors, in manifest order
    strategy: Strategy
    deduper: UpdateDeduper
    results: dict[str, DeviceResult] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # device -> last reason
    bytes_up: int = 0
    started: float = field(default_factory=time.time)

    @property
    def accepted(self) -> list[DeviceResult]:
        return [r for r in self.results.values() if not r.failed]

    @property
    def replied(self) -> set[str]:
        return set(self.results)

    def complete(self) -> bool:
        return self.selected <= self.replied

    def offer(self, envelope: Envelope, device: str, size: int) -> bool:
        """Take an update or failure from ``device`` (the topic's id); True if accepted."""
        key = UpdateKey.of(envelope)
        if self.deduper.seen(key):
            log.debug("duplicate of %s's round %d update ignored", device, envelope.round)
            return False
        try:
            self._check(envelope, device)
        except ProtocolError as exc:
            self.rejected[device] = str(exc)
            log.warning("rejected update from %s: %s", device, exc)
            return False
        self.deduper.add(key)
        self.bytes_up += size
        meta = envelope.meta
        if envelope.kind == "failure":
            self.results[device] = DeviceResult(
                device, failed=envelope.reason or "unspecified", bytes=size
            )
            log.warning("device %s failed round %d: %s", device, self.round, envelope.reason)
            return True
        weights = envelope.weights()
        self.strategy.accept(weights, envelope.samples)
        self.results[device] = DeviceResult(
            device,
            samples=envelope.samples,
            loss=_num(meta.get("loss")),
            accuracy=_num(meta.get("accuracy")),
            duration_s=_num(meta.get("duration_s")),
            interpreter=f"{meta.get('interpreter', '')} {meta.get('interpreter_version', '')}".strip(),
            bytes=size,
        )
        return True

    def _check(self, env: Envelope, device: str) -> None:
        if env.job != self.job:
            raise ProtocolError(f"update for job {env.job!r}")
        if env.sender != device:
            raise ProtocolError(
                f"payload sender {env.sender!r} differs from topic device {device!r}"
            )
        if env.round != self.round:
            raise ProtocolError(f"update for round {env.round}, the open round is {self.round}")
        if device not in self.selected:
            raise ProtocolError("device was not selected for this round")
        if device in self.results:
            raise ProtocolError("a second, different update in the same round")
        if env.kind == "failure":
            return
        if env.meta.get("base_sha256") != self.base_sha256:
            raise ProtocolError("trained from other global weights (base_sha256 mismatch)")
        if not 0 < env.samples <= MAX_SAMPLES:
            raise ProtocolError(f"implausible sample count {env.samples}")
        specs = {t.name: t for t in env.tensors}
        if list(specs) != list(self.shapes):
            missing = sorted(set(self.shapes) - set(specs))
            extra = sorted(set(specs) - set(self.shapes))
            raise ProtocolError(f"wrong tensors (missing {missing}, unexpected {extra})")
        for name, shape in self.shapes.items():
            if tuple(specs[name].shape) != tuple(shape):
                raise ProtocolError(
                    f"{name} has shape {tuple(specs[name].shape)}, expected {tuple(shape)}"
                )
        for name, w in env.weights().items():
            if not np.all(np.isfinite(w)):
                raise ProtocolError(f"{name} contains NaN or Inf")


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None
