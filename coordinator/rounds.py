"""One round's collection: validate each update, fold it into the strategy, dedupe.

Every rejection is logged with its reason and counted; nothing a device sends can
raise out of ``offer`` or reach the aggregate unless it passed every check.

Two kinds of rejection: an update that is not this round's business (another job or
round, a device not selected, a sender that is not the topic's device, a second update)
is dropped and the device may still answer; an update of a selected device for this
round whose content is bad (base weights, sample count, tensors, dtypes, NaN/Inf, norm)
also counts as that device's reply, so the round need not wait for its deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from coordinator.aggregation import Strategy
from coordinator.robust_strategies import delta_norm
from edge_client.errors import ProtocolError
from edge_client.manifest import Manifest
from edge_client.protocol import DeviceMetrics, Envelope, UpdateDeduper, UpdateKey, UpdateMeta

log = logging.getLogger(__name__)

MAX_SAMPLES = 10**9  # a larger claimed sample count is a lie that would dominate FedAvg
_FLOAT_WIRE = ("float32", "float16")  # wire dtypes of floating weights (int8 needs a scale)


class InvalidUpdate(ProtocolError):
    """A selected device's update for the open round whose content is unusable."""


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
    # The round's global weights, for the norm check (None: no norm check)
    global_weights: Mapping[str, np.ndarray] | None = None
    max_update_norm: float = 0.0  # reject a change > this x max(1, ||global||); 0: off
    dtypes: Mapping[str, str] | None = None  # manifest dtypes (None: all float32)
    results: dict[str, DeviceMetrics] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # device -> last reason
    invalid: set[str] = field(default_factory=set)  # selected devices that sent bad content
    # Selected devices that went offline (Last Will) before replying: not waited for
    dropped: set[str] = field(default_factory=set)
    aggregated: int = 0  # updates folded into the strategy (each device at most once)
    bytes_up: int = 0
    started: float = field(default_factory=time.time)
    _global_norm: float | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        job: str,
        round_: int,
        selected: Iterable[str],
        base_sha256: str,
        manifest: Manifest,
        strategy: Strategy,
        global_weights: Mapping[str, np.ndarray],
        max_update_norm: float,
    ) -> RoundCollector:
        """A round's collector for the manifest's tensors; ``strategy`` begins from
        ``global_weights`` (the coordinator's rounds and a site's local rounds alike)."""
        strategy.begin(global_weights)
        return cls(
            job,
            round_,
            frozenset(selected),
            base_sha256,
            {w.name: w.shape for w in manifest.weights},
            strategy,
            UpdateDeduper(),
            global_weights=global_weights,
            max_update_norm=max_update_norm,
            dtypes={w.name: w.dtype for w in manifest.weights},
        )

    @property
    def accepted(self) -> list[DeviceMetrics]:
        return [r for r in self.results.values() if not r.failed]

    @property
    def replied(self) -> set[str]:
        return set(self.results)

    def complete(self) -> bool:
        return self.selected <= self.replied | self.invalid | self.dropped

    def drop(self, device: str) -> bool:
        """``device`` went offline: stop waiting for it (its update is still taken if it comes
        back and sends one before the round closes). True if the round was waiting for it."""
        if device not in self.selected or device in self.replied | self.invalid | self.dropped:
            return False
        self.dropped.add(device)
        return True

    def offer(self, envelope: Envelope, device: str, size: int) -> bool:
        """Take an update or failure from ``device`` (the topic's id); True if accepted."""
        key = UpdateKey.of(envelope)
        if self.deduper.seen(key):
            log.debug("duplicate of %s's round %d update ignored", device, envelope.round)
            return False
        try:
            self._check(envelope, device)
            meta = self._check_content(envelope) if envelope.kind == "update" else None
        except ProtocolError as exc:
            self.rejected[device] = str(exc)
            if isinstance(exc, InvalidUpdate):
                self.invalid.add(device)
            log.warning("rejected update from %s: %s", device, exc)
            return False
        self.deduper.add(key)
        self.bytes_up += size
        if meta is None:
            self.results[device] = DeviceMetrics(
                device, failed=envelope.reason or "unspecified", bytes_up=size
            )
            log.warning("device %s failed round %d: %s", device, self.round, envelope.reason)
            return True
        weights = envelope.weights()
        self.strategy.accept(weights, envelope.samples)
        self.aggregated += 1
        self.invalid.discard(device)
        interpreter = f"{meta.interpreter or ''} {meta.interpreter_version or ''}".strip()
        self.results[device] = DeviceMetrics(
            device,
            samples=envelope.samples,
            loss=meta.loss,
            accuracy=meta.accuracy,
            duration_s=meta.duration_s,
            interpreter=interpreter[:256],
            bytes_up=size,
        )
        return True

    def _check(self, env: Envelope, device: str) -> None:
        if env.job != self.job:
            raise ProtocolError(f"update for job {env.job!r}")
        if env.sender != device:
            raise ProtocolError(
                f"payload sender {env.sender!r} differs from topic device {device!r}"
            )
        if env.round < self.round:
            raise ProtocolError(
                f"stale update for round {env.round}, the open round is {self.round} "
                f"(round {env.round} is closed: a late copy or a replay)"
            )
        if env.round > self.round:
            raise ProtocolError(f"update for round {env.round}, the open round is {self.round}")
        if device not in self.selected:
            raise ProtocolError("device was not selected for this round")
        if device in self.results:
            raise ProtocolError("a second, different update in the same round")

    def _check_content(self, env: Envelope) -> UpdateMeta:
        try:
            meta = env.update_meta()
        except ProtocolError as exc:
            raise InvalidUpdate(f"unreadable meta: {exc}") from None
        if meta.base_sha256 != self.base_sha256:
            raise InvalidUpdate("trained from other global weights (base_sha256 mismatch)")
        if not 0 < env.samples <= MAX_SAMPLES:
            raise InvalidUpdate(f"implausible sample count {env.samples}")
        specs = {t.name: t for t in env.tensors}
        if len(env.tensors) != len(self.shapes) or list(specs) != list(self.shapes):
            missing = sorted(set(self.shapes) - set(specs))
            extra = sorted(set(specs) - set(self.shapes))
            raise InvalidUpdate(
                f"wrong tensors: {len(env.tensors)} sent, {len(self.shapes)} expected "
                f"(missing {missing}, unexpected {extra})"
            )
        for name, shape in self.shapes.items():
            spec = specs[name]
            if tuple(spec.shape) != tuple(shape):
                raise InvalidUpdate(
                    f"{name} has shape {tuple(spec.shape)}, expected {tuple(shape)}"
                )
            want = (self.dtypes or {}).get(name, "float32")
            floating = spec.dtype in _FLOAT_WIRE or (
                spec.dtype == "int8" and spec.scale is not None
            )
            if (want.startswith("float") and not floating) or (
                not want.startswith("float") and spec.dtype != want
            ):
                raise InvalidUpdate(f"{name} has dtype {spec.dtype}, expected {want}")
        weights = env.weights()
        for name, w in weights.items():
            if not np.all(np.isfinite(w)):
                raise InvalidUpdate(f"{name} contains NaN or Inf")
        self._check_norm(weights)
        return meta

    def _check_norm(self, weights: Mapping[str, np.ndarray]) -> None:
        if self.max_update_norm <= 0 or self.global_weights is None:
            return
        if self._global_norm is None:
            zero = {k: np.zeros_like(v) for k, v in self.global_weights.items()}
            self._global_norm = delta_norm(self.global_weights, zero)
        reference = max(1.0, self._global_norm)
        norm = delta_norm(weights, self.global_weights)
        if norm > self.max_update_norm * reference:
            raise InvalidUpdate(
                f"absurd update: it changes the weights by {norm:.4g} (L2), "
                f"{norm / reference:.1f}x the global weights' norm; the limit is "
                f"{self.max_update_norm:g}x"
            )
