"""A board in a buffered (FedBuff) job, against the in-memory bus and a scripted coordinator:
it trains each grant once from the newest version it holds, keeps training while newer
versions come (within max_staleness), gives the slot back beyond it, stops when its grant is
revoked, and resends a grant's update after a restart."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
from test_client_support import DEVICE, ModelFiles, Rig

from edge_client.protocol import (
    BUFFERED,
    ROUND_MODES,
    Envelope,
    RoundAnnouncement,
    decode,
    encode_weights,
)


@pytest.fixture(scope="module")
def files(export_dir) -> ModelFiles:
    return ModelFiles.load(export_dir("mlp"))


@pytest.fixture
def rig(files, tmp_path) -> Rig:
    return Rig.create(files, tmp_path)


def version(
    rig: Rig,
    v: int,
    grants: dict[str, int],
    *,
    shift: float = 0.0,
    max_staleness: int = 4,
    state: str = "open",
    epochs: int = 1,
    deadline: float | None = None,
) -> RoundAnnouncement:
    """Publish global version ``v`` (the initial weights + ``shift``) and its announcement."""
    weights = rig.files.shifted(shift)
    payload = encode_weights(weights, kind="global", job="demo", round=v, sender="coordinator")
    rig.coord.binary(rig.coord.topics.global_weights, payload)
    ann = RoundAnnouncement(
        job="demo",
        round=v,
        deadline=time.time() + 300 if deadline is None else deadline,
        selected=tuple(grants),
        hyperparams={"epochs": epochs, "lr": 0.05, "attempt": 0},
        model_sha256=rig.files.manifest.sha256,
        global_sha256=decode(payload).weights_sha256(),
        state=state,
        run="run-a",
        mode=BUFFERED,
        grants=grants,
        max_staleness=max_staleness,
    )
    rig.coord.publish(rig.coord.topics.round, ann.to_json(), True)
    return ann


def failures(rig: Rig) -> list[Envelope]:
    return [e for e in rig.updates() if e.kind == "failure"]


def updates(rig: Rig) -> list[Envelope]:
    return [e for e in rig.updates() if e.kind == "update"]


def test_a_granted_board_trains_its_grant_once_and_names_it(rig):
    # Prepare: version 3, a slot for this board (its 2nd grant) and one for another
    rig.coord.model(rig.files.tflite, rig.files.manifest)
    ann = version(rig, 3, {DEVICE: 2, "pi-02": 1})
    client = rig.client()

    # Execute: then version 4 comes while the coordinator has not seen the update yet
    rig.drain(client)
    version(rig, 4, {DEVICE: 2, "pi-02": 1}, shift=0.01)
    rig.drain(client)

    # Assert: one update, for version 3, answering grant 2; the status says buffered
    (update,) = updates(rig)
    assert (update.round, update.meta["grant"]) == (3, 2)
    assert update.meta["base_sha256"] == ann.global_sha256
    assert set(ROUND_MODES) <= set(rig.statuses()[0].modes or ())  # (and secagg, with cryptography)
    assert [s.state for s in rig.statuses()] == ["online", "training", "idle"]


def test_a_new_grant_on_the_same_version_is_trained_again(rig):
    # Prepare
    rig.coord.model(rig.files.tflite, rig.files.manifest)
    version(rig, 5, {DEVICE: 1})
    client = rig.client()
    rig.drain(client)

    # Execute: the coordinator took grant 1 and grants this board again on version 5
    version(rig, 5, {DEVICE: 2})
    rig.drain(client)

    # Assert: two different updates from the same version (a new batch order per grant)
    first, second = updates(rig)
    assert (first.round, first.meta["grant"], second.round, second.meta["grant"]) == (5, 1, 5, 2)
    w1, w2 = first.weights(), second.weights()
    assert any(not np.array_equal(w1[k], w2[k]) for k in w1)


def test_newer_versions_within_max_staleness_do_not_stop_training(rig, caplog):
    # Prepare: versions 1 and 2 are queued before the board trains version 1's grant
    caplog.set_level(logging.INFO)
    rig.coord.model(rig.files.tflite, rig.files.manifest)
    version(rig, 1, {DEVICE: 1}, epochs=3)
    client = rig.client()
    client.step(0)  # the model
    client.step(0)  # global version 1
    version(rig, 2, {DEVICE: 1}, shift=0.01, max_staleness=1)
    version(rig, 3, {DEVICE: 1}, shift=0.02, max_staleness=2)

    # Execute
    rig.drain(client)

    # Assert: trained from version 1, sent, never stopped
    (update,) = updates(rig)
    assert (update.round, update.meta["grant"]) == (1, 1)
    assert "training stopped" not in caplog.text


def test_beyond_max_staleness_the_board_gives_its_slot_back(rig, caplog):
    # Prepare: a newer version 3 is queued while the board trains version 1 (max 1 behind)
    caplog.set_level(logging.INFO)
    rig.coord.model(rig.files.tflite, rig.files.manifest)
    version(rig, 1, {DEVICE: 1}, epochs=3)
    client = rig.client()
    client.step(0)
    client.step(0)
    version(rig, 3, {DEVICE: 1}, shift=0.02, max_staleness=1)

    # Execute
    rig.drain(client)

    # Assert: no update; a failure for grant 1 saying why, so the coordinator grants again
    assert updates(rig) == []
    (failure,) = failures(rig)
    assert (failure.round, failure.meta["grant"]) == (1, 1)
    assert "2 versions ahead of version 1" in failure.reason
    assert rig.statuses()[-1].state == "idle"


def test_a_revoked_grant_stops_training_without_sending(rig, caplog):
    # Prepare
    caplog.set_level(logging.INFO)
    rig.coord.model(rig.files.tflite, rig.files.manifest)
    version(rig, 1, {DEVICE: 1, "pi-02": 1}, epochs=3)
    client = rig.client()
    client.step(0)
    client.step(0)
    version(rig, 1, {"pi-02": 1})  # the coordinator took the slot back (e.g. it timed out)

    # Execute
    rig.drain(client)

    # Assert
    assert updates(rig) == [] and failures(rig) == []
    assert "revoked grant 1 of this device" in caplog.text


def test_a_replayed_older_announcement_does_not_stop_training(rig, caplog):
    # Prepare: version 1's announcement before this board's slot (deadline t + 300), then
    # its grant 1 (t + 310) and version 2 with grant 2 (t + 320); the board trains grant 2
    caplog.set_level(logging.INFO)
    t = time.time()
    rig.coord.model(rig.files.tflite, rig.files.manifest)
    before = version(rig, 1, {"pi-02": 1}, deadline=t + 300)
    first = version(rig, 1, {DEVICE: 1, "pi-02": 1}, deadline=t + 310)
    client = rig.client()
    rig.drain(client)
    version(rig, 2, {DEVICE: 2}, shift=0.01, deadline=t + 320, epochs=3)
    client.step(0)  # global version 2
    # Execute: while it trains, someone who can write the round topic replays the signed
    # announcements of before (another version; the same version before its grant)
    for old in (first, before):
        rig.coord.publish(rig.coord.topics.round, old.to_json(), False)
    rig.drain(client)

    # Assert: grant 2 trained to the end and sent; the replays ignored with a reason
    assert [(u.round, u.meta["grant"]) for u in updates(rig)] == [(1, 1), (2, 2)]
    assert "training stopped" not in caplog.text and failures(rig) == []
    assert "ignoring an announcement of version 1 (grant 1 for this device): it is older than" in (
        caplog.text
    )


def test_a_replayed_announcement_from_before_a_grant_does_not_idle_the_board(rig, caplog):
    # Prepare: this board's grant 1 of version 1 arrives before its model; an announcement
    # of version 1 from before the grant (an earlier deadline) is replayed behind it
    caplog.set_level(logging.INFO)
    t = time.time()
    client = rig.client()
    client.step(0)
    before = version(rig, 1, {"pi-02": 1}, deadline=t + 300)
    version(rig, 1, {DEVICE: 1, "pi-02": 1}, deadline=t + 310)
    rig.coord.publish(rig.coord.topics.round, before.to_json(), False)
    rig.coord.model(rig.files.tflite, rig.files.manifest)

    # Execute
    rig.drain(client)

    # Assert: the grant is trained once the model is there
    assert [(u.round, u.meta["grant"]) for u in updates(rig)] == [(1, 1)]
    assert "ignoring an announcement of version 1 (grant None" in caplog.text


def test_a_closed_job_stops_training(rig, caplog):
    caplog.set_level(logging.INFO)
    rig.coord.model(rig.files.tflite, rig.files.manifest)
    version(rig, 1, {DEVICE: 1}, epochs=3)
    client = rig.client()
    client.step(0)
    client.step(0)
    version(rig, 2, {}, state="closed")

    rig.drain(client)

    assert updates(rig) == [] and "the job closed version 2" in caplog.text


def test_after_a_restart_a_grant_still_listed_is_resent_not_retrained(rig, caplog):
    # Prepare: the board sent grant 1 of version 2, then its process ended
    caplog.set_level(logging.INFO)
    rig.coord.model(rig.files.tflite, rig.files.manifest)
    version(rig, 2, {DEVICE: 1})
    first = rig.client()
    rig.drain(first)
    (sent,) = updates(rig)

    # Execute: a new process; the coordinator (which lost the update) still lists grant 1,
    # now at version 3
    version(rig, 3, {DEVICE: 1}, shift=0.01)
    rig.drain(rig.client())

    # Assert: the same update again, byte for byte; nothing trained
    again = updates(rig)
    assert len(again) == 2 and again[1].sha256 == sent.sha256 and again[1].round == 2
    assert "resent the update already computed" in caplog.text
    assert [s.state for s in rig.statuses()].count("training") == 1


def test_malformed_buffered_announcements_are_dropped_with_one_line_each(rig, caplog):
    # Prepare: a valid announcement's fields, then every way to get them wrong
    caplog.set_level(logging.INFO)
    rig.coord.model(rig.files.tflite, rig.files.manifest)
    good = version(rig, 1, {DEVICE: 1, "pi-02": 1})
    client = rig.client()
    client.step(0)  # the model
    client.step(0)  # global version 1
    base = json.loads(good.to_json())
    crowd = [f"d{i}" for i in range(100_001)]
    bad = {
        "grants a list": {"grants": [[DEVICE, 1]]},
        "grant a string": {"grants": {DEVICE: "2", "pi-02": 1}},
        "grant negative": {"grants": {DEVICE: -2, "pi-02": 1}},
        "grant zero": {"grants": {DEVICE: 0, "pi-02": 1}},
        "grant a bool": {"grants": {DEVICE: True, "pi-02": 1}},
        "grant a float": {"grants": {DEVICE: 2.0, "pi-02": 1}},
        "grants without selected": {"grants": {DEVICE: 2, "pi-02": 1, "pi-03": 1}},
        "grant for a bad id": {"grants": {"a/b": 2}, "selected": ["a/b"]},
        "max_staleness negative": {"max_staleness": -1},
        "max_staleness a string": {"max_staleness": "10"},
        "max_staleness null": {"max_staleness": None},
        "mode unknown": {"mode": "async"},
        "v1 with mode": {"v": 1},
        "v2 without mode": {"mode": None, "grants": None, "max_staleness": None},
        "v3": {"v": 3},
        "huge list": {"selected": crowd, "grants": dict.fromkeys(crowd, 2)},
        "deadline NaN": {"deadline": "NaN"},
    }
    # Execute: each published, then the valid grant 2
    for fields in bad.values():
        raw = json.dumps({**base, **fields}).replace('"NaN"', "NaN")
        rig.coord.publish(rig.coord.topics.round, raw.encode(), True)
    rig.drain(client)
    version(rig, 1, {DEVICE: 2, "pi-02": 1})
    rig.drain(client)

    # Assert: one warning each, nothing unexpected, and the board still trains its grants
    dropped = [r.getMessage() for r in caplog.records if "dropped a message" in r.getMessage()]
    assert len(dropped) == len(bad), dropped
    assert all(len(m) < 300 and "\n" not in m for m in dropped)
    assert "unexpected error" not in caplog.text and "Traceback" not in caplog.text
    assert [(u.round, u.meta["grant"]) for u in updates(rig)] == [(1, 1), (1, 2)]
