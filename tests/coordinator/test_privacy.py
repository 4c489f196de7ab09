"""The paper's packet-capture check: record every payload that crosses the broker during a
job, classify each one as a protocol message the job is expected to send (and nothing
else), and show that no training sample (raw or normalised bytes) appears in any of them."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from coordinator.config import JobConfig
from coordinator.job import run_job
from coordinator.simulation import FleetConfig, fleet_processes
from edge_client.data import Normalization, load_dataset, partition
from edge_client.errors import ProtocolError
from edge_client.manifest import Manifest
from edge_client.protocol import (
    DeviceStatus,
    JobControl,
    Reassembler,
    RoundAnnouncement,
    RoundMetrics,
    Topics,
    decode,
)
from edge_client.transport import BrokerConfig
from tests.fixtures.brokers import ReceivedMessage, mqtt_client

pytestmark = pytest.mark.slow  # over ~5 s: left out of the fast loop (pytest -m "not slow")

SAMPLES_PER_DEVICE = 300
ROUNDS = 2
JSON_KINDS = {
    "round": ("announcement", RoundAnnouncement),
    "status": ("status", DeviceStatus),
    "metrics": ("metrics", RoundMetrics),
    "control": ("control", JobControl),
}
EXPECTED = {"model", "global", "update", "status", "announcement", "metrics", "control"}
# an update's meta, as docs/protocol.md (section 4) lists it: scalars about the training run
UPDATE_META = {
    "loss",
    "accuracy",
    "duration_s",
    "interpreter",
    "interpreter_version",
    "base_sha256",
    "epochs",
    "lr",
}


def leaked(payloads: list[bytes], needles: list[bytes]) -> int:
    return sum(1 for needle in needles for p in payloads if needle in p)


class Classifier:
    """Names what each recorded payload is; ``ProtocolError`` (or AssertionError) for
    anything that is not a well-formed message this job is expected to send."""

    def __init__(self, job: str, manifest: Manifest, tflite: bytes) -> None:
        self.topics, self.manifest, self.tflite = Topics(job), manifest, tflite
        self.layout = [(w.name, list(w.shape), w.dtype) for w in manifest.weights]
        self.reassembler = Reassembler()
        self.finals: list[int] = []

    def __call__(self, m: ReceivedMessage) -> str:
        parsed = self.topics.parse(m.topic)  # another job, prefix or kind: ProtocolError
        if parsed.kind in JSON_KINDS:
            name, cls = JSON_KINDS[parsed.kind]
            obj = json.loads(m.payload)
            cls.from_json(m.payload)
            known = {"v", *(f.name for f in dataclasses.fields(cls))}
            assert set(obj) <= known, f"unknown fields {set(obj) - known} on {m.topic}"
            return name
        if not m.payload:
            return "cleared retained chunk"
        whole = self.reassembler.feed(parsed.base, m.payload, index=parsed.chunk)
        if whole is None:
            return "chunk"
        expect = ("update", "failure") if parsed.kind == "update" else (parsed.kind,)
        env = decode(
            whole, expect_job=self.topics.job, expect_kind=expect, expect_sender=parsed.device
        )
        if env.kind == "model":
            assert env.body == self.tflite, "a model envelope whose body is not the model"
            assert {k: v for k, v in env.meta.items()} == self.manifest.to_dict()
            return "model"
        if env.kind == "failure":
            return "update"
        tensors = [(t.name, list(t.shape), t.dtype) for t in env.tensors]
        assert tensors == self.layout, f"{env.kind} tensors {tensors} are not the model's weights"
        assert sum(t.nbytes for t in env.tensors) == len(env.body), "bytes beside the tensors"
        if env.kind == "global" and env.meta:
            assert env.meta == {"final": True}, env.meta
            self.finals.append(env.round)
        else:
            assert set(env.meta) <= UPDATE_META, env.meta
        return env.kind


def classify_all(classifier: Classifier, messages: Sequence[ReceivedMessage]) -> Counter:
    kinds: Counter = Counter()
    for m in messages:
        kinds[classifier(m)] += 1
    assert classifier.reassembler.pending_count == 0, "chunks of a message that never completed"
    return kinds


def test_every_payload_is_a_known_message_and_no_training_sample_crosses_the_network(
    mosquitto_broker, tmp_path, export_dir
):
    # Prepare: a recorder subscribed to everything, 2 devices with their own partitions
    model_dir = export_dir("mlp")
    job = JobConfig(
        job="privacy",
        rounds=ROUNDS,
        min_devices=2,
        model_dir=str(model_dir),
        optimizer="sgd",
        lr=0.05,
        epochs=1,
        test_data="fashion-mnist",
        run_dir=str(tmp_path / "run"),
        unsigned=True,  # the recorder checks each model envelope's meta against the manifest
    )
    fleet = FleetConfig(devices=2, dataset="fashion-mnist", partition="iid")
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    with mqtt_client(mosquitto_broker, "recorder") as recorder:
        recorder.subscribe_wait("#", qos=1)
        # Execute
        with fleet_processes(fleet, job, broker, tmp_path):
            state = run_job(job, broker=broker, final_models=False)
        messages = recorder.collector.matching("#")
    # Assert: every payload is one of the job's messages, and each kind did cross
    assert state.round == ROUNDS
    classifier = Classifier(
        "privacy",
        Manifest.load(model_dir / "manifest.json"),
        (model_dir / "model.tflite").read_bytes(),
    )
    kinds = classify_all(classifier, messages)
    assert EXPECTED <= set(kinds) <= EXPECTED | {"chunk", "cleared retained chunk"}, kinds
    # (at least: QoS 1 may deliver a copy twice, a reconnect republishes the global weights)
    assert kinds["update"] >= 2 * ROUNDS and kinds["global"] >= ROUNDS + 1
    assert set(classifier.finals) == {ROUNDS + 1}  # the final global weights (docs/protocol.md)
    # ... and none of them carries a training sample
    payloads = [m.payload for m in messages if m.payload]
    assert sum(len(p) for p in payloads) > 1_000_000
    train = load_dataset("fashion-mnist", "train")
    norm = Normalization(scale=1 / 255, mean=(0.0,), std=(1.0,))
    rng = np.random.default_rng(0)
    needles: list[bytes] = []
    for part in partition(train.y, 2, "iid", seed=0):
        for i in rng.choice(part, SAMPLES_PER_DEVICE, replace=False):
            needles.append(train.x[i].tobytes())  # raw uint8 pixels
            needles.append(norm(train.x[i : i + 1]).tobytes())  # normalised float32, as fed
    assert leaked(payloads, needles) == 0
    # the detector itself works: a payload carrying one image is caught
    assert leaked([b"header" + needles[0] + b"tail"], needles) == 1


def test_the_classifier_refuses_what_the_job_should_not_send(export_dir):
    # Prepare: well-formed MQTT messages that are not messages of this job
    model_dir = export_dir("mlp")
    manifest = Manifest.load(model_dir / "manifest.json")
    tflite = (model_dir / "model.tflite").read_bytes()
    from edge_client.protocol import chunked, encode_weights

    image = np.zeros((28, 28), np.uint8).tobytes()
    weights = {w.name: np.zeros(w.shape, np.float32) for w in manifest.weights}
    extra_tensor = {**weights, "image": np.zeros((28, 28), np.float32)}
    status = json.loads(DeviceStatus("d1", "online", 1.0).to_json())
    bad = [
        ReceivedMessage("fl/v1/privacy/samples/d1", image, 1, False),  # an unknown kind
        ReceivedMessage(
            "fl/v1/other/status/d1", DeviceStatus("d1", "online", 1.0).to_json(), 1, False
        ),
        ReceivedMessage(
            "fl/v1/privacy/status/d1", json.dumps({**status, "pixels": [1]}).encode(), 1, False
        ),
        ReceivedMessage("fl/v1/privacy/update/d1/0", image, 1, False),  # not a chunk
    ]
    for topic, chunk in chunked(
        "fl/v1/privacy/update/d1",
        encode_weights(extra_tensor, kind="update", job="privacy", round=1, sender="d1", samples=1),
    ):
        bad.append(ReceivedMessage(topic, chunk, 1, False))
    for message in bad:
        # Execute / Assert
        with pytest.raises((ProtocolError, AssertionError, ValueError)):
            Classifier("privacy", manifest, tflite)(message)
