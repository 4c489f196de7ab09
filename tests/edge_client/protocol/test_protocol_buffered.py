"""The buffered (FedBuff) additions to the protocol: version-2 announcements with grants,
the modes a board speaks, the grant an update answers and a version's folded updates."""

from __future__ import annotations

import dataclasses
import json

import pytest

from edge_client.errors import ProtocolError
from edge_client.protocol import (
    BUFFERED,
    ROUND_MODES,
    DeviceStatus,
    FoldedUpdate,
    RoundAnnouncement,
    RoundMetrics,
    StartOver,
    UpdateMeta,
)
from edge_client.protocol.messages import _versioned_object

SHA_A = "a" * 64
SHA_B = "0123456789abcdef" * 4


def _buffered(**changes: object) -> RoundAnnouncement:
    ann = RoundAnnouncement(
        job="demo",
        round=7,
        deadline=1_760_000_300.0,
        selected=("pi-01", "pi-03"),
        hyperparams={"epochs": 1, "lr": 0.01, "attempt": 0},
        model_sha256=SHA_A,
        global_sha256=SHA_B,
        run="3f9a0c1e5b7d2468",
        mode=BUFFERED,
        grants={"pi-01": 3, "pi-03": 1},
        max_staleness=4,
    )
    return dataclasses.replace(ann, **changes)


def test_a_buffered_announcement_is_version_2_and_round_trips() -> None:
    # Execute
    data = _buffered().to_json()
    back = RoundAnnouncement.from_json(data)

    # Assert
    obj = json.loads(data)
    assert obj["v"] == 2 and obj["mode"] == "buffered" and obj["round"] == 7
    assert obj["grants"] == {"pi-01": 3, "pi-03": 1} and obj["max_staleness"] == 4
    assert back == _buffered() and back.buffered
    assert (back.grant("pi-01"), back.grant("pi-03"), back.grant("pi-02")) == (3, 1, None)


def test_the_start_over_hint_applies_to_trainings_from_its_version_only() -> None:
    # Prepare: the hint a coordinator sends (--start-over-within 0.5), then malformed ones
    hint = {"epochs": 1, "lr": 0.01, "start_over": StartOver(1, 0.5).to_dict()}
    first = _buffered(round=1, hyperparams=hint)
    # Execute / Assert: it survives the wire; it applies to version 1, not to version 7 or
    # to a synchronous round; a malformed hint is no hint (a board trains on)
    back = RoundAnnouncement.from_json(first.to_json())
    assert back.hyperparams["start_over"] == {"version": 1, "within": 0.5}
    assert back.start_over == StartOver(1, 0.5)
    assert _buffered(hyperparams=hint).start_over is None  # version 7
    assert _buffered(round=1, hyperparams=hint, mode=None, grants=None,
                     max_staleness=None).start_over is None  # fmt: skip
    for bad in ({"version": 1, "within": 0}, {"version": 1, "within": 1.5},
                {"version": "1", "within": 0.5}, {"version": True, "within": 0.5},
                {"version": 1, "within": "half"}, {"version": 1}, [1, 0.5], "yes"):  # fmt: skip
        assert _buffered(round=1, hyperparams={"start_over": bad}).start_over is None, bad


def test_a_synchronous_announcement_is_unchanged_version_1() -> None:
    sync = _buffered(mode=None, grants=None, max_staleness=None)

    obj = json.loads(sync.to_json())

    assert obj["v"] == 1 and not ({"mode", "grants", "max_staleness"} & set(obj))
    assert not sync.buffered and sync.grant("pi-01") is None


def test_a_reader_of_version_1_only_refuses_a_buffered_announcement() -> None:
    # Prepare: what every board before buffered rounds does with the round topic
    data = _buffered().to_json()

    # Execute / Assert: it drops the message with this line instead of training wrongly
    with pytest.raises(ProtocolError, match="unsupported round announcement version 2"):
        _versioned_object(data, "round announcement")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"v": 1}, "buffered announcements are version 2"),
        ({"v": 2, "mode": None}, "version 2 with mode None"),
        ({"mode": "eager"}, "version 2 with mode .eager."),
        ({"grants": {"pi-01": 3}}, "exactly the selected devices"),
        ({"grants": {"pi-01": 0, "pi-03": 1}}, "grant of pi-01 must be >= 1"),
        ({"grants": {"pi-01": "3", "pi-03": 1}}, "grant of pi-01 must be an integer"),
        ({"max_staleness": -1}, "max_staleness must be >= 0"),
        ({"v": 3}, "unsupported round announcement version 3"),
    ],
)
def test_buffered_announcement_validation(change: dict, message: str) -> None:
    obj = {**json.loads(_buffered().to_json()), **change}
    obj = {k: v for k, v in obj.items() if v is not None}

    with pytest.raises(ProtocolError, match=message):
        RoundAnnouncement.from_json(json.dumps(obj).encode())


def test_grants_belong_to_buffered_announcements_only() -> None:
    with pytest.raises(ProtocolError, match="belong to buffered"):
        _buffered(mode=None, max_staleness=None)
    with pytest.raises(ProtocolError, match="needs grants and max_staleness"):
        _buffered(grants=None)


def test_a_board_says_which_round_modes_it_speaks() -> None:
    # Prepare
    new = DeviceStatus("pi-01", "online", 5.0, modes=ROUND_MODES)
    old = DeviceStatus("pi-02", "online", 5.0)

    # Execute
    new_back = DeviceStatus.from_json(new.to_json())
    old_json = json.loads(old.to_json())

    # Assert: an old board's status has no modes and speaks sync only
    assert new_back == new and new_back.modes == ("sync", "buffered")
    assert new_back.speaks("buffered") and new_back.speaks("sync")
    assert "modes" not in old_json and not old.speaks("buffered") and old.speaks("sync")
    with pytest.raises(ProtocolError, match="modes"):
        DeviceStatus("pi-01", "online", 5.0, modes="buffered")  # type: ignore[arg-type]


def test_an_update_names_its_grant() -> None:
    meta = UpdateMeta(base_sha256=SHA_B, loss=0.5, grant=3)

    back = UpdateMeta.from_dict(json.loads(json.dumps(meta.to_dict())))

    assert back.grant == 3 and meta.to_dict()["grant"] == 3
    with pytest.raises(ProtocolError, match="meta.grant"):
        UpdateMeta.from_dict({"grant": "3"})


def test_a_versions_folded_updates_round_trip_on_the_wire_and_in_metrics_jsonl() -> None:
    # Prepare
    folded = (
        FoldedUpdate("pi-01", 3, base=6, staleness=1, weight=0.7071, samples=1200, sha256=SHA_A),
        FoldedUpdate("pi-03", 1, base=4, staleness=3, weight=0.5, samples=900, sha256=SHA_B),
    )
    metrics = RoundMetrics(job="demo", round=7, mode="buffered", buffer=folded, wasted=1)

    # Execute
    wire = RoundMetrics.from_json(metrics.to_json())
    record = metrics.to_record()

    # Assert
    assert wire == metrics and RoundMetrics.from_record("demo", record) == metrics
    assert record["mode"] == "buffered" and record["buffer"][1]["staleness"] == 3
    assert metrics.staleness == (2.0, 3)
    assert RoundMetrics(job="demo", round=1).staleness is None
    assert "buffer" not in RoundMetrics(job="demo", round=1).to_record()
    with pytest.raises(ProtocolError, match="missing field"):
        RoundMetrics.from_record("demo", {"round": 1, "buffer": [{"device": "pi-01"}]})
