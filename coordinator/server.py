"""The coordinator's job loop: publish the model, run rounds, checkpoint, publish metrics.

All work happens on the caller's thread; MQTT messages arrive through the transport's
queue (``Inbox``), never in paho callbacks. The run directory is the system of record:
``run()`` continues from its last checkpoint, so a restarted coordinator re-runs only
the round that was open when it stopped.

The ``Coordinator`` holds the job: its devices' presence, the inbox pump, the retained
messages (republished after a broker restart) and the loop over rounds. A round itself is
the round mode's (``self.rounds``, see ``round_mode.py``; ``sync_rounds.py`` is the
synchronous one); the control topic is ``control_channel.py``'s.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from coordinator.aggregation import Strategy
from coordinator.buffered_rounds import BufferedRounds
from coordinator.config import JobConfig
from coordinator.control_channel import ControlChannel
from coordinator.evaluation import Evaluator
from coordinator.influence import InfluenceBounds
from coordinator.late import LateUpdates
from coordinator.round_mode import POLL_S, SENDER, JobError, RoundMode
from coordinator.rounds import RoundCollector
from coordinator.run_dir import RunDir, RunState
from coordinator.scoring import ScoredMetrics, Scorer
from coordinator.secure_rounds import SecureRounds
from coordinator.strategies import STRATEGIES, build_strategy
from coordinator.sync_rounds import SyncRounds
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
    RoundAnnouncement,
    RoundMetrics,
    Topics,
    encode_model,
    encode_weights,
)
from edge_client.signing import Signer
from edge_client.trainable_model import TrainableModel
from edge_client.transport import Transport

__all__ = [
    "POLL_S",
    "SENDER",
    "UNSIGNED_WARNING",
    "Coordinator",
    "JobError",
    "ModelBundle",
]

log = logging.getLogger(__name__)

MAX_PENDING = 1000  # updates held while no round is open (late ones, handled when one opens)

UNSIGNED_WARNING = (
    "UNSIGNED JOB: the model and the round announcements carry no signature, so boards "
    "cannot tell them from forged ones (anyone who can publish on the job's topics can feed "
    "boards a model or rounds). Run without --unsigned to sign with the job's key."
)


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
        self.control = ControlChannel(config, transport, self.topics, self.signer)
        self.devices: dict[str, DeviceStatus] = {}
        self.late = LateUpdates(
            config.late_updates,
            config.staleness_limit,
            config.staleness_exponent,
            config.stale_changes,
        )
        self._pending: list[UpdateReceived] = []  # arrived while no round was open
        self.scores: ScoredMetrics | None = None  # rounds' metrics waiting for their scores
        self._state = RunState(config.job)  # the run directory's state, as last saved
        # What a broker restart loses and the coordinator republishes (retained): the model
        # envelope, the current global weights and the last announcement, as published.
        self._retained: dict[str, bytes] = {}
        self._connections = transport.connections
        if STRATEGIES[config.strategy].needs_prox_mu and not model.manifest.hyperparameters.get(
            "prox_mu"
        ):
            raise JobError(f"strategy {config.strategy} needs a model exported with --prox-mu > 0")
        # The round mode: how one round runs (round_mode.RoundMode).
        self.rounds: RoundMode
        if config.secure_aggregation:
            self.rounds = SecureRounds(self)
        elif config.buffered:
            self.rounds = BufferedRounds(self)
        else:
            self.rounds = SyncRounds(self)

    @property
    def control_state(self) -> str:
        """running, paused or stopped: the job's state, as last published."""
        return self.control.state

    @control_state.setter
    def control_state(self, state: str) -> None:
        self.control.state = state

    # -- round-mode services: presence, the inbox pump, retained publishing ----------------
    def online(self) -> set[str]:
        return {d for d, s in self.devices.items() if s.state != "offline"}

    def wait_for_devices(self) -> set[str]:
        need, deadline = self.cfg.min_devices, time.monotonic() + self.cfg.wait_timeout
        last_note = 0.0
        while True:
            while len(self.online()) < need:
                if self.control_state == "stopped":  # an operator gave up on this job
                    raise JobError("stopped by the operator while waiting for devices")
                if time.monotonic() > deadline:
                    raise JobError(
                        f"only {len(self.online())} of {need} devices online after {self.cfg.wait_timeout:.0f} s: "
                        "start more boards or lower --min-devices"
                    )
                if time.monotonic() - last_note > 10:
                    log.info("waiting for devices: %d of %d online", len(self.online()), need)
                    last_note = time.monotonic()
                self.pump(POLL_S)
            # Statuses already queued count too: after a restart the broker may deliver a
            # device's old "online" and then its "offline"; only what holds after them counts.
            self.drain()
            if len(self.online()) >= need:
                return self.online()
            log.info("queued statuses took devices offline: waiting for %d online", need)

    def pump(
        self,
        timeout: float,
        collector: RoundCollector | None = None,
        on_item: Callable[[AnyIncoming], bool] | None = None,
    ) -> None:
        """Wait up to ``timeout`` for one message and handle it (updates go to ``collector``,
        the open round's; a round mode's ``on_item`` sees it first and returns True when it
        took it); also ends an overlong pause and republishes after a reconnect."""
        self.control.end_pause_after_limit()
        self._republish_after_reconnect()
        if self.scores is not None:
            self.scores.collect()  # scores that came back: their rounds' metrics go out
        item = self.inbox.get(timeout)
        if item is not None and not (on_item is not None and on_item(item)):
            self._handle(item, collector)

    def drain(self, limit: int = 10_000) -> None:
        """Handle every message already queued (no round open)."""
        for _ in range(limit):
            item = self.inbox.get(0)
            if item is None and not self.inbox.pending():
                return
            if item is not None:
                self._handle(item)

    def handle_pending(self, collector: RoundCollector) -> None:
        """Offer the just-opened round the updates that arrived while none was open (those
        left when it completes are kept for the next)."""
        pending, self._pending = self._pending, []
        for item in pending:
            if collector.complete():
                self._pending.append(item)
            else:
                self._handle(item, collector)

    def take_pending(self) -> list[UpdateReceived]:
        """The updates that arrived while no collector was open, in order (a round mode
        that collects them itself: buffered_rounds.py)."""
        pending, self._pending = self._pending, []
        return pending

    def wait_while_paused(self) -> None:
        announced = False
        while self.control.state == "paused":
            if not announced:
                log.warning("job paused: waiting for resume")
                announced = True
            self.pump(POLL_S)

    def publish_global(self, payload: bytes) -> int:
        """Publish a global-weights envelope, retained (and kept for republishing); the
        bytes sent."""
        self._retained[self.topics.global_weights] = payload
        return self.publisher.publish(self.topics.global_weights, payload, retain=True)

    def publish_announcement(self, announcement: RoundAnnouncement) -> None:
        """Publish a round announcement, retained (and kept), signed in a signed job."""
        data = self.signer.announcement(announcement) if self.signer else announcement.to_json()
        self._retained[self.topics.round] = data
        self.transport.publish(self.topics.round, data, retain=True)

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
                self.control.on_control(ctl, item.raw)

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
        self.control.republish()
        for base in (self.topics.model, self.topics.global_weights):
            if base in self._retained:
                self.publisher.publish(base, self._retained[base], retain=True)
        if self.topics.round in self._retained:
            self.transport.publish(
                self.topics.round, self._retained[self.topics.round], retain=True
            )

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
        if not self.cfg.secure_aggregation:  # secure rounds say what they bound instead
            (log.warning if off else log.info)("%s", self.bounds.describe())
        for topic, qos in self.topics.coordinator_subscriptions():
            self.transport.subscribe(topic, qos)
        self.control.publish("running")
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
        self._state = state
        scores = self.scores = ScoredMetrics(self._scorer(), self._score_due, self._release)
        try:
            self._score_again_after_resume(state, weights)
            for round_ in range(state.round + 1, self.cfg.rounds + 1):
                self.wait_while_paused()
                if self.control_state == "stopped":
                    raise JobError(f"stopped by the operator before round {round_}")
                weights, metrics = self.rounds.run_round(round_, weights)
                self._state = self.run_dir.save_round(
                    self._state, round_, weights, self.strategy.state(), metrics
                )
                scores.add(metrics, weights)  # scored on the side: the next round starts now
        finally:
            scores.finish()
            if scores.scorer is not None:
                scores.scorer.close()
        state = self.run_dir.mark_finished(self._state)
        self._publish_final(weights, state.round)
        self.control.publish("stopped", "finished")
        return state

    # -- scores of the global models (coordinator/scoring.py) --------------------------------
    def _scorer(self) -> Scorer | None:
        """A worker with its own interpreter over the same test set (None: no test set)."""
        if self.evaluator is None:
            return None
        twin = self.evaluator.twin(TrainableModel(self.model.tflite, self.model.manifest))
        return Scorer(twin)

    def _score_due(self, round_: int) -> bool:
        return round_ % self.cfg.eval_every == 0 or round_ == self.cfg.rounds

    def _release(self, metrics: RoundMetrics) -> None:
        """A round's metrics are complete: record its score, publish them, tell ``on_round``."""
        if metrics.accuracy is not None:
            self._state = self.run_dir.record_metrics(self._state, metrics)
        self.transport.publish(self.topics.metrics, metrics.to_json(), retain=True)
        self.on_round(metrics)

    def _score_again_after_resume(self, state: RunState, weights: Mapping[str, np.ndarray]) -> None:
        """The checkpointed round whose score a kill -9 lost: score it now (once, inline)."""
        last = state.history[-1] if state.history else None
        if (
            self.evaluator is None
            or last is None
            or last.round != state.round
            or last.accuracy is not None
            or not self._score_due(last.round)
        ):
            return
        result = self.evaluator.evaluate(weights)
        scored = dataclasses.replace(last, accuracy=result.accuracy, loss=result.loss)
        self._state = self.run_dir.record_metrics(state, scored)
        log.info("round %d scored again after the resume: %.4f", last.round, result.accuracy)

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
