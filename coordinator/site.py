"""A site aggregator: one site's devices on their own broker, one weighted partial sum upstream.

FedAvg is associative: over devices i of sites s, ``sum_i n_i w_i / sum_i n_i`` equals
``sum_s N_s m_s / sum_s N_s`` with ``N_s = sum_{i in s} n_i`` and ``m_s`` the site's own
FedAvg. So a site aggregator looks like one device to the central coordinator: it sends
an ordinary ``update`` envelope with ``sender`` = its site id, ``samples`` = N_s and the
weights m_s, and the central coordinator needs no change for FedAvg (robust strategies
would see sites, not devices).

Two connections: *upstream* reaches the central job's topics (directly on the central broker,
or on the site broker under another prefix that a Mosquitto bridge maps to the central
broker, :func:`bridge_config`); *downstream* is the site broker under the devices' usual
topics, where the aggregator plays the coordinator. Per central round that selects the site,
it relays the model and global weights down (as received), selects its own devices, announces
the round with a deadline ``margin_s`` before the central one, validates and folds their
updates with the coordinator's own :class:`RoundCollector`, under the coordinator's bounded
influence (:class:`InfluenceBounds`: sample counts checked against statuses, change vs the
round's median, weight-share cap), and streaming FedAvg (O(model)), and sends the partial sum
up (or a failure when too few devices answered). With the job's public key
(:class:`UpstreamTrust`) it relays and obeys only what the job signed, and with its own key
endorsed by the job's (:class:`SiteKey`) it signs the rounds it announces, so boards that trust
the job's key accept them. At start it clears
the model and global chunks that earlier runs left retained on the site broker.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coordinator.aggregation import FedAvg
from coordinator.influence import InfluenceBounds
from coordinator.retained import clear_leftovers
from coordinator.rounds import RoundCollector
from coordinator.selection import select_devices
from coordinator.site_bridge import bridge_config
from coordinator.site_keys import load_site_key
from coordinator.site_trust import UpstreamTrust
from edge_client import __version__
from edge_client.errors import ConfigError, EdgeFLError, ProtocolError
from edge_client.manifest import Manifest
from edge_client.messaging import (
    AnyIncoming,
    BinaryPublisher,
    ControlReceived,
    GlobalReceived,
    Inbox,
    ModelReceived,
    RoundReceived,
    StatusReceived,
    UpdateReceived,
)
from edge_client.protocol import (
    DEFAULT_MAX_CHUNK,
    DEFAULT_PREFIX,
    DeviceStatus,
    RoundAnnouncement,
    Topics,
    UpdateMeta,
    encode_failure,
    encode_weights,
)
from edge_client.transport import Transport

__all__ = ["INTERPRETER", "SiteAggregator", "SiteConfig", "SiteRound", "bridge_config"]

log = logging.getLogger(__name__)

SECURE_REFUSAL = (
    "a site aggregator cannot take part in a secure round: it would see its devices' updates "
    "in the clear (secure aggregation runs between boards and the coordinator only)"
)

BUFFERED_REFUSAL = (
    "the central job runs buffered rounds (FedBuff, --mode buffered): site aggregators work "
    "with synchronous and semi-synchronous jobs only; connect this site's boards to the "
    "central broker, or run the central job with --mode sync"
)

INTERPRETER = "site-aggregator"  # what a site's update and status name as their interpreter


@dataclass(frozen=True)
class SiteConfig:
    site_id: str  # the site's id upstream: its "device id" for the central coordinator
    job: str
    prefix: str = DEFAULT_PREFIX  # topics of the site's devices on the site broker
    upstream_prefix: str = DEFAULT_PREFIX  # the central job's topics as upstream sees them
    fraction: float = 1.0  # share of the site's online devices selected per round
    clients_per_round: int = 0  # K random devices per round; 0: use fraction
    min_results: int = 1  # device updates needed to send a partial sum; fewer: a failure
    # The site's deadline comes this long before the central one (at most a quarter of the
    # time left), leaving room to aggregate and send the partial sum up.
    margin_s: float = 5.0
    max_update_norm: float = 10.0  # the coordinator's check, applied to the site's devices
    # The coordinator's bounded influence over the site's devices (fedcoord start's defaults:
    # sample counts checked against statuses, weight share <= 0.5, change <= 10x the median)
    bounds: InfluenceBounds = field(default_factory=InfluenceBounds)
    # The job's public key (as fedge run --trust-key): upstream control, model and rounds must
    # be signed with it; None: nothing is checked (logged at start)
    trust_key: str | None = None
    # The site's own key directory (coordinator/site_keys.py: its key and the job key's
    # endorsement of it): the site signs the rounds it announces to its boards with it, so
    # boards with --trust-key accept them; None: it announces them unsigned (logged at start)
    site_key: str | None = None
    seed: int = 0  # device selection
    max_chunk: int = DEFAULT_MAX_CHUNK

    def __post_init__(self) -> None:
        try:
            Topics(self.job, self.prefix).status(self.site_id)
            Topics(self.job, self.upstream_prefix)
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from exc
        if not 0 < self.fraction <= 1 or self.clients_per_round < 0 or self.min_results < 1:
            raise ConfigError(
                "fraction must be in (0, 1], clients_per_round >= 0, min_results >= 1"
            )
        if self.margin_s < 0 or self.max_update_norm < 0:
            raise ConfigError("margin_s and max_update_norm must be >= 0")
        if self.max_chunk < 1024:
            raise ConfigError(f"max_chunk must be at least 1024 bytes, got {self.max_chunk}")
        problem = self.bounds.problem()
        if problem:
            raise ConfigError(problem)


@dataclass
class _LocalRound:
    central: RoundAnnouncement
    local: RoundAnnouncement
    collector: RoundCollector
    strategy: FedAvg
    started: float


@dataclass
class SiteRound:
    """What the site sent upstream for one central round (for logs, tests and reports)."""

    round: int
    selected: int
    devices: list[str] = field(default_factory=list)  # whose updates were folded in
    samples: int = 0
    failed: str = ""  # reason, when a failure went up instead of a partial sum


class SiteAggregator:
    """Relays rounds down to one site's devices and their weighted partial sum up."""

    def __init__(
        self,
        cfg: SiteConfig,
        upstream: Transport,
        downstream: Transport,
        *,
        scanner: Transport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``scanner``: a spare connection to the site broker, used once by :meth:`start` to
        find the chunks earlier runs left retained there (``fedcoord site`` gives one)."""
        self.cfg, self.upstream, self.downstream, self.clock = cfg, upstream, downstream, clock
        self.scanner = scanner
        self.trust = UpstreamTrust.from_spec(cfg.site_id, cfg.job, cfg.trust_key)
        self.site_key = (
            load_site_key(cfg.site_key, cfg.job, cfg.site_id, self.trust.verifier)
            if cfg.site_key
            else None
        )
        self.up = Topics(cfg.job, cfg.upstream_prefix)
        self.down = Topics(cfg.job, cfg.prefix)
        self.up_inbox, self.down_inbox = Inbox(upstream, self.up), Inbox(downstream, self.down)
        self.up_pub = BinaryPublisher(upstream, cfg.max_chunk)
        self.down_pub = BinaryPublisher(downstream, cfg.max_chunk)
        self.devices: dict[str, DeviceStatus] = {}
        self.manifest: Manifest | None = None
        self.model_sha256: str | None = None
        self.global_weights: dict[str, Any] | None = None
        self.global_sha256: str | None = None
        self.pending: RoundAnnouncement | None = None  # selected us, waiting for inputs
        self.current: _LocalRound | None = None
        self.sent: list[SiteRound] = []
        self.stopped = False  # the central job stopped
        self.refused: str | None = None  # why the site cannot serve the central job
        self._handled: set[tuple] = set()  # central announcements already answered
        self._relayed: dict[str, str] = {}  # base topic -> sha256 of the envelope relayed
        self._stop = threading.Event()
        self._started_at = clock()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        cfg = self.cfg
        (log.warning if cfg.bounds.weakened else log.info)(
            "site %s: %s", cfg.site_id, cfg.bounds.describe()
        )
        (log.info if self.trust.verifier else log.warning)("%s", self.trust.describe())
        if self.site_key is not None:
            log.info("%s", self.site_key.describe(cfg.site_id))
        else:
            log.warning(
                "site %s announces rounds to its boards UNSIGNED (no site key): boards with "
                "--trust-key refuse them; make one with fedcoord keys site --job %s --site %s",
                cfg.site_id,
                cfg.job,
                cfg.site_id,
            )
        if self.scanner is not None:  # what earlier runs left retained on the site broker
            bases = [self.down.model, self.down.global_weights]
            clear_leftovers(self.scanner, self.down_pub, bases, f"site broker of {cfg.site_id}")
        for topic, qos in self.up.device_subscriptions():
            self.upstream.subscribe(topic, qos)
        for topic, qos in self.down.coordinator_subscriptions():
            self.downstream.subscribe(topic, qos)
        for transport in (self.upstream, self.downstream):
            if not transport.connected:
                transport.connect()
        self._status("online", detail=f"site aggregator of job {self.cfg.job}")
        log.info("site %s aggregates job %s", self.cfg.site_id, self.cfg.job)

    def run(self) -> None:
        """Relay and aggregate until the central job stops (or :meth:`stop`), then close."""
        self.start()
        try:
            while not self._stop.is_set() and not self.stopped:
                self.step(0.05)
        finally:
            self.close()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        """Publish ``offline`` upstream and disconnect both sides."""
        self._status("offline", detail="site aggregator stopped")
        for transport in (self.upstream, self.downstream):
            transport.wait_published(10.0)
            transport.close()

    def step(self, timeout: float = 0.0) -> None:
        """Handle what arrived on either side, then open or close the local round."""
        try:
            item = self.up_inbox.get(0)
            if item is not None:
                self._from_upstream(item)
            wait = 0 if self.up_inbox.pending() else timeout
            item = self.down_inbox.get(wait)
            if item is not None:
                self._from_downstream(item)
            self._maybe_open()
            self._maybe_close()
        except EdgeFLError as exc:
            log.warning("site %s dropped a message: %s", self.cfg.site_id, exc)
        except Exception:  # a bug, or input no check foresaw, must not take the site down
            log.exception("site %s: unexpected error in a step; carrying on", self.cfg.site_id)

    # -- upstream: the central job ------------------------------------------------------
    def _from_upstream(self, item: AnyIncoming) -> None:
        match item:
            case ModelReceived(env) if self.trust.model(item):
                self.manifest = Manifest.from_dict(env.meta)
                self.model_sha256 = env.sha256
                self._relay(self.down.model, item)
            case GlobalReceived(env):  # its digest is in the (checked) announcement
                self.global_weights, self.global_sha256 = env.weights(), env.weights_sha256()
                self._relay(self.down.global_weights, item)
            case RoundReceived(ann):
                checked = self.trust.announcement(ann, item.raw)
                if checked is not None:
                    self._on_central_round(checked)
            case ControlReceived(ctl):
                control = self.trust.control(ctl, item.raw)
                if control is None:  # refused: neither obeyed nor relayed to the boards
                    return
                # relayed as received: boards with --trust-key check the signature themselves
                self.downstream.publish(self.down.control, item.raw, retain=True)
                if control.state == "stopped" and control.time > self._started_at:
                    log.info("job %s stopped: site %s leaves", self.cfg.job, self.cfg.site_id)
                    self.stopped = True

    def _relay(self, base: str, item: ModelReceived | GlobalReceived) -> None:
        """Republish a retained envelope down exactly as received (signatures included)."""
        if self._relayed.get(base) != item.value.sha256:
            self.down_pub.publish(base, item.raw, retain=True)
            self._relayed[base] = item.value.sha256

    def _on_central_round(self, ann: RoundAnnouncement) -> None:
        if ann.buffered:  # the site's one update per round means nothing there: leave
            log.error("site %s: %s", self.cfg.site_id, BUFFERED_REFUSAL)
            self.refused, self.stopped = BUFFERED_REFUSAL, True
            return
        key = (ann.round, ann.global_sha256, ann.deadline)
        now = self.current
        if now is not None and ann.round == now.central.round and ann.state != "open":
            log.warning("central round %d %s before the site finished", ann.round, ann.state)
            self._publish_local(now.local, "closed")
            self.current = None
        if ann.state == "open" and ann.is_selected(self.cfg.site_id) and key not in self._handled:
            if ann.secure is not None:  # the site would see its devices' updates in the clear
                self._handled.add(key)
                self._send_failure(ann, SECURE_REFUSAL, 0)
                return
            self.pending = ann

    def _maybe_open(self) -> None:
        ann = self.pending
        if ann is None:
            return
        if self.clock() >= ann.deadline:
            log.warning("round %d: its deadline passed before the site had its inputs", ann.round)
            self.pending = None
            return
        ready = self.model_sha256 == ann.model_sha256 and self.global_sha256 == ann.global_sha256
        if not ready or self.manifest is None or self.global_weights is None:
            return
        self.pending = None
        self._handled.add((ann.round, ann.global_sha256, ann.deadline))
        if self.current is not None:  # superseded by a new attempt of the central round
            self._publish_local(self.current.local, "closed")
            self.current = None
        self._open(ann, self.manifest, self.global_weights)

    def _open(self, ann: RoundAnnouncement, manifest: Manifest, weights: dict[str, Any]) -> None:
        cfg, now = self.cfg, self.clock()
        online = {d for d, s in self.devices.items() if s.state != "offline"}
        selected = select_devices(
            online, ann.round, fraction=cfg.fraction, k=cfg.clients_per_round, seed=cfg.seed
        )
        if not selected:
            self._send_failure(ann, f"site {cfg.site_id} has no device online", 0)
            return
        deadline = ann.deadline - min(cfg.margin_s, (ann.deadline - now) / 4)
        local = RoundAnnouncement(
            job=cfg.job,
            round=ann.round,
            deadline=deadline,
            selected=selected,
            hyperparams=ann.hyperparams,
            model_sha256=ann.model_sha256,
            global_sha256=ann.global_sha256,
            encoding=ann.encoding,
            run=ann.run,
        )
        strategy = FedAvg()
        collector = RoundCollector.open(
            cfg.job,
            ann.round,
            selected,
            ann.global_sha256,
            manifest,
            strategy,
            weights,
            cfg.max_update_norm,
            bounds=cfg.bounds,
            announced={d: s.samples for d, s in self.devices.items() if s.samples > 0},
        )
        self.current = _LocalRound(ann, local, collector, strategy, now)
        self._publish_local(local, "open")
        self._status("training", round_=ann.round, detail=f"{len(selected)} devices selected")
        log.info(
            "round %d: %d site devices selected, site deadline in %.0f s",
            ann.round,
            len(selected),
            deadline - now,
        )

    # -- downstream: the site's devices -------------------------------------------------
    def _from_downstream(self, item: AnyIncoming) -> None:
        match item:
            case StatusReceived(status, device) if device:
                self.devices[device] = status
                offline = status.state == "offline" and self.current is not None
                if offline and self.current.collector.drop(device):  # its Last Will
                    log.warning("local round: device %s went offline, not waiting", device)
            case UpdateReceived(env, device, size) if device and self.current is not None:
                self.current.collector.offer(env, device, size)

    def _maybe_close(self) -> None:
        current = self.current
        if current is None:
            return
        if not current.collector.complete() and self.clock() < current.local.deadline:
            return
        self.current = None
        self._publish_local(current.local, "closed")
        c, ann = current.collector, current.central
        c.close()  # the round-wide bounds decide (change vs median, weight share), then fold
        if c.aggregated < self.cfg.min_results:
            reason = (
                f"site {self.cfg.site_id}: {c.aggregated} device update(s) by the site deadline, "
                f"{self.cfg.min_results} needed"
            )
            self._send_failure(ann, reason, len(c.selected))
            return
        accepted = c.accepted
        samples = sum(r.samples for r in accepted)
        payload = encode_weights(
            current.strategy.finish(),
            kind="update",
            job=self.cfg.job,
            round=ann.round,
            sender=self.cfg.site_id,
            samples=samples,
            meta=UpdateMeta(
                base_sha256=ann.global_sha256,
                loss=_weighted(accepted, "loss"),
                accuracy=_weighted(accepted, "accuracy"),
                duration_s=round(self.clock() - current.started, 3),
                interpreter=INTERPRETER,
                interpreter_version=__version__,
                site_devices=len(accepted),
                site_selected=len(c.selected),
            ),
            encoding=ann.encoding,
        )
        self.up_pub.publish(self.up.update(self.cfg.site_id), payload)
        devices = sorted(r.device for r in accepted)
        self.sent.append(SiteRound(ann.round, len(c.selected), devices, samples))
        self._status("idle", round_=ann.round, detail=f"{len(devices)} device updates sent up")
        log.info(
            "round %d: partial sum of %d of %d site devices (%d samples) sent up",
            ann.round,
            len(devices),
            len(c.selected),
            samples,
        )

    # -- publishing -----------------------------------------------------------------------
    def _publish_local(self, ann: RoundAnnouncement, state: str) -> None:
        ann = dataclasses.replace(ann, state=state)
        data = self.site_key.announcement(ann) if self.site_key else ann.to_json()
        self.downstream.publish(self.down.round, data, retain=True)

    def _send_failure(self, ann: RoundAnnouncement, reason: str, selected: int) -> None:
        log.warning("round %d: %s", ann.round, reason)
        payload = encode_failure(
            self.cfg.job, ann.round, self.cfg.site_id, reason, meta={"interpreter": INTERPRETER}
        )
        self.up_pub.publish(self.up.update(self.cfg.site_id), payload)
        self.sent.append(SiteRound(ann.round, selected, failed=reason))
        self._status("failed", round_=ann.round, detail=reason)

    def _status(self, state: str, *, round_: int | None = None, detail: str = "") -> None:
        samples = sum(s.samples for s in self.devices.values() if s.state != "offline")
        status = DeviceStatus(
            self.cfg.site_id,
            state,
            self.clock(),
            round=round_,
            detail=detail,
            interpreter=INTERPRETER,
            samples=samples,
            version=__version__,
        )
        self.upstream.publish(self.up.status(self.cfg.site_id), status.to_json(), retain=True)


def _weighted(results: list, attribute: str) -> float | None:
    """Sample-weighted mean of a per-device figure, None unless every device reported it."""
    values = [(getattr(r, attribute), r.samples) for r in results]
    if not values or any(v is None for v, _ in values):
        return None
    return sum(v * n for v, n in values) / sum(n for _, n in values)
