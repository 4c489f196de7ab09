"""The coordinator's round loop: announce, collect, aggregate, evaluate, checkpoint.

All work happens on the caller's thread; MQTT messages arrive through the transport's
queue (``Inbox``), never in paho callbacks. The run directory is the system of record:
``run()`` continues from its last checkpoint, so a restarted coordinator re-runs only
the round that was open when it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from coordinator.aggregation import Strategy
from coordinator.config import JobConfig
from coordinator.evaluation import Evaluator
from coordinator.influence import InfluenceBounds
from coordinator.late import LateUpdates
from coordinator.rounds import RoundCollector
from coordinator.run_dir import RunDir, RunState
from coordinator.selection import round_size, select_devices
from coordinator.strategies import STRATEGIES, build_strategy
from edge_client.errors import EdgeFLError, ProtocolError
from edge_client.manifest import Manifest
from edge_client.messaging import (
    AnyIncoming,
    BinaryPublisher,
    ControlReceived,
    Inbox,
    StatusReceived,
    UpdateReceived,
)
from edge_client.protocol import (
    DeviceStatus,
    JobControl,
    RoundAnnouncement,
    RoundMetrics,
    Topics,
    decode,
    encode_model,
    encode_weights,
)
from edge_client.signing import Signer, Verifier
from edge_client.transport import Transport

log = logging.getLogger(__name__)

SENDER = "coordinator"
POLL_S = 0.2  # inbox poll interval while waiting
MAX_PENDING = 1000  # updates held while no round is open (late ones, handled when one opens)
_OFFLINE = DeviceStatus("unknown", "offline", 0.0)


UNSIGNED_WARNING = (
    "UNSIGNED JOB: the model and the round announcements carry no signature, so boards "
    "cannot tell them from forged ones (anyone who can publish on the job's topics can feed "
    "boards a model or rounds). Run without --unsigned to sign with the job's key."
)


class JobError(EdgeFLError):
    """The job cannot continue (too few devices or results, operator stop...)."""


@dataclass(frozen=True)
class ModelBundle:
    tflite: bytes
    manifest: Manifest
    initial_weights: dict[str, np.ndarray]


class Coordinator:
    def __init__(
        self,
        config: JobConfig,
        transport: Transport,
        model: ModelBundle,
        run_dir: RunDir,
        evaluator: Evaluator | None = None,
        *,
        on_round: Callable[[RoundMetrics], None] | None = None,
        strategy: Strategy | None = None,
    ) -> None:
        self.cfg = config
        self.transport = transport
        self.model = model
        self.run_dir = run_dir
        self.evaluator = evaluator
        self.on_round = on_round or (lambda metrics: None)
        self.topics = Topics(config.job, config.prefix)
        self.publisher = BinaryPublisher(transport, config.max_chunk)
        self.inbox = Inbox(transport, self.topics)
        self.strategy = strategy or build_strategy(config)
        self.bounds = InfluenceBounds(
            check_samples=not config.no_sample_check,
            max_weight_share=config.max_weight_share,
            max_change_ratio=config.max_change_ratio,
        )
        self.signer = Signer.from_file(config.signing_key) if config.signing_key else None
        self.run_id = run_dir.run_id()  # in every announcement: boards key progress on it
        # a signing coordinator obeys only control messages signed with its own key
        self.verifier = self.signer.verifier() if self.signer else None
        self.devices: dict[str, DeviceStatus] = {}
        self.late = LateUpdates(config.late_updates, config.max_staleness)
        self._pending: list[UpdateReceived] = []  # arrived while no round was open
        self.started = time.time()
        self.control_state = "running"
        self._control = JobControl(config.job, "running", self.started)  # last published
        self._pause_deadline: float | None = None  # time.monotonic() when a pause ends
        # What a broker restart loses and the coordinator republishes (retained): the model
        # envelope, the current global weights and the last announcement, as published.
        self._retained: dict[str, bytes] = {}
        self._connections = transport.connections
        if STRATEGIES[config.strategy].needs_prox_mu and not model.manifest.hyperparameters.get(
            "prox_mu"
        ):
            raise JobError(f"strategy {config.strategy} needs a model exported with --prox-mu > 0")

    # -- presence and control ---------------------------------------------------------------
    def online(self) -> set[str]:
        return {d for d, s in self.devices.items() if s.state != "offline"}

    def _handle(self, item: AnyIncoming, collector: RoundCollector | None = None) -> None:
        match item:
            case StatusReceived(status, device) if device:
                previous = self.devices.get(device)
                self.devices[device] = status
                if previous is None or (previous.state == "offline") != (status.state == "offline"):
                    log.info("device %s is %s", device, status.state)
                if status.state == "offline" and collector is not None and collector.drop(device):
                    log.warning(
                        "round %d: selected device %s went offline (%s); not waiting for it",
                        collector.round,
                        device,
                        status.detail or "its status is offline",
                    )
            case UpdateReceived(envelope, device, size) if device:
                if collector is None:
                    if len(self._pending) < MAX_PENDING:
                        self._pending.append(item)  # handled once the next round opens
                    else:
                        log.warning("update from %s outside a round ignored", device)
                    return
                if envelope.job == self.cfg.job and envelope.round < collector.round:
                    self.late.offer(envelope, device, size, collector)
                    return
                accepted = collector.offer(envelope, device, size)
                if (
                    accepted
                    and self.cfg.eval_devices
                    and self.evaluator
                    and envelope.kind == "update"
                ):
                    score = self.evaluator.evaluate(envelope.weights())
                    collector.results[device] = dataclasses.replace(
                        collector.results[device], test_accuracy=score.accuracy
                    )
            case ControlReceived(ctl):
                self._on_control(ctl, item.raw)

    def _on_control(self, ctl: JobControl, raw: bytes) -> None:
        """An operator's decision: obeyed only if it names this job and, in a signed job,
        is signed with the job's key; anything else is refused and the job's own state is
        published again (a forged retained message must not stay on the broker)."""
        problem = _control_problem(ctl, raw, self.cfg.job, self.verifier)
        if problem is not None:
            log.warning("ignoring a control message %s", problem)
            self._republish_control()
            return
        if ctl.time <= self.started or ctl.state == self.control_state:
            return  # a previous run's, or our own echo
        log.warning(
            "operator set the job %s%s%s",
            ctl.state,
            f" by {ctl.by}" if ctl.by else "",
            f" ({ctl.detail})" if ctl.detail else "",
        )
        self._pause_deadline, until = None, None
        if ctl.state == "paused" and self.cfg.max_pause > 0:
            self._pause_deadline = time.monotonic() + self.cfg.max_pause
            until = time.time() + self.cfg.max_pause
        # the decision becomes the job's published state (with a pause's end, so the
        # dashboard shows who paused, when, and until when)
        self._publish_control(ctl.state, ctl.detail, by=ctl.by, at=ctl.time, until=until)

    def _end_pause_after_limit(self) -> None:
        if self._pause_deadline is None or time.monotonic() < self._pause_deadline:
            return
        self._pause_deadline = None
        if self.control_state != "paused":
            return
        who = self._control.by or "an operator"
        log.warning(
            "resuming the job: paused by %s for longer than --max-pause %.0f s",
            who,
            self.cfg.max_pause,
        )
        detail = f"resumed after the pause by {who} reached max-pause ({self.cfg.max_pause:g} s)"
        self._publish_control("running", detail[:4096], by=SENDER)

    def _pump(self, timeout: float, collector: RoundCollector | None = None) -> None:
        self._end_pause_after_limit()
        self._republish_after_reconnect()
        item = self.inbox.get(timeout)
        if item is not None:
            self._handle(item, collector)

    def _republish_after_reconnect(self) -> None:
        """After a reconnect (the broker may have restarted and lost every retained
        message) publish again the control state, model, global weights and announcement."""
        connections = self.transport.connections
        if connections == self._connections:
            return
        self._connections = connections
        if not self._retained:
            return
        log.warning("reconnected to the broker: republishing the job's retained messages")
        self._republish_control()
        for base in (self.topics.model, self.topics.global_weights):
            if base in self._retained:
                self.publisher.publish(base, self._retained[base], retain=True)
        if self.topics.round in self._retained:
            self.transport.publish(
                self.topics.round, self._retained[self.topics.round], retain=True
            )

    def _publish_announcement(self, announcement: RoundAnnouncement) -> None:
        data = self.signer.announcement(announcement) if self.signer else announcement.to_json()
        self._retained[self.topics.round] = data
        self.transport.publish(self.topics.round, data, retain=True)

    def _publish_control(
        self,
        state: str,
        detail: str = "",
        *,
        by: str | None = None,
        at: float | None = None,
        until: float | None = None,
    ) -> None:
        """Publish the job's state, retained (signed in a signed job); ``by`` None: ours."""
        at = time.time() if at is None else at
        signed = self.signer is not None  # says whether boards can authenticate the job
        self._control = JobControl(self.cfg.job, state, at, detail, by, until, signed=signed)
        self.control_state = state
        self._republish_control()

    def _republish_control(self) -> None:
        msg = self._control
        data = self.signer.control(msg) if self.signer else msg.to_json()
        self.transport.publish(self.topics.control, data, retain=True)

    # -- the job ---------------------------------------------------------------------------
    def run(self, resume: bool = False) -> RunState:
        state = self.run_dir.load_state(self.cfg.job)
        if state.finished and state.round >= self.cfg.rounds:
            log.info("job %s already finished %d rounds", self.cfg.job, state.round)
            return state
        if state.round and not resume:
            raise JobError(
                f"{self.run_dir.path} holds {state.round} completed rounds: use --resume"
            )
        if state.round:
            weights, strategy_state = self.run_dir.load_weights(state)
            self.strategy.load_state(strategy_state)
            log.info(
                "resuming job %s (run %s) after round %d", self.cfg.job, self.run_id, state.round
            )
        else:
            weights = dict(self.model.initial_weights)
            log.info("job %s: run %s", self.cfg.job, self.run_id)
        off = (
            not self.bounds.check_samples
            or not self.bounds.max_weight_share
            or not self.bounds.max_change_ratio
        )
        (log.warning if off else log.info)("%s", self.bounds.describe())
        for topic, qos in self.topics.coordinator_subscriptions():
            self.transport.subscribe(topic, qos)
        self._publish_control("running")
        manifest = self.model.manifest.to_dict()
        if self.signer is not None:
            model_payload = self.signer.model_envelope(
                self.model.tflite, manifest, job=self.cfg.job, sender=SENDER
            )
            log.info("signing the model and announcements with key %s", self.signer.key_id)
        else:
            model_payload = encode_model(
                self.model.tflite, manifest, job=self.cfg.job, sender=SENDER
            )
            log.warning(UNSIGNED_WARNING)
        self._retained[self.topics.model] = model_payload
        self.publisher.publish(self.topics.model, model_payload, retain=True)
        for round_ in range(state.round + 1, self.cfg.rounds + 1):
            self._wait_while_paused()
            if self.control_state == "stopped":
                raise JobError(f"stopped by the operator before round {round_}")
            weights, metrics = self.run_round(round_, weights)
            state = self.run_dir.save_round(state, round_, weights, self.strategy.state(), metrics)
            self.transport.publish(self.topics.metrics, metrics.to_json(), retain=True)
            self.on_round(metrics)
        state = self.run_dir.mark_finished(state)
        self._publish_final(weights, state.round)
        self._publish_control("stopped", "finished")
        return state

    def _publish_final(self, weights: Mapping[str, np.ndarray], last_round: int) -> None:
        """The trained model stays on the broker: retained global weights of the round that
        would come next (no announcement follows, so no device trains from them)."""
        payload = encode_weights(
            weights,
            kind="global",
            job=self.cfg.job,
            round=last_round + 1,
            sender=SENDER,
            encoding=self.cfg.encoding,
            meta={"final": True},
        )
        self.publisher.publish(self.topics.global_weights, payload, retain=True)

    def _wait_while_paused(self) -> None:
        announced = False
        while self.control_state == "paused":
            if not announced:
                log.warning("job paused: waiting for resume")
                announced = True
            self._pump(POLL_S)

    def wait_for_devices(self) -> set[str]:
        need, deadline = self.cfg.min_devices, time.monotonic() + self.cfg.wait_timeout
        last_note = 0.0
        while True:
            while len(self.online()) < need:
                if time.monotonic() > deadline:
                    raise JobError(
                        f"only {len(self.online())} of {need} devices online after {self.cfg.wait_timeout:.0f} s: "
                        "start more boards or lower --min-devices"
                    )
                if time.monotonic() - last_note > 10:
                    log.info("waiting for devices: %d of %d online", len(self.online()), need)
                    last_note = time.monotonic()
                self._pump(POLL_S)
            # Statuses already queued count too: after a restart the broker may deliver a
            # device's old "online" and then its "offline"; only what holds after them counts.
            self._drain()
            if len(self.online()) >= need:
                return self.online()
            log.info("queued statuses took devices offline: waiting for %d online", need)

    def _drain(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            item = self.inbox.get(0)
            if item is None and not self.inbox.pending():
                return
            if item is not None:
                self._handle(item)

    def run_round(
        self, round_: int, weights: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], RoundMetrics]:
        t0 = time.time()
        previous: RoundCollector | None = None
        for attempt in range(self.cfg.max_retries + 1):
            collector, bytes_down = self._collect(round_, weights, attempt, previous)
            if len(collector.accepted) >= self.cfg.min_results:
                break
            previous = collector
            log.warning(
                "round %d attempt %d closed with %d of %d required updates",
                round_,
                attempt + 1,
                len(collector.accepted),
                self.cfg.min_results,
            )
        else:
            raise JobError(
                f"round {round_} got fewer than {self.cfg.min_results} updates in {self.cfg.max_retries + 1} "
                "attempts: check the devices' status and logs, or lower --min-results"
            )
        new_weights = self.strategy.finish()
        self.late.closed(collector)
        metrics = self._metrics(round_, collector, bytes_down, time.time() - t0, new_weights)
        return new_weights, metrics

    def _collect(
        self,
        round_: int,
        weights: Mapping[str, np.ndarray],
        attempt: int,
        previous: RoundCollector | None = None,
    ) -> tuple[RoundCollector, int]:
        self._drain()  # an operator's pause or stop that arrived since the last round
        self._wait_while_paused()
        if self.control_state == "stopped":
            raise JobError(f"stopped by the operator before round {round_} opened")
        selected: tuple[str, ...] = ()
        online: set[str] = set()
        while not selected:  # a round never opens with no device selected
            online = self.wait_for_devices()
            selected = select_devices(
                online,
                round_,
                fraction=self.cfg.fraction,
                k=self.cfg.clients_per_round,
                seed=self.cfg.seed,
                over_select=self.cfg.over_select,
            )
        target = 0
        if self.cfg.over_select > 1:
            needed = round_size(
                len(online), fraction=self.cfg.fraction, k=self.cfg.clients_per_round
            )
            target = max(needed, self.cfg.min_results) if needed < len(selected) else 0
        payload = encode_weights(
            weights,
            kind="global",
            job=self.cfg.job,
            round=round_,
            sender=SENDER,
            encoding=self.cfg.encoding,
        )
        global_sha = decode(payload).weights_sha256()  # what devices will decode and train from
        self._retained[self.topics.global_weights] = payload
        sent = self.publisher.publish(self.topics.global_weights, payload, retain=True)
        deadline = time.time() + self.cfg.round_timeout
        announcement = RoundAnnouncement(
            job=self.cfg.job,
            round=round_,
            deadline=deadline,
            selected=selected,
            hyperparams={"epochs": self.cfg.epochs, "lr": self.cfg.lr, "attempt": attempt},
            model_sha256=self.model.manifest.sha256,
            global_sha256=global_sha,
            encoding=self.cfg.encoding,
            run=self.run_id,
        )
        self._publish_announcement(announcement)
        log.info(
            "round %d: %d devices selected%s, deadline in %.0f s",
            round_,
            len(selected),
            f" (closes at {target} updates)" if target else "",
            self.cfg.round_timeout,
        )
        collector = RoundCollector.open(
            self.cfg.job,
            round_,
            selected,
            global_sha,
            self.model.manifest,
            self.strategy,
            weights,
            self.cfg.max_update_norm,
            bounds=self.bounds,
            announced={d: s.samples for d, s in self.devices.items() if s.samples > 0},
        )
        collector.target = target
        if previous is not None:  # late updates an earlier attempt of this round handled
            self._carry_late(previous, collector)
        for device in selected:  # went offline between selection and announcement
            if self.devices.get(device, _OFFLINE).state == "offline":
                collector.drop(device)
        pending, self._pending = self._pending, []
        for item in pending:  # arrived while no round was open (kept if it closed already)
            if collector.complete():
                self._pending.append(item)
            else:
                self._handle(item, collector)
        while not collector.complete() and time.time() < deadline:
            self._pump(POLL_S, collector)
            if self.control_state == "stopped":
                break
        if not collector.complete():
            missing = sorted(collector.selected - collector.replied - collector.dropped)
            log.warning("round %d closed at its deadline without %s", round_, ", ".join(missing))
        collector.cancelled = collector.still_training()
        if collector.cancelled:
            log.info(
                "round %d reached its %d updates: closed without waiting for %s",
                round_,
                target,
                ", ".join(sorted(collector.cancelled)),
            )
        if collector.dropped:
            log.info(
                "round %d: not waited for %s (offline)",
                round_,
                ", ".join(sorted(collector.dropped)),
            )
        self._publish_announcement(dataclasses.replace(announcement, state="closed"))
        collector.close()  # round-wide bounds decide, the held updates are folded
        return collector, sent * len(selected)

    @staticmethod
    def _carry_late(previous: RoundCollector, collector: RoundCollector) -> None:
        """The earlier attempt got too few updates and its aggregate is dropped: late updates
        it folded are lost with it (counted as wasted), those it discarded stay counted."""
        collector.late_discarded.update(previous.late_discarded)
        collector.wasted += previous.wasted
        for device, late_round in previous.late_folded.items():
            collector.late_discarded[device] = (
                f"late update for round {late_round} was folded into an earlier attempt "
                f"of round {previous.round}, which got too few updates"
            )
            collector.wasted += 1

    def _metrics(
        self,
        round_: int,
        c: RoundCollector,
        bytes_down: int,
        duration: float,
        weights: Mapping[str, np.ndarray],
    ) -> RoundMetrics:
        accuracy = loss = None
        if self.evaluator is not None and (
            round_ % self.cfg.eval_every == 0 or round_ == self.cfg.rounds
        ):
            result = self.evaluator.evaluate(weights)
            accuracy, loss = result.accuracy, result.loss
        return RoundMetrics(
            job=self.cfg.job,
            round=round_,
            accuracy=accuracy,
            loss=loss,
            participants=tuple(sorted(r.device for r in c.accepted)),
            bytes_up=c.bytes_up,
            bytes_down=bytes_down,
            duration_s=round(duration, 3),
            devices=tuple(c.results.values()),
            failed=tuple(sorted(r.device for r in c.results.values() if r.failed)),
            samples=sum(r.samples for r in c.accepted),
            selected=tuple(sorted(c.selected)),
            rejected={r.device: r.reason for r in c.rejections if r.counted},
            updates_aggregated=c.aggregated,
            time=time.time(),
            dropped=tuple(sorted(c.dropped - c.replied)),
            rejections=tuple(c.rejections),
            contested=tuple(sorted(c.contested & {r.device for r in c.accepted})),
            bytes_rejected=c.bytes_rejected,
            target_updates=c.target,
            cancelled=tuple(sorted(c.cancelled)),
            wasted=c.wasted,
            late_discarded=dict(c.late_discarded),
            late_folded=dict(c.late_folded),
        )


def _control_problem(
    ctl: JobControl, raw: bytes, job: str, verifier: Verifier | None
) -> str | None:
    """Why a control message must not steer ``job`` (None: it may)."""
    if ctl.job != job:
        return f"for job {ctl.job!r} on the control topic of job {job!r}"
    if verifier is not None:
        try:
            verifier.control(raw)
        except ProtocolError as exc:  # SignatureError: unsigned, another key, tampered
            return f"in signed job {job!r}: {exc}"
    return None
