"""Helpers shared by the edge client tests: a scripted coordinator, data, update decoding.

(Named test_client_*.py so the module name stays unique; it holds no tests.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_client.client import EdgeClient
from edge_client.config import ClientConfig
from edge_client.data import Dataset
from edge_client.manifest import Manifest
from edge_client.protocol import (
    DeviceStatus,
    Envelope,
    JobControl,
    Reassembler,
    RoundAnnouncement,
    Topics,
    chunked,
    decode,
    encode_model,
    encode_weights,
    weights_sha256,
)
from edge_client.runtime import Runtime, load_runtime
from edge_client.trainable_model import TrainableModel
from edge_client.transport import BrokerConfig, MemoryBus, MemoryTransport

Publish = Callable[[str, bytes, bool], None]  # (topic, payload, retain)


@dataclass
class ModelFiles:
    tflite: bytes
    manifest: Manifest
    initial: dict[str, np.ndarray] = field(repr=False)

    @classmethod
    def load(cls, directory: Path) -> ModelFiles:
        tflite = (directory / "model.tflite").read_bytes()
        manifest = Manifest.load(directory / "manifest.json")
        initial = TrainableModel(tflite, manifest).get_weights()
        return cls(tflite, manifest, initial)

    def shifted(self, delta: float) -> dict[str, np.ndarray]:
        """Other global weights of the same shapes."""
        return {k: (v + np.float32(delta)).astype(np.float32) for k, v in self.initial.items()}


class ScriptedCoordinator:
    """Publishes what the real coordinator would, through any ``publish`` function."""

    def __init__(self, publish: Publish, job: str = "demo", max_chunk: int = 300_000) -> None:
        self.publish = publish
        self.job = job
        self.topics = Topics(job)
        self.max_chunk = max_chunk

    def binary(self, base: str, payload: bytes, retain: bool = True) -> None:
        for topic, chunk in chunked(base, payload, self.max_chunk):
            self.publish(topic, chunk, retain)

    def model(self, tflite: bytes, manifest: dict[str, Any] | Manifest) -> None:
        meta = manifest.to_dict() if isinstance(manifest, Manifest) else manifest
        self.binary(
            self.topics.model, encode_model(tflite, meta, job=self.job, sender="coordinator")
        )

    def global_weights(self, weights: dict[str, np.ndarray], round_: int = 1) -> str:
        payload = encode_weights(
            weights, kind="global", job=self.job, round=round_, sender="coordinator"
        )
        self.binary(self.topics.global_weights, payload)
        return weights_sha256(weights)

    def announce(
        self,
        round_: int,
        selected: Iterable[str],
        *,
        model_sha256: str,
        global_sha256: str,
        deadline: float | None = None,
        job: str | None = None,
        run: str | None = None,
        **hyperparams: Any,
    ) -> RoundAnnouncement:
        ann = RoundAnnouncement(
            job=job or self.job,
            round=round_,
            deadline=deadline if deadline is not None else time.time() + 120,
            selected=tuple(selected),
            hyperparams={"epochs": 1, "lr": 0.05, **hyperparams},
            model_sha256=model_sha256,
            global_sha256=global_sha256,
            run=run,
        )
        self.publish(self.topics.round, ann.to_json(), True)
        return ann

    def control(self, state: str, at: float | None = None) -> None:
        ctl = JobControl(self.job, state, time.time() if at is None else at)
        self.publish(self.topics.control, ctl.to_json(), True)

    def start_round(
        self, files: ModelFiles, round_: int = 1, selected: Iterable[str] = ("pi-01",), **hp: Any
    ) -> RoundAnnouncement:
        """Model, global weights and the announcement, in the coordinator's order."""
        self.model(files.tflite, files.manifest)
        sha = self.global_weights(files.initial, round_)
        return self.announce(
            round_, selected, model_sha256=files.manifest.sha256, global_sha256=sha, **hp
        )


def random_dataset(
    manifest: Manifest, n: int = 200, seed: int = 0, classes: int | None = None
) -> Dataset:
    """Random pixels with labels in [0, classes) (default: the model's classes)."""
    rng = np.random.default_rng(seed)
    k = classes or manifest.classes
    x = rng.integers(0, 256, (n, *manifest.input_shape), dtype=np.uint8)
    names = tuple(f"c{i}" for i in range(k))
    return Dataset(x, rng.integers(0, k, n), names)


def envelopes(messages: Iterable[tuple[str, bytes]], kind_level: str = "update") -> list[Envelope]:
    """Decode every complete envelope among (topic, payload) messages on ``.../kind/...``."""
    reassembler = Reassembler()
    out = []
    for topic, payload in messages:
        if f"/{kind_level}/" not in topic or not payload:
            continue
        whole = reassembler.feed(topic.rsplit("/", 1)[0], payload)
        if whole is not None:
            out.append(decode(whole))
    return out


DEVICE = "pi-01"


@dataclass
class Rig:
    """One in-memory bus, a scripted coordinator on it, and edge clients made on demand."""

    bus: MemoryBus
    coord: ScriptedCoordinator
    files: ModelFiles
    runtime: Runtime
    tmp: Path

    @classmethod
    def create(cls, files: ModelFiles, tmp: Path) -> Rig:
        bus = MemoryBus()
        coord = ScriptedCoordinator(lambda t, p, r: bus.publish(t, p, retain=r))
        return cls(bus, coord, files, load_runtime("ai-edge-litert"), tmp)

    def client(
        self, device: str = DEVICE, data: Dataset | None = None, **overrides: Any
    ) -> EdgeClient:
        clock = overrides.pop("clock", time.time)
        cfg = ClientConfig(
            BrokerConfig(),
            "demo",
            device,
            data_path="unused",
            state_dir=overrides.pop("state_dir", self.tmp / device),
            heartbeat_s=overrides.pop("heartbeat_s", 0.0),
            **overrides,
        )
        return EdgeClient(
            cfg,
            MemoryTransport(self.bus, device),
            data=data if data is not None else random_dataset(self.files.manifest),
            runtime=self.runtime,
            clock=clock,
        )

    def drain(self, client: EdgeClient, max_steps: int = 500) -> None:
        """Step until the client's queue stayed empty twice."""
        idle = 0
        for _ in range(max_steps):
            client.step(0)
            idle = idle + 1 if client.transport._queue.empty() else 0  # type: ignore[attr-defined]
            if idle >= 2:
                return

    def updates(self) -> list[Envelope]:
        return envelopes((m.topic, m.payload) for m in self.bus.published)

    def statuses(self, device: str = DEVICE) -> list[DeviceStatus]:
        topic = Topics("demo").status(device)
        return [DeviceStatus.from_json(m.payload) for m in self.bus.published if m.topic == topic]
