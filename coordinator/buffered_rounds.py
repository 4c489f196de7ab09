"""The buffered round mode (FedBuff): global versions instead of rounds.

``run_round(version, weights)`` publishes global version ``version`` (retained), keeps up to
``--max-concurrency`` devices training (each holding a grant: coordinator/grants.py; the
retained announcement lists them and is republished whenever a slot changes hands), takes
every valid update that arrives, whatever version it was trained from (coordinator/buffer.py),
and once ``--buffer-size`` are in, folds them into the next version. Devices never wait for
each other: a device whose update is in gets a new grant at once (when the bound allows),
and trains it from the newest version it holds. The job loop checkpoints each version and
publishes its metrics like a round's (``round`` = the version, ``mode`` = "buffered").

Implements ``round_mode.RoundMode``; docs/round-modes.md says when to use it, docs/protocol.md
section 2b what goes over the wire.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from coordinator.buffer import (
    Buffer,
    Checked,
    StaleUpdate,
    UnusableUpdate,
    Version,
    Versions,
    check_staleness,
    check_update,
    device_limit,
    staleness_summary,
)
from coordinator.grants import Grants
from coordinator.round_mode import POLL_S, SENDER, JobError
from coordinator.rounds import bounded
from edge_client.errors import ProtocolError
from edge_client.messaging import UpdateReceived
from edge_client.protocol import (
    BUFFERED,
    DeviceMetrics,
    Envelope,
    FoldedUpdate,
    Rejection,
    RoundAnnouncement,
    RoundMetrics,
    StartOver,
    encode_weights,
)

if TYPE_CHECKING:
    from coordinator.server import Coordinator

log = logging.getLogger(__name__)

DETAIL = (
    "buffered job (FedBuff): boards train continuously on the newest global version; a board "
    "that only speaks synchronous rounds gets no training slot (update its edge client)"
)


@dataclass
class VersionRecord:
    """What happened while one version was open (its metrics)."""

    version: Version
    master: Mapping[str, np.ndarray]  # its float32 weights (the rebase target)
    buffer: Buffer
    started: float = field(default_factory=time.time)
    bytes_down: int = 0
    bytes_up: int = 0
    bytes_rejected: int = 0
    wasted: int = 0  # updates rejected as too stale
    results: dict[str, DeviceMetrics] = field(default_factory=dict)  # merged per device
    rejections: list[Rejection] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)  # device -> reason (counted)
    failed: set[str] = field(default_factory=set)
    dropped: set[str] = field(default_factory=set)  # slots taken back: offline
    cancelled: set[str] = field(default_factory=set)  # slots taken back: timed out


class BufferedRounds:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coord = coordinator
        self.cfg = cfg = coordinator.cfg
        path = coordinator.run_dir.path
        self.grants = Grants(
            path / "grants.json",
            max_concurrency=cfg.max_concurrency,
            timeout_s=cfg.round_timeout,
            seed=cfg.seed,
        )
        self.versions = Versions(path / "versions", keep=cfg.staleness_limit + 1)
        # (device, grant) -> the version it was folded into (or refused at): never twice
        self.used: dict[tuple[str, int], int] = {}
        self.rec: VersionRecord | None = None
        self._backlog: list[UpdateReceived] = []  # arrived after the buffer filled
        self._told_waits: set[tuple[str, int]] = set()  # (device, grant) logged as waiting
        self._announced: RoundAnnouncement | None = None
        self._told: set[str] = set()  # devices told (in the log) they get no slot
        self._started = False
        self._alone_since: float | None = None  # no capable device online since (monotonic)

    # -- the round mode ---------------------------------------------------------------------
    def run_round(
        self, round_: int, weights: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], RoundMetrics]:
        if not self._started:
            self._start()
        cfg = self.cfg
        payload = encode_weights(
            weights,
            kind="global",
            job=cfg.job,
            round=round_,
            sender=SENDER,
            encoding=cfg.encoding,
        )
        version = self.versions.add(round_, payload)  # saved before it is published
        sent = self.coord.publish_global(payload)
        server_lr = cfg.strategy != "fedavgm"  # fedavgm applies --server-lr itself
        buffer = Buffer(
            weights, self.coord.strategy, self.coord.bounds, server_lr=cfg.server_lr,
            apply_server_lr=server_lr,
        )  # fmt: skip
        rec = self.rec = VersionRecord(version, weights, buffer)
        rec.bytes_down = sent * len(self.coord.online())  # every subscribed board receives it
        log.info(
            "version %d published: %d training slot(s), buffer of %d",
            round_,
            len(self.grants.slots),
            cfg.buffer_size,
        )
        self._take_pending()
        self._tend()
        while len(rec.buffer) < cfg.buffer_size:
            if self.coord.control_state == "stopped":
                raise JobError(f"stopped by the operator while version {round_} was open")
            self.coord.pump(POLL_S)
            self._take_pending()
            self._tend()
        closed = buffer.close()
        rec.rejections.extend(closed.rejections)
        for r in closed.rejections:
            rec.rejected[r.device] = r.reason
        if round_ == cfg.rounds:  # the last version: boards still training stop
            self._announce(state="closed", force=True)
        log.info(
            "version %d: folded %d update(s), %s",
            round_,
            len(closed.folded),
            staleness_summary(closed.folded),
        )
        return closed.weights, self._metrics(rec, closed.folded)

    def _start(self) -> None:
        """Once per coordinator run: what was folded before (--resume), the job's state."""
        self._started = True
        state = self.coord.run_dir.load_state(self.cfg.job)
        for metrics in state.history:
            for f in metrics.buffer:
                self.used[(f.device, f.grant)] = metrics.round
        if self.used:
            log.info("resuming a buffered job: %d updates folded before", len(self.used))
        self.coord.control.publish("running", DETAIL)
        self.coord.wait_for_devices()

    # -- incoming updates -------------------------------------------------------------------
    def _take_pending(self) -> None:
        """Offer the updates that arrived, in order, until the buffer is full (the rest wait
        for the next version: every version folds exactly --buffer-size updates)."""
        rec = self.rec
        assert rec is not None
        self._backlog.extend(self.coord.take_pending())
        backlog, self._backlog = self._backlog, []
        for item in backlog:
            if len(rec.buffer) >= self.cfg.buffer_size:
                self._backlog.append(item)
            else:
                self._offer(item)  # back in the backlog if its device has its share

    def _limit(self) -> int:
        """The most updates one device may have in the current buffer."""
        return device_limit(
            self.cfg.buffer_size, self.coord.bounds.max_weight_share, len(self._candidates())
        )

    def _offer(self, item: UpdateReceived) -> None:
        rec, env, device = self.rec, item.value, item.device
        assert rec is not None and device is not None
        try:
            if env.job != self.cfg.job:
                raise ProtocolError(f"update for job {env.job!r}")
            if env.sender != device:
                raise ProtocolError(
                    f"payload sender {env.sender!r} differs from topic device {device!r}"
                )
            if env.kind == "update":
                check_staleness(env, rec.version.round, self.cfg.staleness_limit)
            grant = self._grant(env, device)
            if env.kind == "failure":
                self._failure(env, device, grant, item.size)
                return
            if self._answered(env, device, grant) or self._waits(item, grant):
                return
            checked = self._check(env, device, item.size)
        except ProtocolError as exc:
            self._reject(env, device, item.size, exc)
            return
        self.used[(device, grant)] = rec.version.round
        self.grants.release(device, grant)
        rec.buffer.add(checked)
        rec.bytes_up += item.size
        metrics = checked.metrics
        if self.cfg.eval_devices and self.coord.evaluator is not None:
            score = self.coord.evaluator.evaluate(checked.trained)
            metrics = dataclasses.replace(metrics, test_accuracy=score.accuracy)
        rec.results[device] = _merge(rec.results.get(device), metrics)
        log.info(
            "update from %s (grant %d, version %d, staleness %d): %d of %d in the buffer",
            device,
            grant,
            env.round,
            checked.folded.staleness,
            len(rec.buffer),
            self.cfg.buffer_size,
        )

    def _waits(self, item: UpdateReceived, grant: int) -> bool:
        """Whether a valid-so-far update waits for the next version because its device has
        its share of this buffer (:func:`device_limit`): at most that many wait, per device
        (ProtocolError beyond)."""
        rec, env, device = self.rec, item.value, item.device
        assert rec is not None and device is not None
        limit = self._limit()
        if rec.buffer.count(device) < limit:
            return False
        waiting = [w.value for w in self._backlog if w.device == device]
        if any(w.sha256 == env.sha256 and w.meta.get("grant") == grant for w in waiting):
            return True  # a QoS 1 duplicate of one waiting already: dropped
        if len(waiting) >= limit:
            raise ProtocolError(
                f"{device} has {limit} update(s) in version {rec.version.round}'s buffer and "
                f"{limit} waiting for the next, the most one device may have "
                f"({self.coord.bounds.max_weight_share:g} of --buffer-size "
                f"{self.cfg.buffer_size}, --max-weight-share)"
            )
        self._backlog.append(item)
        if (device, grant) in self._told_waits:
            return True
        self._told_waits.add((device, grant))
        log.info(
            "update from %s (grant %d) waits for the next version: %d of version %d's %d "
            "updates are its already (--max-weight-share)",
            device,
            grant,
            limit,
            rec.version.round,
            self.cfg.buffer_size,
        )
        return True

    def _grant(self, env: Envelope, device: str) -> int:
        """The grant an update or failure answers (ProtocolError when it answers none)."""
        grant = env.meta.get("grant")
        if grant is None:
            raise ProtocolError(
                "no grant: this job runs buffered rounds (FedBuff) and the sender speaks "
                "synchronous rounds only"
            )
        if isinstance(grant, bool) or not isinstance(grant, int):
            raise ProtocolError(f"meta.grant must be an integer, got {type(grant).__name__}")
        if not self.grants.issued(device, grant):
            raise ProtocolError(f"grant {grant} was never issued to {device}")
        return grant

    def _answered(self, env: Envelope, device: str, grant: int) -> bool:
        """Whether ``grant`` was answered by this very update (a QoS 1 duplicate, dropped);
        ProtocolError if by another one."""
        rec = self.rec
        assert rec is not None
        if (device, grant) not in self.used:
            return False
        if rec.buffer.holds(device, grant, env.sha256):
            log.debug("duplicate of %s's grant %d ignored", device, grant)
            return True
        raise ProtocolError(
            f"grant {grant} of {device} was already answered (folded into or refused at "
            f"version {self.used[(device, grant)]}): a second update for it is not taken"
        )

    def _check(self, env: Envelope, device: str, size: int) -> Checked:
        rec = self.rec
        assert rec is not None
        status = self.coord.devices.get(device)
        return check_update(
            env,
            device,
            size,
            current=rec.version,
            master=rec.master,
            versions=self.versions,
            max_staleness=self.cfg.staleness_limit,
            manifest=self.coord.model.manifest,
            strategy=self.coord.strategy,
            max_update_norm=self.cfg.max_update_norm,
            bounds=self.coord.bounds,
            announced=status.samples if status is not None else 0,
            staleness_exponent=self.cfg.staleness_exponent,
            stale_changes=self.cfg.stale_changes,
        )

    def _failure(self, env: Envelope, device: str, grant: int, size: int) -> None:
        rec = self.rec
        assert rec is not None
        reason = env.reason or "unspecified"
        if self.grants.release(device, grant):
            self.grants.bench(device, rec.version.round + 1)  # no new slot before the next
            rec.failed.add(device)
            rec.bytes_up += size
            rec.results[device] = DeviceMetrics(device, failed=reason, bytes_up=size)
            log.warning("device %s gave back grant %d: %s", device, grant, reason)
        else:
            log.info(
                "failure report from %s for grant %d it no longer holds: %s", device, grant, reason
            )

    def _reject(self, env: Envelope, device: str, size: int, exc: ProtocolError) -> None:
        rec = self.rec
        assert rec is not None
        grant = env.meta.get("grant")
        counted = isinstance(exc, UnusableUpdate)  # the device's answer, unusable
        if isinstance(grant, int) and self.grants.holds(device, grant) and env.sender == device:
            # its grant is answered (stale, or unusable content): the slot is free again
            self.grants.release(device, grant)
            self.used[(device, grant)] = rec.version.round
        if isinstance(exc, StaleUpdate):
            rec.wasted += 1
        reason = bounded(str(exc))  # it may quote what the device sent
        if counted:
            rec.rejected[device] = reason
        rec.rejections.append(Rejection(device, env.sender, env.round, reason, counted, size))
        rec.bytes_rejected += size
        log.warning("rejected update from %s: %s", device, reason)

    # -- slots --------------------------------------------------------------------------------
    def _tend(self) -> None:
        """Take back the slots of devices gone offline or too slow, grant free slots, and
        announce when anything changed."""
        rec = self.rec
        assert rec is not None
        changed = False
        for device in list(self.grants.slots):
            status = self.coord.devices.get(device)
            if status is None or status.state == "offline":
                self.grants.release(device)
                rec.dropped.add(device)
                changed = True
                log.warning("device %s went offline: its training slot is free again", device)
        for device in self.grants.expired():
            self.grants.release(device)
            rec.cancelled.add(device)
            changed = True
            log.warning(
                "device %s did not answer its grant within %.0f s (--round-timeout): its slot "
                "is taken back",
                device,
                self.cfg.round_timeout,
            )
        if self.coord.control_state == "running":
            counts: dict[str, int] = {}
            for f in [*rec.buffer.folded, *(u.folded for u in rec.buffer.held.values())]:
                counts[f.device] = counts.get(f.device, 0) + 1
            # a device with its share of this buffer trains again for the next version
            limit = self._limit()
            candidates = [d for d in self._candidates() if counts.get(d, 0) < limit]
            granted = self.grants.fill(candidates, rec.version.round, in_buffer=counts)
            changed = changed or bool(granted)
        self._check_alone()
        self._announce(force=changed)

    def _candidates(self) -> list[str]:
        out = []
        for device, status in self.coord.devices.items():
            if status.state == "offline":
                continue
            if status.speaks(BUFFERED):
                out.append(device)
            elif device not in self._told:
                self._told.add(device)
                site = status.interpreter.startswith("site-aggregator")
                log.warning(
                    "%s %s speaks synchronous rounds only: it gets no training slot in this "
                    "buffered job (%s)",
                    "site aggregator" if site else "device",
                    device,
                    "site aggregators work with synchronous jobs only"
                    if site
                    else "update its edge client",
                )
        return out

    def _check_alone(self) -> None:
        """A job with no device to train for --wait-timeout stops with an error."""
        if self.grants.slots or self._candidates():
            self._alone_since = None
            return
        now = time.monotonic()
        if self._alone_since is None:
            self._alone_since = now
            log.warning("no device that speaks buffered rounds is online: waiting")
        elif now - self._alone_since > self.cfg.wait_timeout:
            raise JobError(
                f"no device that speaks buffered rounds online for {self.cfg.wait_timeout:.0f} s:"
                " start boards with a current edge client, or run --mode sync"
            )

    def _announce(self, *, state: str = "open", force: bool = False) -> None:
        rec = self.rec
        assert rec is not None
        grants = {} if state != "open" else self.grants.announced()
        ann = RoundAnnouncement(
            job=self.cfg.job,
            round=rec.version.round,
            deadline=self.grants.deadline(),
            selected=tuple(grants),
            hyperparams=self._hyperparams(),
            model_sha256=self.coord.model.manifest.sha256,
            global_sha256=rec.version.sha256,
            encoding=self.cfg.encoding,
            state=state,
            run=self.coord.run_id,
            mode=BUFFERED,
            grants=grants,
            max_staleness=self.cfg.staleness_limit,
        )
        previous = self._announced
        same = previous is not None and dataclasses.replace(previous, deadline=0.0) == (
            dataclasses.replace(ann, deadline=0.0)
        )
        if same and not force:
            return
        self.grants.save()  # grant numbers must never repeat, even after a crash
        self.coord.publish_announcement(ann)
        self._announced = ann

    def _hyperparams(self) -> dict[str, Any]:
        """Epochs and lr, and the start-over hint (--start-over-within) for trainings from
        version 1, the job's initial weights."""
        out: dict[str, Any] = {"epochs": self.cfg.epochs, "lr": self.cfg.lr, "attempt": 0}
        if self.cfg.start_over_within > 0:
            out["start_over"] = StartOver(1, self.cfg.start_over_within).to_dict()
        return out

    # -- metrics --------------------------------------------------------------------------------
    def _metrics(
        self,
        rec: VersionRecord,
        folded: list[FoldedUpdate],
    ) -> RoundMetrics:
        cfg, round_ = self.cfg, rec.version.round
        samples: dict[str, int] = {}
        for f in folded:
            samples[f.device] = samples.get(f.device, 0) + f.samples
        devices = [
            dataclasses.replace(r, samples=samples[d]) if d in samples else r
            for d, r in rec.results.items()
        ]
        return RoundMetrics(
            job=cfg.job,
            round=round_,
            participants=tuple(sorted(samples)),
            bytes_up=rec.bytes_up,
            bytes_down=rec.bytes_down,
            duration_s=round(time.time() - rec.started, 3),
            devices=tuple(devices),
            failed=tuple(sorted(rec.failed)),
            samples=sum(f.samples for f in folded),
            selected=tuple(sorted(self.grants.slots)),
            rejected=dict(rec.rejected),
            updates_aggregated=len(folded),
            time=time.time(),
            dropped=tuple(sorted(rec.dropped)),
            rejections=tuple(rec.rejections),
            bytes_rejected=rec.bytes_rejected,
            cancelled=tuple(sorted(rec.cancelled)),
            wasted=rec.wasted,
            mode=BUFFERED,
            buffer=tuple(folded),
        )


def _merge(old: DeviceMetrics | None, new: DeviceMetrics) -> DeviceMetrics:
    """A device's second update in the same version: one entry, the bytes added up."""
    if old is None:
        return new
    return dataclasses.replace(new, bytes_up=old.bytes_up + new.bytes_up)
