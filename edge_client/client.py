"""The edge client: waits for rounds, trains the model on local data, publishes weights.

One thread does all the work. The transport (paho's network thread, or the in-memory bus
in tests) only queues messages; :meth:`EdgeClient.step` takes one from the queue, handles it
and trains when a round is ready, so training never runs inside a paho callback. Status
heartbeats go out between training batches too.

A device trains round ``r`` when it holds the announced model (by sha256) and global weights
(by ``weights_sha256``), is selected, has not completed ``r`` yet, the job is running and the
deadline has not passed: :mod:`edge_client.round_machine` holds these rules as a transition
table, :mod:`edge_client.round_work` does the training and sending. Whatever goes wrong in a
round is published as a ``failure`` envelope with its reason; bad messages are logged and
dropped. Between training batches the client looks ahead in its queue (:class:`Lookahead`)
for the announcement that closes its round (a semi-synchronous round that has its updates,
docs/round-modes.md) and then stops without sending. Only weights leave the device.

In a buffered job (FedBuff, docs/round-modes.md) an announcement names the devices holding a
training slot, each with a grant number: the device trains each grant once, from the newest
global version it holds, and keeps training while newer versions are announced; it stops
only when its grant is revoked, the job closes, or the version moves more than
``max_staleness`` ahead (then it gives the slot back with a failure report).
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable

from edge_client.config import ClientConfig
from edge_client.data import Dataset
from edge_client.errors import ConfigError, EdgeFLError, ProtocolError
from edge_client.holdings import Holdings
from edge_client.local_training import (
    RoundClosed,
    SlotGivenBack,
    StartedOver,
    TrainingAborted,
    load_local_data,
)
from edge_client.messaging import (
    AnyIncoming,
    BinaryPublisher,
    ControlReceived,
    GlobalReceived,
    Inbox,
    Lookahead,
    ModelReceived,
    RoundReceived,
    SecAggReceived,
)
from edge_client.protocol import JobControl, RoundAnnouncement, Topics
from edge_client.round_machine import (
    UNDECIDED,
    Action,
    Phase,
    RoundAttempt,
    RoundFacts,
    RoundTracker,
    Transition,
    next_transition,
)
from edge_client.round_work import RoundWork
from edge_client.runtime import Runtime, load_runtime
from edge_client.secure_round import SecureRounds, left_out
from edge_client.signing import Verifier
from edge_client.state import NO_ROUND, ClientState, Completed
from edge_client.status import StatusReporter, device_will
from edge_client.transport import Message, MqttTransport, Transport

log = logging.getLogger(__name__)

POLL_S = 0.5  # longest wait for a message in run(), so stop() and heartbeats stay prompt
LOOK_AHEAD_S = 0.25  # training looks for an announcement closing its round this often


def mqtt_transport(config: ClientConfig) -> MqttTransport:
    """A paho transport for ``config`` with the device's Last Will (retained ``offline``)."""
    client_id = f"edgefl-{config.job}-{config.device_id}"
    will = device_will(
        config.job, config.device_id, prefix=config.prefix, heartbeat_s=config.heartbeat_s
    )
    try:
        return MqttTransport(config.broker, client_id, will=will)
    except (OSError, ssl.SSLError) as exc:  # TLS files missing or unreadable
        raise ConfigError(f"cannot set up TLS for {config.broker.url}: {exc}") from exc


