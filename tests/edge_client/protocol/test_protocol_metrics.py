"""RoundMetrics (the one record of a round) and UpdateMeta: round trips and exact bytes."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from edge_client.errors import ProtocolError
from edge_client.protocol import DeviceMetrics, Rejection, RoundMetrics, UpdateMeta

# What the coordinator published before RoundMetrics became typed (the bytes of its earlier
# dict-based code for this round), plus the rejections, contested participants and rejected
# bytes it publishes since (issue 14): the record must reproduce them exactly.
WIRE = (
    b'{"v":1,"job":"demo","round":3,"accuracy":0.8727,"loss":0.35,"participants":["pi-01",'
    b'"pi-02"],"bytes_up":2001000,"bytes_down":3000000,"duration_s":42.5,"extra":{"devices":'
    b'{"pi-01":{"samples":12000,"loss":0.61,"accuracy":0.79,"duration_s":3.25,"interpreter":'
    b'"ai-edge-litert 2.3.0","test_accuracy":null,"bytes_up":1000000,"failed":null},"pi-03":'
    b'{"samples":0,"loss":null,"accuracy":null,"duration_s":null,"interpreter":"",'
    b'"test_accuracy":null,"bytes_up":1000,"failed":"out of memory"},"pi-02":{"samples":8000,'
    b'"loss":0.72,"accuracy":0.75,"duration_s":2.0,"interpreter":"tflite-runtime 2.14.0",'
    b'"test_accuracy":0.81,"bytes_up":1000000,"failed":null}},"failed":["pi-03"],'
    b'"samples":20000,"rejections":[{"device":"pi-04","sender":"pi-04","round":2,"reason":'
    b'"stale update for round 2","counted":false,"bytes":700}],"contested":["pi-02"],'
    b'"bytes_rejected":700}}'
)
RECORD = (
    '{"round": 3, "accuracy": 0.8727, "loss": 0.35, "participants": ["pi-01", "pi-02"], '
    '"selected": ["pi-01", "pi-02", "pi-03"], "failed": ["pi-03"], "rejected": {"pi-04": '
    '"device was not selected for this round"}, "updates_aggregated": 2, "samples": 20000, '
    '"bytes_up": 2001000, "bytes_down": 3000000, "duration_s": 42.5, "devices": {"pi-01": '
    '{"samples": 12000, "loss": 0.61, "accuracy": 0.79, "duration_s": 3.25, "interpreter": '
    '"ai-edge-litert 2.3.0", "test_accuracy": null, "bytes_up": 1000000, "failed": null}, '
    '"pi-03": {"samples": 0, "loss": null, "accuracy": null, "duration_s": null, '
    '"interpreter": "", "test_accuracy": null, "bytes_up": 1000, "failed": "out of memory"}, '
    '"pi-02": {"samples": 8000, "loss": 0.72, "accuracy": 0.75, "duration_s": 2.0, '
    '"interpreter": "tflite-runtime 2.14.0", "test_accuracy": 0.81, "bytes_up": 1000000, '
    '"failed": null}}, "time": 1767225600.5, "rejections": [{"device": "pi-04", "sender": '
    '"pi-04", "round": 2, "reason": "stale update for round 2", "counted": false, "bytes": 700}], '
    '"contested": ["pi-02"], "bytes_rejected": 700}'
)


def _round() -> RoundMetrics:
    return RoundMetrics(
        job="demo",
        round=3,
        accuracy=0.8727,
        loss=0.35,
        participants=("pi-01", "pi-02"),
        bytes_up=2_001_000,
        bytes_down=3_000_000,
        duration_s=42.5,
        devices=(
            DeviceMetrics(
                "pi-01", 12000, 0.61, 0.79, 3.25, "ai-edge-litert 2.3.0", bytes_up=1_000_000
            ),
            DeviceMetrics("pi-03", bytes_up=1000, failed="out of memory"),
            DeviceMetrics("pi-02", 8000, 0.72, 0.75, 2.0, "tflite-runtime 2.14.0", 0.81, 1_000_000),
        ),
        failed=("pi-03",),
        samples=20000,
        selected=("pi-01", "pi-02", "pi-03"),
        rejected={"pi-04": "device was not selected for this round"},
        rejections=(Rejection("pi-04", "pi-04", 2, "stale update for round 2", False, 700),),
        contested=("pi-02",),
        bytes_rejected=700,
        updates_aggregated=2,
        time=1767225600.5,
    )


def test_round_metrics_wire_bytes_are_unchanged_and_round_trip() -> None:
    # Execute
    data = _round().to_json()
    back = RoundMetrics.from_json(data)
    # Assert: the topic carries what it always did; what it leaves out comes back as defaults
    assert data == WIRE
    assert back == replace(_round(), selected=(), rejected={}, updates_aggregated=0, time=None)
    assert back.to_json() == WIRE


def test_round_metrics_record_is_the_metrics_jsonl_line_and_round_trips() -> None:
    # Execute
    line = json.dumps(_round().to_record())
    back = RoundMetrics.from_record("demo", json.loads(line))
    # Assert
    assert line == RECORD
    assert back == _round()
    assert back["participants"] == ["pi-01", "pi-02"] and back["devices"]["pi-03"]["failed"]


def test_round_metrics_keep_unknown_extra_keys_and_refuse_bad_devices() -> None:
    m = RoundMetrics.from_json(
        b'{"v":1,"job":"demo","round":1,"extra":{"samples":5,"per_device":{"a":1}}}'
    )
    assert m.samples == 5 and m.extra == {"per_device": {"a": 1}}
    with pytest.raises(ProtocolError, match="device samples"):
        RoundMetrics.from_json(
            b'{"v":1,"job":"demo","round":1,"extra":{"devices":{"a":{"samples":-1}}}}'
        )
    with pytest.raises(ProtocolError, match="devices"):
        RoundMetrics.from_json(b'{"v":1,"job":"demo","round":1,"extra":{"devices":[1]}}')


BOARD_META = (
    b'{"base_sha256":"' + b"ab" * 32 + b'","loss":0.5,"duration_s":1.25,'
    b'"interpreter":"ai-edge-litert","interpreter_version":"2.3.0","epochs":1,"lr":0.05,'
    b'"accuracy":0.9}'
)


def test_update_meta_writes_a_boards_meta_as_before_and_round_trips() -> None:
    # Prepare: the fields a board sends, in the order edge_client always wrote them
    meta = UpdateMeta(
        base_sha256="ab" * 32,
        loss=0.5,
        duration_s=1.25,
        interpreter="ai-edge-litert",
        interpreter_version="2.3.0",
        epochs=1,
        lr=0.05,
        accuracy=0.9,
    )
    # Execute
    data = json.dumps(meta.to_dict(), separators=(",", ":")).encode()
    # Assert
    assert data == BOARD_META
    assert UpdateMeta.from_dict(json.loads(data)) == meta
    with_extra = UpdateMeta.from_dict({"loss": 1.0, "custom": [1]})
    assert with_extra.extra == {"custom": [1]} and with_extra.to_dict() == {
        "loss": 1.0,
        "custom": [1],
    }


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"base_sha256": "xyz"}, "base_sha256"),
        ({"loss": "low"}, "meta.loss"),
        ({"epochs": 1.5}, "meta.epochs"),
        ({"interpreter": 3}, "meta.interpreter"),
    ],
)
def test_update_meta_rejects_wrong_types(meta: dict, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        UpdateMeta.from_dict(meta)


def test_round_mode_keys_travel_only_when_set_and_round_trip() -> None:
    # Prepare: a semi-synchronous round (over-selection, a board offline, late updates)
    semi = replace(
        _round(),
        dropped=("pi-05",),
        target_updates=2,
        cancelled=("pi-04",),
        wasted=1,
        late_discarded={"pi-06": "late update for round 2: discarded"},
        late_folded={"pi-07": 2},
    )
    # Execute
    wire, record = semi.to_json(), semi.to_record()
    # Assert: both forms carry them and read them back; a synchronous round has none of them
    assert RoundMetrics.from_record("demo", json.loads(json.dumps(record))) == semi
    back = RoundMetrics.from_json(wire)
    assert (back.dropped, back.target_updates, back.cancelled) == (("pi-05",), 2, ("pi-04",))
    assert (back.wasted, back.late_folded, back.extra) == (1, {"pi-07": 2}, {})
    assert back.late_discarded == semi.late_discarded
    assert "late_folded" not in _round().to_record() and b"wasted" not in _round().to_json()
    with pytest.raises(ProtocolError, match="late update round"):
        replace(semi, late_folded={"pi-07": "two"})
