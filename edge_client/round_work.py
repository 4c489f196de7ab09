"""What a device sends for a round: its trained update, the same update again, or a failure.

:class:`RoundWork` trains the held model on the local data from the announced global weights,
publishes the update envelope and records the round as completed in the state directory (so
a reboot resends instead of retraining). Whatever goes wrong is published as a ``failure``
envelope with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edge_client.config import ClientConfig
from edge_client.data import Dataset
from edge_client.errors import EdgeFLError
from edge_client.holdings import Holdings
from edge_client.local_training import (
    RoundClosed,
    RoundSettings,
    SlotGivenBack,
    StartedOver,
    TrainingResult,
    batch_seed,
    round_settings,
    train_local,
    update_meta,
)
from edge_client.messaging import BinaryPublisher
from edge_client.protocol import RoundAnnouncement, Topics, decode, encode_failure, encode_weights
from edge_client.runtime import Runtime
from edge_client.state import ClientState, Completed
from edge_client.status import MAX_DETAIL, StatusReporter

log = logging.getLogger(__name__)

# called after every batch with the share of the training done (0-1]; raises TrainingAborted
# to stop
BetweenBatches = Callable[[float], None]


class RoundWork:
    """Trains, resends and reports failures for one device."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        data: Dataset,
        runtime: Runtime,
        holdings: Holdings,
        state: ClientState,
        publisher: BinaryPublisher,
        topics: Topics,
        status: StatusReporter,
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.data = data
        self.runtime = runtime
        self.holdings = holdings
        self.state = state
        self.publisher = publisher
        self.status = status
        self.clock = clock
        self.update_topic = topics.update(config.device_id)

    def train(self, ann: RoundAnnouncement, between_batches: BetweenBatches) -> bool:
        """Train ``ann``'s round and send the update; False when it failed (and was reported)."""
        r = ann.round
        trained = self.train_only(ann, between_batches)
        if trained is None:
            return False
        result, settings = trained
        try:
            payload = encode_weights(
                result.weights,
                kind="update",
                job=self.config.job,
                round=r,
                sender=self.config.device_id,
                samples=result.samples,
                meta=update_meta(
                    result, ann.global_sha256, self.runtime, settings.lr, self.grant(ann)
                ),
                encoding=ann.encoding,
            )
        except EdgeFLError as exc:
            self.fail(ann, str(exc))
            return False
        sent = self.publisher.publish(self.update_topic, payload)
        self.state.save_update(payload)
        self.state.save_completed(Completed.of(ann, self.config.device_id))
        accuracy = "" if result.accuracy is None else f", local accuracy {result.accuracy:.4f}"
        log.info(
            "%s: update sent (%d bytes, loss %.4f%s, %.1f s)",
            self.what(ann),
            sent,
            result.loss,
            accuracy,
            result.duration_s,
        )
        self.status.set("idle", round_=r, detail=f"{self.what(ann)} sent")
        return True

    def grant(self, ann: RoundAnnouncement) -> int | None:
        """This device's grant in a buffered announcement (None: a synchronous round)."""
        return ann.grant(self.config.device_id) if ann.buffered else None

    def what(self, ann: RoundAnnouncement) -> str:
        """``round 3``, or ``version 3 (grant 2)`` in a buffered job: for logs and statuses."""
        grant = self.grant(ann)
        return f"round {ann.round}" if grant is None else f"version {ann.round} (grant {grant})"

    def train_only(
        self, ann: RoundAnnouncement, between_batches: BetweenBatches
    ) -> tuple[TrainingResult, RoundSettings] | None:
        """Train ``ann``'s round from the held global weights and send nothing (a secure round
        masks the result first); None when training stopped or failed (failures reported).
        Raises :class:`StartedOver` (nothing reported) for the caller to train again."""
        r, held = ann.round, self.holdings
        model, weights, norm = held.model, held.global_weights, held.normalization
        assert model is not None and weights is not None and norm is not None
        seed = (
            self.config.seed
            if self.config.seed is not None
            else batch_seed(self.config.device_id, r, self.grant(ann))
        )
        self.status.set("training", round_=r)
        try:
            settings = round_settings(ann.hyperparams, model.manifest)
            log.info(
                "%s: training %d epoch(s) at lr %g on %d samples",
                self.what(ann),
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
                between_batches=lambda epoch, batch, total: between_batches(
                    (epoch - 1 + batch / total) / settings.epochs
                ),
            )
        except StartedOver:  # buffered: the caller trains the same grant from the newer version
            raise
        except SlotGivenBack as exc:  # buffered: tell the coordinator, so it grants again
            log.info("%s: training stopped: %s", self.what(ann), exc)
            self._send_failure(ann, f"training stopped: {exc}")
            self.status.set("idle", round_=r, detail=str(exc))
            return None
        except RoundClosed as exc:  # the coordinator no longer waits: nothing to send
            log.info("round %d: training stopped: %s", r, exc)
            self.status.set("idle", round_=r, detail=str(exc))
            return None
        except EdgeFLError as exc:
            self.fail(ann, str(exc))
            return None
        except Exception as exc:  # an interpreter or numpy bug: report it, keep running
            log.exception("round %d: unexpected error while training", r)
            self.fail(ann, f"internal error: {type(exc).__name__}: {exc}")
            return None
        return result, settings

    def saved_update(self, ann: RoundAnnouncement) -> bytes | None:
        """The update this device sent for ``ann.round`` from the same global weights, if it
        is saved and the round is still open for it.

        A coordinator re-announces a round (a new attempt, or after a restart) when it has not
        got enough updates; it deduplicates, so resending costs nothing but bandwidth.
        """
        saved = self.state.load_update()
        if saved is None or (not ann.buffered and self.clock() >= ann.deadline):
            return None
        try:
            env = decode(saved, expect_job=self.config.job, expect_kind="update")
        except EdgeFLError as exc:
            log.warning("ignoring the saved update: %s", exc)
            return None
        grant = self.grant(ann)
        if grant is not None:  # a grant's update, from whichever version was newest then
            same = env.meta.get("grant") == grant
        else:
            same = env.round == ann.round and env.meta.get("base_sha256") == ann.global_sha256
        if not same or env.sender != self.config.device_id:
            return None
        return saved

    def resend(self, payload: bytes) -> None:
        self.publisher.publish(self.update_topic, payload)

    def fail(self, ann: RoundAnnouncement, reason: str) -> None:
        """Publish a failure envelope for ``ann``'s round and a ``failed`` status."""
        reason = " ".join(reason.split())[:MAX_DETAIL] or "unknown error"
        log.error("%s failed: %s", self.what(ann), reason)
        self._send_failure(ann, reason)
        self.status.set("failed", round_=ann.round, detail=reason)

    def _send_failure(self, ann: RoundAnnouncement, reason: str) -> None:
        meta: dict[str, object] = {
            "interpreter": self.runtime.name,
            "interpreter_version": self.runtime.version,
        }
        grant = self.grant(ann)
        if grant is not None:
            meta["grant"] = grant  # buffered: the slot this failure gives back
        payload = encode_failure(
            self.config.job,
            ann.round,
            self.config.device_id,
            " ".join(reason.split())[:MAX_DETAIL] or "unknown error",
            meta=meta,
        )
        self.publisher.publish(self.update_topic, payload)
