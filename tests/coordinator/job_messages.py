"""The MQTT messages of a small job caught in round 2, for monitor and dashboard tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from coordinator.monitoring.view import JobView
from edge_client.messaging import Inbox
from edge_client.protocol import (
    DeviceStatus,
    JobControl,
    Rejection,
    RoundAnnouncement,
    RoundMetrics,
    Topics,
    chunked,
    decode,
    encode_failure,
    encode_model,
    encode_weights,
)
from edge_client.transport import MemoryBus, MemoryTransport

T0 = 1_767_225_600.0  # 2026-01-01, a fixed "now" for views with a fake clock
FAKE_WEIGHTS = {
    "dense/kernel": np.arange(12, dtype=np.float32).reshape(4, 3) / 10,  # (4, 3)
    "dense/bias": np.array([0.5, -0.5, 0.0], np.float32),  # (3,)
}
FAKE_MANIFEST: dict[str, Any] = {"architecture": "mlp", "parameters": 15, "classes": 3}
Msg = tuple[str, bytes, bool]  # topic, payload, retain


def binary(base: str, payload: bytes, retain: bool = True) -> list[Msg]:
    return [(topic, chunk, retain) for topic, chunk in chunked(base, payload)]


def retained_state(
    job: str = "demo",
    *,
    tflite: bytes = b"TFL3 not a real model",
    manifest: Mapping[str, Any] = FAKE_MANIFEST,
    weights: Mapping[str, np.ndarray] = FAKE_WEIGHTS,
) -> list[Msg]:
    """What a broker holds for a job in round 2: control, model, global, round, statuses,
    the metrics of round 1."""
    t = Topics(job)
    global_payload = encode_weights(weights, kind="global", job=job, round=2, sender="coordinator")
    announcement = RoundAnnouncement(
        job=job,
        round=2,
        deadline=T0 + 30,
        selected=("pi-01", "pi-02"),
        hyperparams={"epochs": 1, "lr": 0.05},
        model_sha256=decode(encode_model(tflite, manifest, job=job, sender="c")).sha256,
        global_sha256=decode(global_payload).weights_sha256(),
    )
    metrics = RoundMetrics(
        job=job,
        round=1,
        accuracy=0.8123,
        loss=0.5432,
        participants=("pi-01", "pi-02"),
        bytes_up=2000,
        bytes_down=2000,
        duration_s=1.5,
        extra={
            "devices": {
                "pi-01": {"samples": 12000, "loss": 0.61, "accuracy": 0.79, "bytes_up": 1000},
                "pi-02": {"samples": 8000, "loss": 0.72, "accuracy": 0.75, "bytes_up": 1000},
            },
            "samples": 20000,
            "failed": [],
        },
    )
    online = DeviceStatus(
        "pi-01", "training", T0 - 1, round=2, interpreter="ai-edge-litert 2.3.0", samples=12000
    )
    return [
        (t.control, JobControl(job, "running", T0 - 100).to_json(), True),
        *binary(t.model, encode_model(tflite, manifest, job=job, sender="coordinator")),
        *binary(t.global_weights, global_payload),
        (t.round, announcement.to_json(), True),
        (t.status("pi-01"), online.to_json(), True),
        (t.status("pi-02"), DeviceStatus.last_will("pi-02", T0 - 50).to_json(), True),
        (t.metrics, metrics.to_json(), True),
    ]


def live_round_2(job: str = "demo") -> list[Msg]:
    """pi-01 sends its round-2 update; pi-03 joins and fails round 2."""
    t = Topics(job)
    update = encode_weights(
        FAKE_WEIGHTS,
        kind="update",
        job=job,
        round=2,
        sender="pi-01",
        samples=12000,
        meta={
            "loss": 0.42,
            "accuracy": 0.86,
            "interpreter": "ai-edge-litert",
            "interpreter_version": "2.3.0",
        },
    )
    failure = encode_failure(job, 2, "pi-03", "out of memory")
    status = DeviceStatus("pi-03", "failed", T0, round=2, detail="out of memory", samples=500)
    return [
        *binary(t.update("pi-01"), update, retain=False),
        (t.status("pi-03"), status.to_json(), True),
        *binary(t.update("pi-03"), failure, retain=False),
    ]


def unsigned_paused_with_rejections(job: str = "demo") -> list[Msg]:
    """Retained over :func:`retained_state`: the --unsigned job paused by an admin until
    T0 + 600, and round 1's metrics with two rejected updates (one under pi-03's name from
    mallory) and pi-01 contested."""
    t = Topics(job)
    control = JobControl(
        job, "paused", T0 - 10, by="dashboard admin at 10.0.0.5", until=T0 + 600, signed=False
    )
    metrics = RoundMetrics(
        job=job,
        round=1,
        accuracy=0.8123,
        loss=0.5432,
        participants=("pi-01",),
        bytes_up=1000,
        bytes_down=2000,
        duration_s=1.5,
        devices=({"pi-01": {"samples": 12000, "loss": 0.61, "bytes_up": 1000}}),
        samples=12000,
        rejections=(
            Rejection("pi-02", "pi-02", 1, "weight share 0.9 over the cap 0.5", True, 1000),
            Rejection("pi-03", "mallory", 1, "sender is not the topic's device", False, 900),
        ),
        contested=("pi-01",),
        bytes_rejected=1900,
    )
    return [(t.control, control.to_json(), True), (t.metrics, metrics.to_json(), True)]


def feed(view: JobView, messages: list[Msg], *, retained: bool = False) -> int:
    """Publish on an in-memory bus and fold everything a subscriber decodes into ``view``."""
    bus = MemoryBus()
    sub = MemoryTransport(bus, "viewer")
    sub.connect()
    sub.subscribe(Topics(view.job, view.prefix).all)
    for topic, payload, retain in messages:
        bus.publish(topic, payload, retain=retain)
    inbox = Inbox(sub, Topics(view.job, view.prefix))
    applied = 0
    while sub.pending():
        item = inbox.get(0)
        if item is not None:
            view.apply(item, retained=retained)
            applied += 1
    return applied
