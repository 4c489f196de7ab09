"""The edge client: waits for rounds, trains the model on local data, publishes weights.

One thread does all the work. The transport (paho's network thread, or the in-memory bus
in tests) only queues messages; :meth:`EdgeClient.step` takes one from the queue, handles it
and trains when a round is ready, so training never runs inside a paho callback. Status
heartbeats go out between training batches too.

A device trains round ``r`` when it holds the announced model (by sha256) and global weights
(by ``weights_sha256``), is selected, has not completed ``r`` yet, the job is running and the
deadline has not passed. Whatever goes wrong in a round is published as a ``failure`` envelope
with its reason; bad messages are logged and dropped. Only weights leave the device.
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
    TrainingAborted,
    batch_seed,
    load_local_data,
    round_settings,
    train_local,
    update_meta,
)
from edge_client.messaging import BinaryPublisher, Inbox, Incoming
from edge_client.protocol import (
    JobControl,
    RoundAnnouncement,
    Topics,
    decode,
    encode_failure,
    encode_weights,
)
from edge_client.runtime import Runtime, load_runtime
from edge_client.signing import Verifier
from edge_client.state import NO_ROUND, ClientState
from edge_client.status import MAX_DETAIL, StatusReporter, device_will
from edge_client.transport import MqttTransport, Transport

log = logging.getLogger(__name__)

POLL_S = 0.5  # longest wait for a message in run(), so stop() and heartbeats stay prompt


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


def _key(ann: RoundAnnouncement) -> tuple[int, str, str, float]:
    """Identity of an announcement: a re-announced round (new deadline) is a new attempt."""
    return (ann.round, ann.model_sha256, ann.global_sha256, ann.deadline)


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
        self.inbox = Inbox(transport, self.topics, max_bytes=config.max_message_bytes)
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
        self.announcement: RoundAnnouncement | None = None
        self.job_state = "running"
        self.last_completed = NO_ROUND
        self._done: set[tuple] = set()  # announcements trained, failed or skipped (_key)
        self._waiting: set[int] = set()  # rounds selected for but missing the model/global
        self._said: set[tuple[str, int]] = set()  # (what, round) already logged
        self._ann_connection = 0  # transport connection over which the announcement came
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

    # -- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe, connect and publish ``online`` (``run`` and ``step`` call it)."""
        if self.status.enabled:
            return
        self._started_at = self.clock()
        for topic_filter, qos in self.topics.device_subscriptions():
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
        wait = getattr(self.transport, "wait_published", None)
        if wait is not None:
            wait(10.0)
        self.transport.close()
        log.info("device %s left job %s", self.config.device_id, self.config.job)

    def step(self, timeout: float = 0.0) -> bool:
        """Handle at most one queued message, then train if a round is ready.

        Returns True when a complete message was handled. Never raises for bad input.
        """
        self.start()
        connections = getattr(self.transport, "connections", 0)
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
    def _handle(self, item: Incoming) -> None:
        if item.kind == "model":
            if self.holdings.accept_model(item.value, raw=item.raw):
                self._model_changed()
        elif item.kind == "global":
            self.holdings.accept_global(item.value)
        elif item.kind == "round":
            self._on_round(item.value, item.raw)
        elif item.kind == "control":
            self._on_control(item.value)

    def _model_changed(self) -> None:
        self.last_completed = self.state.last_completed_round(self.holdings.model_sha256)
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
        connection = getattr(self.transport, "connections", 0)
        if self.announcement == ann:
            if connection != self._ann_connection:  # the round again after a reconnect
                self._ann_connection = connection
                self._resend_after_reconnect(ann)
            return  # a retained copy or a QoS 1 duplicate
        self.announcement = ann
        self._ann_connection = connection
        log.info(
            "round %d %s: %d device(s) selected%s, deadline in %.0f s",
            ann.round,
            ann.state,
            len(ann.selected),
            " (this one too)" if ann.is_selected(self.config.device_id) else "",
            ann.deadline - self.clock(),
        )

    def _on_control(self, ctl: JobControl) -> None:
        if ctl.job != self.config.job:
            log.warning("ignoring a control message for job %r", ctl.job)
            return
        if ctl.time < self._started_at:
            log.info("ignoring job state %r from before this client started", ctl.state)
            return
        if ctl.state == self.job_state:
            return
        self.job_state = ctl.state
        log.info("job %s is %s%s", ctl.job, ctl.state, f": {ctl.detail}" if ctl.detail else "")
        if ctl.state == "stopped" and self.config.exit_on_stop:
            self.stop()
        else:
            self.status.set("idle", detail=f"job {ctl.state}")

    # -- rounds -------------------------------------------------------------------------
    def _once(self, what: str, round_: int, message: str, *args: object) -> None:
        if (what, round_) not in self._said:
            self._said.add((what, round_))
            log.info(message, *args)

    def _maybe_train(self) -> None:
        ann = self.announcement
        if ann is None or ann.state != "open" or self._stop.is_set() or _key(ann) in self._done:
            return
        r, held = ann.round, self.holdings
        if not ann.is_selected(self.config.device_id):
            self._done.add(_key(ann))
            self._once("skip", r, "round %d: this device is not selected", r)
        elif r == self.last_completed and self._resend(ann):
            self._done.add(_key(ann))
        elif r <= self.last_completed:
            self._done.add(_key(ann))
            self._once("skip", r, "round %d: already completed (last: %d)", r, self.last_completed)
        elif self.job_state != "running":
            self._once("paused", r, "round %d: not starting, the job is %s", r, self.job_state)
        elif self.clock() >= ann.deadline:
            self._done.add(_key(ann))
            if r in self._waiting:
                missing = " and ".join(held.missing(ann)) or "the round's inputs"
                self._fail(ann, f"the deadline passed while waiting for {missing}")
            else:
                self._once("late", r, "round %d: its deadline has passed", r)
        elif not held.holds_model(ann.model_sha256) and ann.model_sha256 in held.refused:
            self._fail(ann, held.refused[ann.model_sha256])
        elif held.holds_model(ann.model_sha256) and held.data_problem is not None:
            self._fail(ann, held.data_problem)
        elif held.missing(ann):
            self._waiting.add(r)
            self._once("wait", r, "round %d: waiting for %s", r, " and ".join(held.missing(ann)))
        else:
            self._train(ann)

    def _train(self, ann: RoundAnnouncement) -> None:
        r, held = ann.round, self.holdings
        self._done.add(_key(ann))
        model, weights, norm = held.model, held.global_weights, held.normalization
        assert model is not None and weights is not None and norm is not None
        seed = (
            self.config.seed
            if self.config.seed is not None
            else batch_seed(self.config.device_id, r)
        )
        self.status.set("training", round_=r)
        try:
            settings = round_settings(ann.hyperparams, model.manifest)
            log.info(
                "round %d: training %d epoch(s) at lr %g on %d samples",
                r,
                settings.epochs,
                settings.lr,
                len(self.data),
            )
            model.set_weights(weights)
            result = train_local(
                model,
                self.data,
                settings,
                norm,
                rng=seed,
                evaluate=self.config.evaluate,
                between_batches=lambda epoch, batch, total: self._between_batches(ann),
            )
            payload = encode_weights(
                result.weights,
                kind="update",
                job=self.config.job,
                round=r,
                sender=self.config.device_id,
                samples=result.samples,
                meta=update_meta(result, ann.global_sha256, self.runtime, settings.lr),
                encoding=ann.encoding,
            )
        except EdgeFLError as exc:
            self._fail(ann, str(exc))
            return
        except Exception as exc:  # an interpreter or numpy bug: report it, keep running
            log.exception("round %d: unexpected error while training", r)
            self._fail(ann, f"internal error: {type(exc).__name__}: {exc}")
            return
        sent = self.publisher.publish(self.topics.update(self.config.device_id), payload)
        self.last_completed = r
        self.state.save_update(payload)
        self.state.save_completed_round(r, model.manifest.sha256, ann.global_sha256)
        accuracy = "" if result.accuracy is None else f", local accuracy {result.accuracy:.4f}"
        log.info(
            "round %d: update sent (%d bytes, loss %.4f%s, %.1f s)",
            r,
            sent,
            result.loss,
            accuracy,
            result.duration_s,
        )
        self.status.set("idle", round_=r, detail=f"round {r} sent")

    def _resend(self, ann: RoundAnnouncement) -> bool:
        """Publish again the update sent for ``ann.round`` from the same global weights.

        A coordinator re-announces a round (a new attempt, or after a restart) when it has not
        got enough updates; it deduplicates, so resending costs nothing but bandwidth.
        """
        saved = self.state.load_update()
        if saved is None or self.clock() >= ann.deadline:
            return False
        try:
            env = decode(saved, expect_job=self.config.job, expect_kind="update")
        except EdgeFLError as exc:
            log.warning("ignoring the saved update: %s", exc)
            return False
        same = env.round == ann.round and env.meta.get("base_sha256") == ann.global_sha256
        if not same or env.sender != self.config.device_id:
            return False
        self.publisher.publish(self.topics.update(self.config.device_id), saved)
        log.info("round %d announced again: resent the update already computed", ann.round)
        return True

    def _resend_after_reconnect(self, ann: RoundAnnouncement) -> None:
        """The announcement came again over a new connection: the update this device sent
        for the open round may have been lost with the connection (or a restarted broker),
        so send it again; the coordinator drops duplicates."""
        if ann.state == "open" and ann.round == self.last_completed:
            self._resend(ann)

    def _between_batches(self, ann: RoundAnnouncement) -> None:
        self.status.heartbeat()
        if self._stop.is_set():
            raise TrainingAborted("the client is shutting down")
        if self.clock() >= ann.deadline:
            raise TrainingAborted(f"the deadline of round {ann.round} passed during training")

    def _fail(self, ann: RoundAnnouncement, reason: str) -> None:
        round_ = ann.round
        reason = " ".join(reason.split())[:MAX_DETAIL] or "unknown error"
        self._done.add(_key(ann))
        log.error("round %d failed: %s", round_, reason)
        payload = encode_failure(
            self.config.job,
            round_,
            self.config.device_id,
            reason,
            meta={"interpreter": self.runtime.name, "interpreter_version": self.runtime.version},
        )
        self.publisher.publish(self.topics.update(self.config.device_id), payload)
        self.status.set("failed", round_=round_, detail=reason)
