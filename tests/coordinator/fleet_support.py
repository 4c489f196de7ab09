"""Scripted devices that really train (TrainableModel, mlp) and may misbehave on purpose.

Shared by the robustness, fault and fuzz tests (no tests here). A device runs in a thread
over any transport (MemoryTransport or MqttTransport): it answers every round it is
selected for with weights trained on its own data, passed through ``tamper`` (hostile
devices) and published through ``send`` (faulty links: duplicates, reordering, loss).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

import numpy as np

from edge_client.data import Dataset, Normalization
from edge_client.local_training import batch_seed, check_data_fits, round_settings, train_local
from edge_client.messaging import (
    BinaryPublisher,
    ControlReceived,
    GlobalReceived,
    Inbox,
    RoundReceived,
)
from edge_client.protocol import DeviceStatus, Topics, encode_weights
from edge_client.trainable_model import TrainableModel
from edge_client.transport import Transport

Weights = dict[str, np.ndarray]
Tamper = Callable[[Mapping[str, np.ndarray], Weights], Weights]  # (global, trained) -> sent
Send = Callable[[Transport, str, bytes], None]  # (transport, update base topic, envelope)


def sign_flip(scale: float) -> Tamper:
    """A hostile device sending global - scale * (its honest change)."""

    def tamper(g: Mapping[str, np.ndarray], w: Weights) -> Weights:
        return {k: (g[k] - scale * (w[k] - g[k])).astype(np.float32) for k in w}

    return tamper


def scaled(scale: float) -> Tamper:
    """A hostile device boosting its honest change: global + scale * change."""

    def tamper(g: Mapping[str, np.ndarray], w: Weights) -> Weights:
        return {k: (g[k] + scale * (w[k] - g[k])).astype(np.float32) for k in w}

    return tamper


class TrainingDevice(threading.Thread):
    """Trains every round it is selected for; publishes ``tamper(global, trained)``."""

    def __init__(
        self,
        transport: Transport,
        job: str,
        device: str,
        model: TrainableModel,
        data: Dataset,
        *,
        tamper: Tamper | None = None,
        send: Send | None = None,
    ) -> None:
        super().__init__(daemon=True, name=f"device-{device}")
        self.transport, self.device = transport, device
        self.topics = Topics(job)
        self.model, self.data = model, data
        self.norm: Normalization = check_data_fits(data, model.manifest)
        self.tamper, self.send = tamper, send
        self.stop_event = threading.Event()
        self.trained: list[int] = []
        self.sent: dict[int, bytes] = {}  # round -> update envelope handed to ``send``
        self.errors: list[BaseException] = []
        self.gate = threading.Event()  # cleared: trained updates wait before being sent
        self.gate.set()

    def online(self) -> None:
        status = DeviceStatus(self.device, "online", time.time(), samples=len(self.data))
        self.transport.publish(self.topics.status(self.device), status.to_json(), retain=True)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # surfaced by the test through .errors
            self.errors.append(exc)

    def _run(self) -> None:
        t = self.transport
        for topic, qos in self.topics.device_subscriptions():
            t.subscribe(topic, qos)
        if not t.connected:
            t.connect()
        self.online()
        inbox, publisher = Inbox(t, self.topics), BinaryPublisher(t)
        global_env, ann = None, None
        while not self.stop_event.is_set():
            item = inbox.get(0.05)
            if item is not None:
                match item:
                    case GlobalReceived(env):
                        global_env = env
                    case RoundReceived(announced):
                        ann = announced
                    case ControlReceived(ctl) if ctl.state == "stopped":
                        return
            if (
                ann is not None
                and global_env is not None
                and ann.state == "open"
                and ann.is_selected(self.device)
                and ann.round not in self.trained
                and global_env.weights_sha256() == ann.global_sha256
            ):
                self.trained.append(ann.round)
                payload = self._train(ann, global_env.weights())
                self.sent[ann.round] = payload
                while not self.gate.wait(0.05):
                    if self.stop_event.is_set():
                        return
                if self.send is not None:
                    self.send(t, self.topics.update(self.device), payload)
                else:
                    publisher.publish(self.topics.update(self.device), payload)

    def _train(self, ann, g: Weights) -> bytes:  # noqa: ANN001
        settings = round_settings(ann.hyperparams, self.model.manifest)
        self.model.set_weights(g)
        result = train_local(
            self.model,
            self.data,
            settings,
            self.norm,
            rng=batch_seed(self.device, ann.round),
            evaluate=False,
        )
        weights = result.weights if self.tamper is None else self.tamper(g, result.weights)
        return encode_weights(
            weights,
            kind="update",
            job=self.topics.job,
            round=ann.round,
            sender=self.device,
            samples=result.samples,
            meta={"base_sha256": ann.global_sha256, "loss": result.loss},
        )

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


def mqtt_device(
    url: str, job: str, device: str, model: TrainableModel, data: Dataset, **kw: object
) -> TrainingDevice:
    """A :class:`TrainingDevice` on a real broker (paho transport)."""
    from edge_client.transport import BrokerConfig, MqttTransport

    transport = MqttTransport(BrokerConfig.from_url(url), f"{job}-{device}")
    return TrainingDevice(transport, job, device, model, data, **kw)  # type: ignore[arg-type]
