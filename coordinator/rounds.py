"""One round's collection: validate each update, fold it into the strategy, dedupe.

Every rejection is logged with its reason and recorded (:class:`Rejection`: the topic's
device, the payload's sender, the reason, and whether it counted as the device's reply);
nothing a device sends can raise out of ``offer`` or reach the aggregate unless it passed
every check. With ``bounds`` (the coordinator's default, coordinator/influence.py) accepted
updates are held until :meth:`RoundCollector.close` decides on the round as a whole.

Two kinds of rejection: an update that is not this round's business (another job or
round, a device not selected, a sender that is not the topic's device, a second update)
is dropped and the device may still answer; an update of a selected device for this
round whose content is bad (base weights, sample count, tensors, dtypes, NaN/Inf, norm)
also counts as that device's reply, so the round need not wait for its deadline.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from coordinator.aggregation import Strategy
from coordinator.influence import Held, InfluenceBounds, capped_claims, change_outliers, risk
from coordinator.robust_strategies import delta_norm
from edge_client.errors import ProtocolError
from edge_client.manifest import Manifest
from edge_client.protocol import (
    DeviceMetrics,
    Envelope,
    Rejection,
    UpdateDeduper,
    UpdateKey,
    UpdateMeta,
)

log = logging.getLogger(__name__)

MAX_SAMPLES = 10**9  # a larger claimed sample count is a lie that would dominate FedAvg
MAX_REASON = 1000  # characters of a rejection reason kept (it may quote what a device sent)


def bounded(reason: str) -> str:
    """A rejection reason of at most MAX_REASON characters (a Rejection holds 4096 at most,
    and a reason quoting a device's message must not take the job down)."""
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


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
    # Bounded influence (None: fold each update as it arrives, no round-wide checks)
    bounds: InfluenceBounds | None = None
    announced: Mapping[str, int] = field(default_factory=dict)  # device -> status samples
    results: dict[str, DeviceMetrics] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # topic device -> last reason
    rejections: list[Rejection] = field(default_factory=list)  # every rejection, in order
    invalid: set[str] = field(default_factory=set)  # selected devices that sent bad content
    # Selected devices that went offline (Last Will) before replying: not waited for
    dropped: set[str] = field(default_factory=set)
    contested: set[str] = field(default_factory=set)  # a second, different update came
    # Semi-synchronous: close once this many updates are accepted (0: wait for every one)
    target: int = 0
    # Updates for rounds that had closed when they arrived (coordinator.late): device ->
    # why it was discarded, and device -> the round of a late update folded into this one
    late_discarded: dict[str, str] = field(default_factory=dict)
    late_folded: dict[str, int] = field(default_factory=dict)
    wasted: int = 0  # late updates discarded while this round was open (trained for nothing)
    late: set[str] = field(default_factory=set)  # devices whose late update was handled
    cancelled: set[str] = field(default_factory=set)  # still training at the target
    aggregated: int = 0  # updates folded into the strategy (each device at most once)
    bytes_up: int = 0  # accepted updates and failures, all chunks
    bytes_rejected: int = 0  # rejected ones, all chunks
    started: float = field(default_factory=time.time)
    _global_norm: float | None = field(default=None, repr=False)
    _held: list[Held] = field(default_factory=list, repr=False)
    _changes: dict[str, float] = field(default_factory=dict, repr=False)
    _claims: dict[str, int] = field(default_factory=dict, repr=False)
    _closed: bool = field(default=False, repr=False)

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
        *,
        bounds: InfluenceBounds | None = None,
        announced: Mapping[str, int] | None = None,
    ) -> RoundCollector:
        """A round's collector for the manifest's tensors; ``strategy`` begins from
        ``global_weights`` (the coordinator's rounds and a site's local rounds alike).
        ``bounds``: the round-wide checks of coordinator/influence.py, against the sample
        counts the devices ``announced`` in their statuses."""
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
            bounds=bounds,
            announced=dict(announced or {}),
        )

    @property
    def accepted(self) -> list[DeviceMetrics]:
        return [r for r in self.results.values() if not r.failed]

    @property
    def replied(self) -> set[str]:
        return set(self.results)

    def complete(self) -> bool:
        if self.target and len(self.accepted) >= self.target:
            return True
        return self.selected <= self.replied | self.invalid | self.dropped

    def still_training(self) -> set[str]:
        """Selected devices not waited for because the round reached its target (the
        coordinator records them as :attr:`cancelled` when it closes the round)."""
        if not (self.target and len(self.accepted) >= self.target):
            return set()
        return set(self.selected - self.replied - self.invalid - self.dropped)

    def check_late(
        self, envelope: Envelope, device: str
    ) -> tuple[UpdateMeta, dict[str, np.ndarray], float]:
        """Validate an update that arrived after this round closed exactly as if it had come
        in time (ProtocolError says why not); it is then marked seen, never taken twice.
        Returns its meta, weights and change (L2 norm from this round's global weights)."""
        key = UpdateKey.of(envelope)
        if self.deduper.seen(key):
            raise ProtocolError("a duplicate of an update already handled")
        self._check(envelope, device)
        checked = self._check_content(envelope, device)
        self.deduper.add(key)
        self.late.add(device)
        return checked

    def take_late(
        self,
        device: str,
        late_round: int,
        weights: Mapping[str, np.ndarray],
        samples: int,
        change: float,
        size: int,
    ) -> None:
        """A late update of ``device`` for the closed round ``late_round``, already checked
        and re-based on this round's global weights (coordinator/late.py). With bounds it is
        held and decided at :meth:`close` with this round's updates, like one of them:
        ``change`` (of its own training, before the staleness weight) against the median
        change, ``samples`` under the weight-share cap of its device. Else folded at once."""
        self.bytes_up += size
        self.late_folded[device] = late_round
        if self.bounds is None or self._closed:
            self._fold(device, weights, samples)
        else:
            self._hold(Held(device, weights, samples, change, late_round, size))

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
            checked = self._check_content(envelope, device) if envelope.kind == "update" else None
        except ProtocolError as exc:
            self._reject(envelope, device, size, exc)
            return False
        self.deduper.add(key)
        self.bytes_up += size
        if checked is None:
            self.results[device] = DeviceMetrics(
                device, failed=envelope.reason or "unspecified", bytes_up=size
            )
            log.warning("device %s failed round %d: %s", device, self.round, envelope.reason)
            return True
        meta, weights, change = checked
        self.invalid.discard(device)
        self.results[device] = device_metrics(device, meta, envelope.samples, size)
        if self.bounds is None:
            self._fold(device, weights, envelope.samples)
        else:
            self._hold(Held(device, weights, envelope.samples, change))
        return True

    def _reject(self, env: Envelope, device: str, size: int, exc: ProtocolError) -> None:
        counted = isinstance(exc, InvalidUpdate)  # the device's reply for this round
        if counted:
            self.invalid.add(device)
        if "second, different update" in str(exc) and device in self.results:
            self.contested.add(device)
        reason = bounded(str(exc))
        self.rejected[device] = reason
        self.rejections.append(Rejection(device, env.sender, env.round, reason, counted, size))
        self.bytes_rejected += size
        log.warning("rejected update from %s: %s", device, reason)

    # -- folding, holding, closing ----------------------------------------------------------
    def _fold(self, device: str, weights: Mapping[str, np.ndarray], samples: int) -> None:
        self.strategy.accept(weights, samples)
        self.aggregated += 1

    def _hold(self, held: Held) -> None:
        assert self.bounds is not None
        self._held.append(held)
        self._changes[held.key], self._claims[held.key] = held.change, held.samples
        if len(self._held) <= self.bounds.max_held:
            return
        samples_median = float(np.median(list(self._claims.values())))
        change_median = float(np.median(list(self._changes.values())))
        first = min(self._held, key=lambda h: risk(h, samples_median, change_median))
        self._held.remove(first)
        log.debug(
            "round %d: %d updates held, %s folded early", self.round, len(self._held), first.key
        )
        self._fold(first.device, first.weights, first.samples)

    def close(self) -> None:
        """Decide on the held updates as a round (bounds), then fold them. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.bounds is None:
            return
        held = {h.key: h for h in self._held}
        self._held = []
        for key, reason in change_outliers(self._changes, self.bounds.max_change_ratio).items():
            h = held.pop(key, None)
            if h is None:
                log.warning("round %d: %s was folded before the close: %s", self.round, key, reason)
                continue
            del self._claims[key]
            if h.late_round:
                self._reject_late(h, reason)
                continue
            device = h.device
            size = self.results.pop(device).bytes_up  # its bytes move from up to rejected
            self.bytes_up, self.bytes_rejected = self.bytes_up - size, self.bytes_rejected + size
            self.invalid.add(device)
            self.rejected[device] = reason
            self.rejections.append(Rejection(device, device, self.round, reason, True, size))
            log.warning("rejected update from %s: %s", device, reason)
        weights = capped_claims(self._claims, self.bounds.max_weight_share)
        for key, weight in weights.items():
            h = held.get(key)
            if weight != self._claims[key]:
                log.warning(
                    "round %d: %s's weight capped from %d to %d samples (a share of at most %g, --max-weight-share)",
                    self.round, key, self._claims[key], weight, self.bounds.max_weight_share,
                )  # fmt: skip
                if h is None:
                    continue
                if not h.late_round:
                    self.results[key] = dataclasses.replace(self.results[key], samples=weight)
            if h is not None:
                self._fold(h.device, h.weights, weight)

    def _reject_late(self, h: Held, reason: str) -> None:
        """A held late update failed a round-wide bound: not folded after all (it was not
        the device's reply to this round, so the rejection does not count as one)."""
        reason = f"late update for round {h.late_round}: {reason}"
        if self.late_folded.get(h.device) == h.late_round:
            del self.late_folded[h.device]
        self.bytes_up, self.bytes_rejected = self.bytes_up - h.size, self.bytes_rejected + h.size
        self.rejected[h.device] = reason
        self.rejections.append(Rejection(h.device, h.device, h.late_round, reason, False, h.size))
        log.warning("rejected late update from %s: %s", h.device, reason)

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
        if device in self.results or device in self.late:
            raise ProtocolError(
                "a second, different update in the same round under this device's name; the "
                "first one counts (if the device sent only one, the other was not its own)"
            )

    def check_content(
        self, env: Envelope, device: str
    ) -> tuple[UpdateMeta, dict[str, np.ndarray], float]:
        """The content checks alone (base weights, samples, tensors, values, norm): a
        buffered job checks each update against its own base version (coordinator/buffer.py).
        InvalidUpdate says why not."""
        return self._check_content(env, device)

    def _check_content(
        self, env: Envelope, device: str
    ) -> tuple[UpdateMeta, dict[str, np.ndarray], float]:
        """(meta, weights, change norm) of an update whose content is usable."""
        try:
            meta = env.update_meta()
        except ProtocolError as exc:
            raise InvalidUpdate(f"unreadable meta: {exc}") from None
        if meta.base_sha256 != self.base_sha256:
            raise InvalidUpdate("trained from other global weights (base_sha256 mismatch)")
        if not 0 < env.samples <= MAX_SAMPLES:
            raise InvalidUpdate(f"implausible sample count {env.samples}")
        announced = self.announced.get(device, 0)
        if self.bounds is not None and self.bounds.check_samples and 0 < announced < env.samples:
            raise InvalidUpdate(
                f"claims {env.samples} training samples, its status announced {announced} "
                "(--no-sample-check turns this check off)"
            )
        self._check_tensors(env)
        weights = env.weights()
        for name, w in weights.items():
            if not np.all(np.isfinite(w)):
                raise InvalidUpdate(f"{name} contains NaN or Inf")
        return meta, weights, self._check_norm(weights)

    def _check_tensors(self, env: Envelope) -> None:
        specs = {t.name: t for t in env.tensors}
        if len(env.tensors) != len(self.shapes) or list(specs) != list(self.shapes):
            missing = sorted(set(self.shapes) - set(specs))
            extra = sorted(set(specs) - set(self.shapes))
            raise InvalidUpdate(
                f"wrong tensors: {len(env.tensors)} sent, {len(self.shapes)} expected "
                f"(missing {_few(missing)}, unexpected {_few(extra)})"
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

    def _check_norm(self, weights: Mapping[str, np.ndarray]) -> float:
        """The change's L2 norm (0.0 when not needed); rejects an absurd one."""
        absolute = self.max_update_norm > 0
        if self.global_weights is None or not (absolute or self.bounds is not None):
            return 0.0
        norm = delta_norm(weights, self.global_weights)
        if not absolute:
            return norm
        if self._global_norm is None:
            zero = {k: np.zeros_like(v) for k, v in self.global_weights.items()}
            self._global_norm = delta_norm(self.global_weights, zero)
        reference = max(1.0, self._global_norm)
        if norm > self.max_update_norm * reference:
            raise InvalidUpdate(
                f"absurd update: it changes the weights by {norm:.4g} (L2), "
                f"{norm / reference:.1f}x the global weights' norm; the limit is "
                f"{self.max_update_norm:g}x"
            )
        return norm


def _few(names: list[str], limit: int = 5) -> str:
    """``['a', 'b']``, or the first ``limit`` names and how many more (for a reason)."""
    shown = [name[:64] for name in names[:limit]]
    return f"{shown}" + (f" and {len(names) - limit} more" if len(names) > limit else "")


def device_metrics(device: str, meta: UpdateMeta, samples: int, size: int) -> DeviceMetrics:
    """A device's line in a round's (or a version's) metrics, from its accepted update."""
    interpreter = f"{meta.interpreter or ''} {meta.interpreter_version or ''}".strip()
    return DeviceMetrics(
        device,
        samples=samples,
        loss=meta.loss,
        accuracy=meta.accuracy,
        duration_s=meta.duration_s,
        interpreter=interpreter[:256],
        bytes_up=size,
    )
