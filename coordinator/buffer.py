"""The buffer of a buffered job (FedBuff): recent versions, update checks, folding.

Every update of a buffered job was trained from some recent global version (its envelope's
``round``). :func:`check_update` takes it only if it is at most ``max_staleness`` versions
behind, answers a grant issued to its device and not used before, was trained from that
version's weights, and passes the content checks of a synchronous round (the
:class:`RoundCollector`'s, against its own base version). It is then re-based on the
current version, scaled by its staleness weight (coordinator/late.py ``stale_change``)::

    rebased = w_V + (w_trained - w_V) / sqrt(1 + s),      s = V - base  (toward-model)
    rebased = w_V + (w_trained - w_base) / sqrt(1 + s)                  (from-base)

(``--stale-changes``; ``(1 + s) ** -a`` with ``--staleness-exponent a``), and held in the :class:`Buffer`. When the buffer is full, :meth:`Buffer.close` applies the
round-wide influence bounds (coordinator/influence.py: change vs the buffer's median, weight
share) as a synchronous round does at its close, the job's strategy aggregates the rebased
updates (so clipping, the robust strategies and DP-FedAvg work per buffer), and the next
version is ``w_V + server_lr * (aggregate - w_V)``.

:class:`Versions` keeps the recent versions as published (decoded, as boards train from
them) and on disk in ``RUN_DIR/versions/``, so a resumed coordinator still takes updates
trained from versions published before it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from coordinator.aggregation import Strategy
from coordinator.influence import Held, InfluenceBounds, capped_claims, change_outliers, risk
from coordinator.late import DEFAULT_STALENESS_EXPONENT, stale_change, staleness_weight
from coordinator.robust_strategies import delta_norm
from coordinator.rounds import RoundCollector, device_metrics
from coordinator.run_dir import atomic_write
from edge_client.errors import EdgeFLError, ProtocolError
from edge_client.manifest import Manifest
from edge_client.protocol import (
    DeviceMetrics,
    Envelope,
    FoldedUpdate,
    Rejection,
    UpdateDeduper,
    decode,
)

log = logging.getLogger(__name__)

Weights = dict[str, np.ndarray]


class StaleUpdate(ProtocolError):
    """Trained from a version more than max_staleness behind: rejected, counted as wasted."""


class UnusableUpdate(ProtocolError):
    """A granted update whose content is unusable: it answers its grant (the slot is freed)."""


@dataclass(frozen=True)
class Version:
    round: int
    sha256: str  # weights_sha256 of what boards decode (the announcement's global_sha256)
    weights: Weights  # as boards decode and train from them (float16/int8 rounding included)


class Versions:
    """The last ``keep`` global versions, in memory and in ``directory`` (one envelope each)."""

    def __init__(self, directory: Path, keep: int) -> None:
        self.directory = directory
        self.keep = keep
        self._cache: dict[int, Version] = {}

    def add(self, round_: int, payload: bytes) -> Version:
        """Version ``round_`` from its global envelope, saved before it is published."""
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path(round_), payload)
        version = self._decode(round_, payload)
        self._cache[round_] = version
        for old in [r for r in self._cache if r <= round_ - self.keep]:
            del self._cache[old]
        for path in self.directory.glob("global-*.bin"):
            if _round_of(path) <= round_ - self.keep:
                path.unlink(missing_ok=True)
        return version

    def get(self, round_: int) -> Version | None:
        if round_ not in self._cache:
            try:
                payload = self._path(round_).read_bytes()
            except OSError:
                return None
            try:
                self._cache[round_] = self._decode(round_, payload)
            except EdgeFLError as exc:
                log.warning("ignoring saved version %d: %s", round_, exc)
                return None
        return self._cache[round_]

    def _path(self, round_: int) -> Path:
        return self.directory / f"global-{round_:06d}.bin"

    @staticmethod
    def _decode(round_: int, payload: bytes) -> Version:
        env = decode(payload, expect_kind="global")
        return Version(round_, env.weights_sha256(), env.weights())


def _round_of(path: Path) -> int:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


@dataclass(frozen=True)
class Checked:
    """An update that passed every check, re-based on the current version."""

    folded: FoldedUpdate  # its record (capped samples are set at the close)
    weights: Weights  # rebased on the current version
    change: float  # L2 norm of the rebased change
    metrics: DeviceMetrics
    trained: Weights = field(repr=False)  # as the device sent them (for --eval-devices)


def check_staleness(env: Envelope, current: int, max_staleness: int) -> int:
    """How many versions behind ``current`` an update is (StaleUpdate beyond the maximum)."""
    if env.round > current:
        raise ProtocolError(f"update for version {env.round}, the current version is {current}")
    staleness = current - env.round
    if staleness > max_staleness:
        raise StaleUpdate(
            f"stale update: trained from version {env.round}, {staleness} versions behind "
            f"version {current} (at most {max_staleness}, --max-staleness): wasted"
        )
    return staleness


def check_update(
    env: Envelope,
    device: str,
    size: int,
    *,
    current: Version,
    master: Mapping[str, np.ndarray],
    versions: Versions,
    max_staleness: int,
    manifest: Manifest,
    strategy: Strategy,
    max_update_norm: float,
    bounds: InfluenceBounds | None,
    announced: int,
    staleness_exponent: float = DEFAULT_STALENESS_EXPONENT,
    stale_changes: str = "from-base",
) -> Checked:
    """Validate an ``update`` of a buffered job (ProtocolError says why not; StaleUpdate for a
    too stale one). ``master``: the current version's float32 weights (the rebase target).
    The grant is checked by the caller (it knows the grants and what was folded)."""
    staleness = check_staleness(env, current.round, max_staleness)
    try:
        grant = env.update_meta().grant
    except ProtocolError as exc:  # the grant's answer, unusable
        raise UnusableUpdate(f"unreadable meta: {exc}") from None
    assert grant is not None  # checked by the caller
    base = versions.get(env.round)
    if base is None:
        raise UnusableUpdate(
            f"trained from version {env.round}, whose weights this coordinator no longer holds"
        )
    checker = RoundCollector(
        env.job,
        env.round,
        frozenset(),
        base.sha256,
        {w.name: w.shape for w in manifest.weights},
        strategy,
        UpdateDeduper(),
        global_weights=base.weights,
        max_update_norm=max_update_norm,
        dtypes={w.name: w.dtype for w in manifest.weights},
        bounds=bounds,
        announced={device: announced} if announced > 0 else {},
    )
    try:
        meta, trained, _ = checker.check_content(env, device)
    except ProtocolError as exc:
        raise UnusableUpdate(str(exc)) from None
    weight = staleness_weight(staleness, staleness_exponent)
    rebased = stale_change(master, base.weights, trained, weight, stale_changes)
    return Checked(
        FoldedUpdate(
            device, grant, env.round, staleness, round(weight, 6), env.samples, env.sha256
        ),
        rebased,
        delta_norm(rebased, master),
        device_metrics(device, meta, env.samples, size),
        trained,
    )


@dataclass
class Closed:
    """What closing a buffer decided."""

    weights: Weights  # the next version
    folded: list[FoldedUpdate]  # with the sample counts they were folded with
    rejections: list[Rejection]  # outsized changes rejected at the close


class Buffer:
    """The updates of one version, held for the round-wide bounds or folded at once."""

    def __init__(
        self,
        master: Mapping[str, np.ndarray],
        strategy: Strategy,
        bounds: InfluenceBounds | None,
        *,
        server_lr: float,
        apply_server_lr: bool = True,  # False: the strategy steps itself (fedavgm)
    ) -> None:
        self.master = master
        self.strategy = strategy
        self.bounds = bounds if bounds is not None and _holds(bounds) else None
        self.server_lr = server_lr if apply_server_lr else 1.0
        self.held: dict[str, Checked] = {}  # "device#grant" -> update
        self.folded: list[FoldedUpdate] = []
        strategy.begin(master)

    def __len__(self) -> int:
        return len(self.held) + len(self.folded)

    def count(self, device: str) -> int:
        """How many of the buffer's updates (held or folded) are ``device``'s."""
        held = sum(u.folded.device == device for u in self.held.values())
        return held + sum(f.device == device for f in self.folded)

    def holds(self, device: str, grant: int, sha256: str) -> bool:
        """Whether this very update (a QoS 1 duplicate) is in the buffer already."""
        held = self.held.get(buffer_key(device, grant))
        if held is not None:
            return held.folded.sha256 == sha256
        return any(
            f.device == device and f.grant == grant and f.sha256 == sha256 for f in self.folded
        )

    def add(self, update: Checked) -> None:
        key = buffer_key(update.folded.device, update.folded.grant)
        if self.bounds is None:
            self._fold(update, update.folded.samples)
            return
        self.held[key] = update
        if len(self.held) > self.bounds.max_held:  # memory: fold the least suspicious now
            samples = float(np.median([u.folded.samples for u in self.held.values()]))
            changes = float(np.median([u.change for u in self.held.values()]))
            first = self.held.pop(
                min(self.held, key=lambda k: risk(_held(self.held[k]), samples, changes))
            )
            self._fold(first, first.folded.samples)

    def close(self) -> Closed:
        """The bounds decide on the held updates, the strategy aggregates, the server steps."""
        rejections: list[Rejection] = []
        if self.bounds is not None and self.held:
            changes = {k: u.change for k, u in self.held.items()}
            for key, reason in change_outliers(changes, self.bounds.max_change_ratio).items():
                update = self.held.pop(key)
                device = update.folded.device
                rejections.append(
                    Rejection(
                        device, device, update.folded.base, reason, True, update.metrics.bytes_up
                    )
                )
                log.warning(
                    "rejected update from %s (grant %d): %s", device, update.folded.grant, reason
                )
            # the cap is per device: a device's updates of the buffer share it
            capped = capped_claims(
                {k: u.folded.samples for k, u in self.held.items()}, self.bounds.max_weight_share
            )
            for key, update in self.held.items():
                self._fold(update, capped[key])
            self.held = {}
        if not self.folded:  # every one was rejected at the close: the version stays
            log.warning("no update of the buffer passed its close: the weights do not change")
            return Closed({k: np.array(v) for k, v in self.master.items()}, [], rejections)
        aggregate = self.strategy.finish()
        new = {
            k: (
                np.asarray(self.master[k], np.float64)
                + self.server_lr
                * (np.asarray(aggregate[k], np.float64) - np.asarray(self.master[k], np.float64))
            ).astype(np.float32)
            for k in self.master
        }
        return Closed(new, list(self.folded), rejections)

    def _fold(self, update: Checked, samples: int) -> None:
        if samples != update.folded.samples:
            log.warning(
                "%s's weight capped from %d to %d samples (--max-weight-share %g)",
                update.folded.device,
                update.folded.samples,
                samples,
                self.bounds.max_weight_share if self.bounds else 0.0,
            )
        self.strategy.accept(update.weights, samples)
        self.folded.append(dataclasses.replace(update.folded, samples=samples))


def buffer_key(device: str, grant: int) -> str:
    """How an update is named in its buffer: influence.owner() reads the device back, so the
    bounds judge a device's updates together (ids have no spaces)."""
    return f"{device} (grant {grant})"


def device_limit(buffer_size: int, max_share: float, devices: int) -> int:
    """The most updates one device may have in a buffer: ``max_share`` of it (at least one),
    so a device answering its grants faster than the others train cannot fill a buffer
    alone. More when fewer than ``1 / max_share`` devices (``devices``: those online that
    speak buffered rounds) could fill it otherwise; no limit with the share cap off (0)."""
    if max_share <= 0:
        return buffer_size
    limit = max(1, math.floor(buffer_size * max_share + 1e-9))
    if devices > 0:
        limit = max(limit, math.ceil(buffer_size / devices))
    return min(limit, buffer_size)


def _held(update: Checked) -> Held:
    return Held(update.folded.device, update.weights, update.folded.samples, update.change)


def _holds(bounds: InfluenceBounds) -> bool:
    """Whether the bounds need the whole buffer (else updates are folded as they come)."""
    return bounds.max_change_ratio > 0 or bounds.max_weight_share > 0


def staleness_summary(folded: list[FoldedUpdate]) -> str:
    """``staleness mean 1.3, max 4`` for a log line."""
    if not folded:
        return "no updates"
    values = [f.staleness for f in folded]
    return f"staleness mean {sum(values) / len(values):.1f}, max {max(values)}"