class EdgeClient:
    """One device in one job. ``run()`` blocks; ``step()`` handles one message (tests)."""

    def __init__(
        self,
        config: ClientConfig,
        transport: Transport,
        *,
        data: Dataset | None = None,
        runtime: Runtime | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.transport = transport
        self.clock = clock
        self.topics = Topics(config.job, config.prefix)
        # Training looks ahead in the queue for the announcement that closes its round
        self.lookahead = Lookahead(transport)
        self.inbox = Inbox(self.lookahead, self.topics, max_bytes=config.max_message_bytes)
        self._last_look = 0.0  # monotonic time training last looked ahead
        self.publisher = BinaryPublisher(transport, config.max_chunk)
        # With a trusted key, unsigned or badly signed models and announcements are refused
        self.verifier = Verifier.from_spec(config.trust_key) if config.trust_key else None
        self.runtime = runtime or load_runtime(config.runtime)  # fail fast: no interpreter
        self.state = ClientState(config.resolved_state_dir)
        self.data = data if data is not None else load_local_data(config)  # fail fast
        self.holdings = Holdings(
            self.data, self.runtime, self.state, config.num_threads, verifier=self.verifier
        )
        self.status = StatusReporter(
            transport,
            self.topics.status(config.device_id),
            device_id=config.device_id,
            interpreter=self.interpreter,
            samples=len(self.data),
            heartbeat_s=config.heartbeat_s,
            clock=clock,
        )
        self.work = RoundWork(
            config,
            data=self.data,
            runtime=self.runtime,
            holdings=self.holdings,
            state=self.state,
            publisher=self.publisher,
            topics=self.topics,
            status=self.status,
            clock=clock,
        )
        self.secure = SecureRounds(
            config.device_id,
            config.job,
            lambda env: self.publisher.publish(
                self.topics.secagg(config.device_id), env.to_bytes()
            ),
            verify=self.verifier.secagg if self.verifier else None,
        )
        self.rounds = RoundTracker(device=config.device_id)
        self._connections = 0  # transport connections seen by step()
        self._stop = threading.Event()
        self._started_at = clock()
        self.holdings.restore()
        if self.holdings.model_sha256 is not None:
            self._model_changed()
            log.info(
                "resumed from %s with model %s... (last completed round: %s)",
                self.state.directory,
                self.holdings.model_sha256[:12],
                self.last_completed if self.last_completed != NO_ROUND else "none",
            )

    @property
    def interpreter(self) -> str:
        return f"{self.runtime.name} {self.runtime.version}"

    @property
    def announcement(self) -> RoundAnnouncement | None:
        """The round announcement being handled (None before the first valid one)."""
        return self.rounds.current.announcement if self.rounds.current else None

    @property
    def job_state(self) -> str:
        return self.rounds.job_state

    @job_state.setter
    def job_state(self, state: str) -> None:
        self.rounds.job_state = state

    @property
    def last_completed(self) -> int:
        """The round this device sent last for the model it holds (NO_ROUND: none)."""
        return self.state.last_completed_round(self.holdings.model_sha256)

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe, connect and publish ``online`` (``run`` and ``step`` call it)."""
        if self.status.enabled:
            return
        self._started_at = self.clock()
        for topic_filter, qos in self.topics.device_subscriptions(self.config.device_id):
            self.transport.subscribe(topic_filter, qos)
        if not self.transport.connected:
            self.transport.connect(timeout=self.config.connect_timeout_s)
        self.status.enabled = True
        log.info(
            "device %s joined job %s (%s, %d local samples, state in %s)",
            self.config.device_id,
            self.config.job,
            self.interpreter,
            len(self.data),
            self.state.directory,
        )
        self.status.set("online", detail=f"waiting for rounds of job {self.config.job}")

    def run(self) -> int:
        """Handle messages until :meth:`stop` (or a ``stopped`` job with exit_on_stop)."""
        self.start()
        try:
            while not self._stop.is_set():
                self.step(POLL_S)
        finally:
            self.close()
        return 0

    def stop(self) -> None:
        """Ask ``run`` to return (thread- and signal-safe); aborts training between batches."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self, detail: str = "stopped") -> None:
        """Publish ``offline``, wait for outstanding publishes, disconnect."""
        if not self.status.enabled:
            return
        self.status.set("offline", detail=detail)
        self.status.enabled = False
        self.transport.wait_published(10.0)
        self.transport.close()
        log.info("device %s left job %s", self.config.device_id, self.config.job)

    def step(self, timeout: float = 0.0) -> bool:
        """Handle at most one queued message, then train if a round is ready.

        Returns True when a complete message was handled. Never raises for bad input.
        """
        self.start()
        connections = self.transport.connections
        if connections != self._connections:
            if self._connections:  # reconnected: our Last Will may have replaced the status
                self.status.publish()
            self._connections = connections
        self.status.heartbeat()
        handled = False
        try:
            item = self.inbox.get(timeout)
            if item is not None:
                self._handle(item)
                handled = True
        except EdgeFLError as exc:
            log.warning("dropped a message: %s", exc)
        except Exception:  # a bug must not take the board offline
            log.exception("unexpected error while handling a message; carrying on")
        self._maybe_train()
        return handled

    # -- incoming messages ----------------------------------------------------------------
    def _handle(self, item: AnyIncoming) -> None:
        match item:
            case ModelReceived(env, raw=raw):
                if self.holdings.accept_model(env, raw=raw):
                    self._model_changed()
            case GlobalReceived(env):
                self.holdings.accept_global(env)
            case RoundReceived(ann, raw=raw):
                self._on_round(ann, raw)
            case ControlReceived(ctl):
                self._on_control(ctl, item.raw)
            case SecAggReceived(env, raw=raw):
                self.secure.on_envelope(env, raw)

    def _model_changed(self) -> None:
        if self.holdings.data_problem is not None:
            self.status.set("failed", detail=self.holdings.data_problem)

    def _on_round(self, ann: RoundAnnouncement, raw: bytes = b"") -> None:
        if self.verifier is not None:
            try:
                ann = self.verifier.announcement(raw)
            except ProtocolError as exc:  # SignatureError, or no raw bytes to check
                log.warning("ignoring round announcement: %s", exc)
                return
        if ann.job != self.config.job:
            log.warning(
                "ignoring a round announcement for job %r on the topics of job %r",
                ann.job,
                self.config.job,
            )
            return
        connection = self.transport.connections
        current = self.rounds.current
        if current is not None and current.announcement == ann:
            if connection != current.connection:  # the round again after a reconnect
                current.connection = connection
                self._resend_after_reconnect(ann)
            return  # a retained copy or a QoS 1 duplicate
        signed = self.verifier is not None
        me = self.config.device_id
        if current is not None and _older(ann, current.announcement, me, signed=signed):
            if self.rounds.first_time("older announcement", ann.round):  # replays repeat
                self._log_older(ann, current.announcement)
            return
        self.secure.on_announcement(ann)
        reconnected = current is not None and connection != current.connection
        self.rounds.announce(ann, connection)
        if ann.buffered:
            self._log_buffered(ann, current.announcement if current else None)
            if reconnected:  # a newer announcement may still list a grant already sent
                self._resend_after_reconnect(ann)
            return
        log.info(
            "round %d %s: %d device(s) selected%s, deadline in %.0f s",
            ann.round,
            ann.state,
            len(ann.selected),
            " (this one too)" if ann.is_selected(self.config.device_id) else "",
            ann.deadline - self.clock(),
        )

    def _log_older(self, ann: RoundAnnouncement, current: RoundAnnouncement) -> None:
        me = self.config.device_id
        if not ann.buffered:
            log.warning(
                "ignoring an announcement of round %d (%s): round %d of this run was "
                "announced already (a replayed or stale copy)",
                ann.round,
                ann.state,
                current.round,
            )
            return
        log.warning(
            "ignoring an announcement of version %d (grant %s for this device): it is older "
            "than version %d (grant %s), seen already (a replayed or stale copy)",
            ann.round,
            ann.grant(me),
            current.round,
            current.grant(me),
        )

    def _log_buffered(self, ann: RoundAnnouncement, previous: RoundAnnouncement | None) -> None:
        """A line when the version, the job's state or this device's grant changes (a
        buffered job re-announces whenever a slot is granted)."""
        me = self.config.device_id
        if (
            previous is not None
            and previous.round == ann.round
            and previous.state == ann.state
            and previous.grant(me) == ann.grant(me)
        ):
            return
        grant = ann.grant(me)
        log.info(
            "buffered job: version %d %s, %d training slot(s)%s",
            ann.round,
            ann.state,
            len(ann.selected),
            f", grant {grant} for this device" if grant is not None else "",
        )

    def _on_control(self, ctl: JobControl, raw: bytes = b"") -> None:
        if self.verifier is not None:  # a forged "stopped" must not take a board out
            try:
                ctl = self.verifier.control(raw)
            except ProtocolError as exc:  # SignatureError, or no raw bytes to check
                log.warning("ignoring a control message: %s", exc)
                return
        if ctl.job != self.config.job:
            log.warning("ignoring a control message for job %r", ctl.job)
            return
        if ctl.time < self._started_at:
            log.info("ignoring job state %r from before this client started", ctl.state)
            return
        if ctl.state == self.job_state:
            return
        self.rounds.job_state = ctl.state
        log.info("job %s is %s%s", ctl.job, ctl.state, f": {ctl.detail}" if ctl.detail else "")
        if ctl.state == "stopped" and self.config.exit_on_stop:
            self.stop()
        else:
            self.status.set("idle", detail=f"job {ctl.state}")

    # -- rounds -------------------------------------------------------------------------
    def _maybe_train(self) -> None:
        """Take the current attempt one transition further (see round_machine)."""
        attempt = self.rounds.current
        if attempt is None or attempt.phase not in UNDECIDED or self._stop.is_set():
            return
        if attempt.announcement.state != "open":
            return
        facts = self._facts(attempt.announcement)
        transition = next_transition(facts)
        self.rounds.enter(attempt, transition.target)
        self._carry_out(transition, facts, attempt)

    def _facts(self, ann: RoundAnnouncement) -> RoundFacts:
        held = self.holdings
        holds_model = held.holds_model(ann.model_sha256)
        return RoundFacts(
            announcement=ann,
            selected=ann.is_selected(self.config.device_id),
            completed=self.state.has_completed(Completed.of(ann, self.config.device_id)),
            job_state=self.rounds.job_state,
            # a buffered grant has no deadline: the coordinator revokes it instead
            late=not ann.buffered and self.clock() >= ann.deadline,
            waited=ann.round in self.rounds.waited,
            refused=None if holds_model else held.refused.get(ann.model_sha256),
            data_problem=held.data_problem if holds_model else None,
            missing=tuple(held.missing(ann)),
            # a secure round never resends: nothing but its masked vector leaves the board
            load_saved_update=lambda: None if ann.secure else self.work.saved_update(ann),
        )

    def _carry_out(self, t: Transition, facts: RoundFacts, attempt: RoundAttempt) -> None:
        ann = facts.announcement
        match t.action:
            case Action.SKIP | Action.HOLD:
                if self.rounds.first_time(t.name, ann.round):
                    log.info("%s", t.says(facts))
            case Action.RESEND:
                assert facts.saved_update is not None  # the guard read it
                self.work.resend(facts.saved_update)
                log.info("%s", t.says(facts))
            case Action.FAIL:
                self.work.fail(ann, t.says(facts))
            case Action.TRAIN if ann.secure is not None:
                self._train_secure(ann)
                self.rounds.enter(attempt, Phase.DONE)
            case Action.TRAIN:
                try:
                    self.work.train(ann, lambda done: self._between_batches(ann, done))
                except StartedOver as exc:  # the same grant, from the newer version now
                    log.info("%s: %s", self.work.what(ann), exc)
                    self.status.set("idle", round_=ann.round, detail=str(exc))
                    self.rounds.announce(exc.newer, attempt.connection)
                    return
                self.rounds.enter(attempt, Phase.DONE)

    def _train_secure(self, ann: RoundAnnouncement) -> None:
        """Train, then take part in the secure round's stages with the change (never sent)."""
        trained = self.work.train_only(ann, lambda done: self._between_batches(ann, done))
        if trained is None:
            return
        held = self.holdings
        assert held.model is not None and held.global_weights is not None
        names = [w.name for w in held.model.manifest.weights]
        try:
            result = trained[0]
            self.secure.begin(ann, result.weights, held.global_weights, names, result.samples)
        except EdgeFLError as exc:  # e.g. no cryptography package, inconsistent parameters
            self.work.fail(ann, f"secure aggregation: {exc}")
            return
        self.status.set("idle", round_=ann.round, detail=f"round {ann.round}: secure stages")

    def _resend_after_reconnect(self, ann: RoundAnnouncement) -> None:
        """The announcement came again over a new connection: the update this device sent
        for the open round may have been lost with the connection (or a restarted broker),
        so send it again; the coordinator drops duplicates."""
        if (
            ann.state == "open"
            and not ann.secure
            and self.state.has_completed(Completed.of(ann, self.config.device_id))
        ):
            saved = self.work.saved_update(ann)
            if saved is not None:
                self.work.resend(saved)
                log.info(
                    "%s announced again: resent the update already computed",
                    self.work.what(ann),
                )

    def _between_batches(self, ann: RoundAnnouncement, done: float) -> None:
        self.status.heartbeat()
        if self._stop.is_set():
            raise TrainingAborted("the client is shutting down")
        if not ann.buffered and self.clock() >= ann.deadline:
            raise TrainingAborted(f"the deadline of round {ann.round} passed during training")
        if time.monotonic() - self._last_look >= LOOK_AHEAD_S:
            self._last_look = time.monotonic()
            queued = self.lookahead.look()
            if self._left_out_of_secure_round(ann, queued):
                raise RoundClosed(
                    f"round {ann.round} closed before this device finished (the secure "
                    "round's keys stage closed at its target without this device)"
                )
            closing = self._closing_announcement(ann, queued)
            if closing is not None and ann.buffered:
                self._stop_buffered(ann, closing)
            elif closing is not None:
                raise RoundClosed(
                    f"round {ann.round} closed before this device finished"
                    f" ({'a newer round opened' if closing.round > ann.round else 'the coordinator had the updates it needed'})"
                )
            self._maybe_start_over(ann, queued, done)

    def _maybe_start_over(self, ann: RoundAnnouncement, queued: list[Message], done: float) -> None:
        """Raises StartedOver when ``ann`` asks a training from the job's initial weights to
        start over (hyperparams.start_over) and a newer version that keeps this device's grant
        came out before ``done`` reached its share."""
        start_over = ann.start_over
        if start_over is None or done >= start_over.within:
            return
        newer = self._newer_version(ann, queued)
        if newer is not None:
            raise StartedOver(
                f"starting over from version {newer.round}: it came out "
                f"{100 * done:.0f} % into this training from the job's initial "
                f"weights (version {ann.round}; start_over within "
                f"{100 * start_over.within:g} %)",
                newer,
            )

    def _stop_buffered(self, ann: RoundAnnouncement, newer: RoundAnnouncement) -> None:
        """Why a buffered training from ``ann`` stops on seeing ``newer`` (raised)."""
        me = self.config.device_id
        if newer.state != "open" or not newer.buffered:
            raise RoundClosed(f"the job closed version {newer.round} while this device trained")
        if newer.grant(me) != ann.grant(me):
            raise RoundClosed(f"the coordinator revoked grant {ann.grant(me)} of this device")
        raise SlotGivenBack(
            f"version {newer.round} is {newer.round - ann.round} versions ahead of version "
            f"{ann.round} this device trains from (at most {newer.max_staleness} are taken)"
        )

    def _newer_version(
        self, ann: RoundAnnouncement, queued: list[Message]
    ) -> RoundAnnouncement | None:
        """A queued open announcement of a newer version of ``ann``'s buffered run that keeps
        this device's grant (what it would train next), if one arrived during training."""
        me = self.config.device_id
        for newer in self._queued_announcements(queued):
            same_run = (newer.job, newer.run) == (ann.job, ann.run)
            if same_run and newer.round > ann.round and not _ends_grant(ann, newer, me):
                return newer
        return None

    def _queued_announcements(self, queued: list[Message]) -> list[RoundAnnouncement]:
        """The announcements among ``queued`` that parse (and verify, with a trusted key)."""
        out = []
        for message in queued:
            if message.topic != self.topics.round or not message.payload:
                continue
            try:
                if self.verifier is not None:
                    out.append(self.verifier.announcement(message.payload))
                else:
                    out.append(RoundAnnouncement.from_json(message.payload))
            except ProtocolError:
                continue  # the inbox logs it when it gets there
        return out

    def _left_out_of_secure_round(self, ann: RoundAnnouncement, queued: list[Message]) -> bool:
        """Whether a queued key list of ``ann``'s secure round leaves this device out."""
        base = f"{self.topics.secagg_all}/"
        return ann.secure is not None and any(
            m.topic.startswith(base)
            and left_out(m.payload, ann, self.config.device_id, self.secure.verify)
            for m in queued
        )

    def _closing_announcement(
        self, ann: RoundAnnouncement, queued: list[Message]
    ) -> RoundAnnouncement | None:
        """A queued announcement that closes ``ann``'s attempt (its ``closed`` copy, or a
        newer round of the same run), if one arrived during training; it stays queued. In a
        buffered job only one that closes the job, revokes this device's grant or is more
        than max_staleness versions ahead."""
        for newer in self._queued_announcements(queued):
            if newer.job != ann.job or newer.run != ann.run:
                continue
            if ann.buffered:
                if _ends_grant(ann, newer, self.config.device_id):
                    return newer
                continue
            same_attempt = newer.round == ann.round and newer.deadline == ann.deadline
            if newer.round > ann.round or (same_attempt and newer.state != "open"):
                return newer
        return None


def _older(
    newer: RoundAnnouncement, ann: RoundAnnouncement, device: str, *, signed: bool = False
) -> bool:
    """Whether ``newer``, of the same run as ``ann``, was published before it: a replayed or
    stale copy, which would stop or idle the device for nothing.

    Synchronous rounds of one run only grow: a round's checkpoint is written before the next
    round is announced, and --resume re-runs the open round under its own number. This is
    relied on only when both were ``signed`` (verified with the trusted key, so ``ann`` is
    genuine): in an unsigned job a forged round 10^9 would otherwise make the device ignore
    every honest round after it. A run id is needed too (coordinators that predate it are
    never second-guessed).

    In a buffered run, versions only grow (also across --resume), and so do a device's
    grants; within a version, every open announcement published since ``device``'s grant has
    a deadline at least that grant's time + --round-timeout (the slot's own), every one
    before it an earlier one. (A genuine revocation with an earlier deadline than ``ann``'s is missed at
    worst: the device's update for the grant is still taken.)"""
    if (newer.job, newer.run) != (ann.job, ann.run) or newer.buffered != ann.buffered:
        return False
    if not newer.buffered:
        return signed and newer.run is not None and newer.round < ann.round
    if newer.round != ann.round:
        return newer.round < ann.round
    mine, theirs = ann.grant(device), newer.grant(device)
    if mine is None or newer.state != "open":
        return False
    if theirs is not None:
        return theirs < mine
    return newer.deadline < ann.deadline


def _ends_grant(ann: RoundAnnouncement, newer: RoundAnnouncement, device: str) -> bool:
    """Whether ``newer`` ends the buffered training of ``device``'s grant from ``ann``."""
    if _older(newer, ann, device):
        return False
    if newer.state != "open" or not newer.buffered or newer.grant(device) != ann.grant(device):
        return True
    return newer.round - ann.round > (newer.max_staleness or 0)
