"""JSON messages: round trips, forward compatibility and validation."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edge_client.errors import ProtocolError
from edge_client.protocol import (
    PROTOCOL_VERSION,
    DeviceStatus,
    JobControl,
    RoundAnnouncement,
    RoundMetrics,
)

SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4


def _announcement() -> RoundAnnouncement:
    return RoundAnnouncement(
        job="demo",
        round=3,
        deadline=1_760_000_000.5,
        selected=("pi-01", "pi-02"),
        hyperparams={"epochs": 1, "lr": 0.01, "batch_size": 32, "mu": 0.0},
        model_sha256=SHA_A,
        global_sha256=SHA_B,
        encoding="float16",
        state="open",
    )


MESSAGES = [
    _announcement(),
    dataclasses.replace(_announcement(), run="3f9a0c1e5b7d2468"),
    DeviceStatus(
        device="pi-01",
        state="training",
        time=1_760_000_001.25,
        round=3,
        detail="epoch 1/1",
        interpreter="ai-edge-litert 2.3.0",
        samples=12000,
        heartbeat_s=30.0,
        version="0.1.0",
    ),
    DeviceStatus(device="pi-02", state="online", time=5.0),
    DeviceStatus.last_will("pi-03", 7.0),
    RoundMetrics(
        job="demo",
        round=3,
        accuracy=0.8727,
        loss=0.35,
        participants=("pi-01", "pi-02"),
        bytes_up=2_000_000,
        bytes_down=1_000_000,
        duration_s=42.0,
        extra={"per_device": {"pi-01": 0.85}},
    ),
    RoundMetrics(job="demo", round=0),
    JobControl(job="demo", state="paused", time=9.5, detail="operator"),
    JobControl(job="demo", state="paused", time=9.5, by="dashboard admin at ::1", until=1809.5),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: object) -> None:
    # Execute
    data = message.to_json()  # type: ignore[attr-defined]
    back = type(message).from_json(data)  # type: ignore[attr-defined]

    # Assert
    assert back == message
    assert json.loads(data)["v"] == PROTOCOL_VERSION
    assert type(message).from_json(data.decode()) == message  # str accepted too


def test_json_is_plain_and_readable() -> None:
    decoded = json.loads(_announcement().to_json())

    assert decoded == {
        "v": 1,
        "job": "demo",
        "round": 3,
        "deadline": 1_760_000_000.5,
        "selected": ["pi-01", "pi-02"],
        "hyperparams": {"epochs": 1, "lr": 0.01, "batch_size": 32, "mu": 0.0},
        "model_sha256": SHA_A,
        "global_sha256": SHA_B,
        "encoding": "float16",
        "state": "open",
    }


def test_the_run_id_is_optional_and_left_out_while_none() -> None:
    # Prepare: an announcement of a coordinator that predates run ids, and one with a run
    old = json.loads(_announcement().to_json())
    new = dataclasses.replace(_announcement(), run="3f9a0c1e5b7d2468").to_json()

    # Assert: the old one reads as run None; the new one only adds the field at the end
    assert "run" not in old and RoundAnnouncement.from_json(json.dumps(old)).run is None
    assert json.loads(new) == {**old, "run": "3f9a0c1e5b7d2468"}
    assert new.endswith(b',"run":"3f9a0c1e5b7d2468"}')


def test_unknown_fields_are_ignored_and_defaults_fill_in() -> None:
    data = json.dumps(
        {"v": 1, "device": "pi-01", "state": "idle", "time": 3, "battery": 0.5}
    ).encode()

    status = DeviceStatus.from_json(data)

    assert status == DeviceStatus(device="pi-01", state="idle", time=3.0)
    assert isinstance(status.time, float)


def test_last_will_is_an_offline_status() -> None:
    will = DeviceStatus.last_will("pi-01", 12.0, interpreter="tflite-runtime 2.14.0")

    assert (will.state, will.detail, will.interpreter) == (
        "offline",
        "connection lost",
        "tflite-runtime 2.14.0",
    )


def test_is_selected() -> None:
    assert _announcement().is_selected("pi-01")
    assert not _announcement().is_selected("pi-09")


@pytest.mark.parametrize(
    ("cls", "obj", "message"),
    [
        (DeviceStatus, {"device": "pi-01", "state": "idle", "time": 1}, "missing field 'v'"),
        (DeviceStatus, {"v": 2, "device": "pi-01", "state": "idle", "time": 1}, "version 2"),
        (DeviceStatus, {"v": 1, "device": "pi-01", "time": 1}, "missing field 'state'"),
        (DeviceStatus, {"v": 1, "device": "pi-01", "state": "asleep", "time": 1}, "device state"),
        (DeviceStatus, {"v": 1, "device": "pi/01", "state": "idle", "time": 1}, "device id"),
        (DeviceStatus, {"v": 1, "device": "pi-01", "state": "idle", "time": "now"}, "number"),
        (DeviceStatus, {"v": 1, "device": "p", "state": "idle", "time": 1, "round": 1.5}, "int"),
        (DeviceStatus, {"v": 1, "device": "p", "state": "idle", "time": 1, "samples": True}, "int"),
        (JobControl, {"v": 1, "job": "demo", "state": "resumed", "time": 1}, "job state"),
        (JobControl, {"v": 1, "job": "demo", "state": "paused", "time": -1}, ">= 0"),
        (RoundMetrics, {"v": 1, "job": "demo", "round": 1, "accuracy": "high"}, "accuracy"),
        (RoundMetrics, {"v": 1, "job": "demo", "round": 1, "participants": "pi"}, "participants"),
        (RoundMetrics, {"v": 1, "job": "demo", "round": 1, "extra": [1]}, "extra"),
        (RoundAnnouncement, {"v": 1, "job": "demo", "round": 1}, "missing field 'deadline'"),
    ],
)
def test_invalid_messages_are_rejected(cls: type, obj: dict, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        cls.from_json(json.dumps(obj).encode())


def test_announcement_field_validation() -> None:
    base = json.loads(_announcement().to_json())
    cases = {
        "selected": (["pi-01", "pi-01"], "twice"),
        "model_sha256": ("ABC", "model_sha256"),
        "encoding": ("bf16", "encoding"),
        "state": ("done", "round state"),
        "hyperparams": ([], "hyperparams"),
        "run": ("run/1", "run id"),
    }
    for field, (value, message) in cases.items():
        with pytest.raises(ProtocolError, match=message):
            RoundAnnouncement.from_json(json.dumps({**base, field: value}).encode())


@pytest.mark.parametrize(
    "data",
    [b"", b"null", b"[]", b"\xff\xfe", b'{"v": NaN}', b"{" * 100_000, b'{"v": 1e999}'],
)
def test_non_objects_and_bad_json_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        JobControl.from_json(data)


def test_non_finite_numbers_cannot_be_sent() -> None:
    with pytest.raises(ProtocolError, match="finite"):
        RoundMetrics(job="demo", round=1, loss=float("nan"))
