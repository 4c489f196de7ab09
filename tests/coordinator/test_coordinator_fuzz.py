"""Fuzzing a running coordinator through a real Mosquitto: hypothesis-made payloads (random
bytes, mutated valid chunks and envelopes, random JSON) on the update, status and control
topics while round 1 is open. Nothing crashes the coordinator and, once the fuzzing
stops, the round completes with every real device, then the next one."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.config import JobConfig
from coordinator.run_dir import RunDir
from coordinator.server import Coordinator, ModelBundle
from edge_client.data import load_dataset
from edge_client.manifest import Manifest
from edge_client.protocol import (
    DeviceStatus,
    JobControl,
    Topics,
    encode_failure,
    encode_weights,
    split,
)
from edge_client.trainable_model import TrainableModel
from edge_client.transport import BrokerConfig, MqttTransport
from tests.coordinator.fleet_support import TrainingDevice, mqtt_device
from tests.fixtures.brokers import FixtureClient, MosquittoProcess, mqtt_client, start_mosquitto

JOB = "fz"
T = Topics(JOB)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Live:
    broker: MosquittoProcess
    coordinator: Coordinator
    devices: list[TrainingDevice]
    thread: threading.Thread
    fuzzer: Any
    fuzzer_ctx: Any
    outcome: dict[str, Any] = field(default_factory=dict)
    sent: int = 0  # fuzz messages published


@pytest.fixture(scope="module")
def live(export_dir, tmp_path_factory):
    d = export_dir("mlp")
    tflite, manifest = (d / "model.tflite").read_bytes(), Manifest.load(d / "manifest.json")
    bundle = ModelBundle(tflite, manifest, TrainableModel(tflite, manifest).get_weights())
    broker = start_mosquitto(tmp_path_factory.mktemp("fuzz-broker"))
    train = load_dataset("fashion-mnist", "train")
    devices = []
    for i in range(3):
        model = TrainableModel(tflite, manifest, num_threads=1)
        data = train.subset(np.arange(i * 300, (i + 1) * 300))
        devices.append(mqtt_device(broker.url, JOB, f"d{i}", model, data))
        devices[-1].gate.clear()  # round 1 updates wait until the fuzzing is over
        devices[-1].start()
    config = JobConfig(
        job=JOB, rounds=2, min_devices=3, min_results=3, round_timeout=300, wait_timeout=30,
        epochs=1, lr=0.05,
    )  # fmt: skip
    transport = MqttTransport(BrokerConfig.from_url(broker.url), "coordinator-fz")
    transport.connect()
    run_dir = RunDir(tmp_path_factory.mktemp("fuzz-run"))
    run_dir.create({}, resume=True)
    coordinator = Coordinator(config, transport, bundle, run_dir)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["state"] = coordinator.run()
        except BaseException as exc:  # reported by the last test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ctx = mqtt_client(broker, "fuzzer")
    fuzzer = ctx.__enter__()
    # wait until round 1 is open and every device trained (so updates are gated)
    for dev in devices:
        for _ in range(600):
            if dev.sent:
                break
            dev.stop_event.wait(0.05)
    yield Live(broker, coordinator, devices, thread, fuzzer, ctx, outcome)
    for dev in devices:
        dev.gate.set()
        dev.stop()
    ctx.__exit__(None, None, None)
    transport.close()
    broker.stop()


def _corpus() -> list[bytes]:
    small = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    ghost_update = encode_weights(
        small, kind="update", job=JOB, round=1, sender="ghost", samples=5,
        meta={"base_sha256": "0" * 64},
    )  # fmt: skip
    late = encode_weights(small, kind="update", job=JOB, round=0, sender="d0", samples=5)
    return [
        *split(ghost_update, 200),  # chunks of a multi-chunk message
        *split(late, 10_000),
        *split(encode_failure(JOB, 1, "ghost", "boom"), 10_000),
        DeviceStatus("ghost", "offline", 1.0).to_json(),
        JobControl(JOB, "running", 1.0).to_json(),  # older than the coordinator: ignored
        b'{"v":1,"job":"fz","round":1}',
    ]


CORPUS = _corpus()
TOPICS = [
    T.update("ghost") + "/0",
    T.update("ghost") + "/1",
    T.update("ghost") + "/4294967295",
    T.update("d0") + "/7",
    T.status("ghost"),
    T.status("d1"),
    T.control,
    f"fl/v1/{JOB}/update/ghost",  # wrong number of levels
    f"fl/v1/{JOB}/update/bad id/0",
    f"fl/v1/{JOB}/nonsense",
]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["v", "job", "state", "time", "device", "round"]), inner)
    ),
    max_leaves=12,
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = draw(st.sampled_from(CORPUS))
    if draw(st.booleans()):
        i = draw(st.integers(0, len(base) - 1))
        return base[:i] + bytes([draw(st.integers(0, 255))]) + base[i + 1 :]
    return base[: draw(st.integers(0, len(base)))]


payloads = st.one_of(
    st.binary(max_size=400),
    mutated(),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(TOPICS), payloads), min_size=1, max_size=6))
def test_fuzzed_update_status_and_control_messages_never_crash_a_running_coordinator(
    live, messages
):
    fuzzer: FixtureClient = live.fuzzer
    infos = [fuzzer.publish(topic, payload, qos=1) for topic, payload in messages]
    infos[-1].wait_for_publish(5)  # acknowledged by the broker, on its way to the coordinator
    live.sent += len(messages)
    assert live.thread.is_alive(), live.outcome
    assert "error" not in live.outcome


def test_after_the_fuzzing_the_round_completes_with_every_real_device(live):
    # Execute: the real devices send their round 1 updates, then round 2 runs
    for dev in live.devices:
        dev.gate.set()
    live.thread.join(120)
    # Assert
    assert "error" not in live.outcome, live.outcome.get("error")
    state = live.outcome["state"]
    assert state.finished
    assert [h["participants"] for h in state.history] == [["d0", "d1", "d2"]] * 2
    assert all(h["updates_aggregated"] == 3 for h in state.history)
    print(f"\n{live.sent} fuzz messages, {live.coordinator.inbox.rejected} rejected by the inbox")
    assert live.coordinator.inbox.rejected > live.sent / 4  # the fuzz was seen, and dropped
