"""A board's progress over runs, restarts and forged announcements, on a real Mosquitto.

Progress is keyed on (run, model, round, global weights): a second run of the same job and
model is trained again, a resumed run's round is resent, and a stranger's retained round
10^9 cannot make an unsigned board skip the honest rounds, not even after a restart.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable

import pytest
from test_client_brokers import TOPICS, client_thread, coordinator_of, make_client
from test_client_support import DEVICE, ModelFiles, envelopes

from edge_client.protocol import Envelope
from tests.fixtures.brokers import FixtureClient, mqtt_client


@pytest.fixture(scope="module")
def files(export_dir) -> ModelFiles:
    return ModelFiles.load(export_dir("mlp"))


def wait_for_update(
    client: FixtureClient, wanted: Callable[[Envelope], bool], timeout: float = 30
) -> Envelope:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = envelopes((m.topic, m.payload) for m in client.collector.matching("#"))
        matching = [u for u in found if u.kind == "update" and wanted(u)]
        if matching:
            return matching[-1]
        time.sleep(0.05)
    sent = [
        (u.kind, u.round)
        for u in envelopes((m.topic, m.payload) for m in client.collector.matching("#"))
    ]
    raise AssertionError(f"no such update within {timeout} s; the board sent {sent}")


def test_a_forged_retained_round_cannot_make_a_board_skip_honest_rounds(
    mosquitto_broker, files, tmp_path
):
    with mqtt_client(mosquitto_broker, "coordinator") as coord_client:
        # Prepare: an unsigned board (no --trust-key) sends round 1 of run "run-a"
        coord = coordinator_of(coord_client)
        first = coord.start_round(files, round_=1, run="run-a")
        with client_thread(make_client(mosquitto_broker, files, tmp_path)):
            wait_for_update(coord_client, lambda u: u.round == 1)
            # Execute: a stranger's client leaves a retained round 10^9 naming the current
            # model and weights; the board cannot tell it from the coordinator's
            forged = dataclasses.replace(first, round=10**9, deadline=time.time() + 600)
            with mqtt_client(mosquitto_broker, "stranger") as stranger:
                stranger.publish_wait(TOPICS.round, forged.to_json(), qos=1, retain=True)
            wait_for_update(coord_client, lambda u: u.round == 10**9)
        progress = json.loads((tmp_path / "state" / "progress.json").read_text())
        # ... the board restarts, the coordinator goes on with round 2
        with client_thread(make_client(mosquitto_broker, files, tmp_path)):
            sha2 = coord.global_weights(files.shifted(0.001), 2)
            coord.announce(
                2, [DEVICE], model_sha256=first.model_sha256, global_sha256=sha2, run="run-a"
            )
            second = wait_for_update(coord_client, lambda u: u.round == 2)
            # ... and retries round 2 from other global weights (e.g. after a restart)
            sha3 = coord.global_weights(files.shifted(0.002), 2)
            coord.announce(
                2, [DEVICE], model_sha256=first.model_sha256, global_sha256=sha3, run="run-a"
            )
            third = wait_for_update(
                coord_client, lambda u: u.round == 2 and u.meta["base_sha256"] == sha3
            )
    # Assert: the forged round is a record like any other, not a high-water mark
    assert [c["round"] for c in progress["completed"]] == [1, 10**9]
    assert second.meta["base_sha256"] == sha2 and third.round == 2


def test_a_second_run_of_a_job_is_trained_again_and_a_resumed_run_is_resent(
    mosquitto_broker, files, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    with mqtt_client(mosquitto_broker, "coordinator") as coord_client:
        # Prepare: run "run-a" of the job: rounds 1 and 2
        coord = coordinator_of(coord_client)
        first = coord.start_round(files, round_=1, run="run-a")
        with client_thread(make_client(mosquitto_broker, files, tmp_path)):
            wait_for_update(coord_client, lambda u: u.round == 1)
            sha2 = coord.global_weights(files.shifted(0.001), 2)
            coord.announce(
                2, [DEVICE], model_sha256=first.model_sha256, global_sha256=sha2, run="run-a"
            )
            wait_for_update(coord_client, lambda u: u.round == 2)
        # Execute: a second run of the same job and model (the export is deterministic, so
        # round 1 starts from the same weights), after the board restarted
        with client_thread(make_client(mosquitto_broker, files, tmp_path)):
            coord.global_weights(files.initial, 1)
            again = coord.announce(
                1,
                [DEVICE],
                model_sha256=first.model_sha256,
                global_sha256=first.global_sha256,
                run="run-b",
            )
            retrained = wait_for_update(
                coord_client, lambda u: u.round == 1 and caplog.text.count("round 1: training") == 2
            )
            # ... and the coordinator of run-b resumes (--resume keeps the run): round 1 again
            coord.announce(
                1,
                [DEVICE],
                model_sha256=first.model_sha256,
                global_sha256=first.global_sha256,
                run=again.run,
                deadline=again.deadline + 10,
            )
            deadline = time.monotonic() + 30
            while "resent the update already computed" not in caplog.text:
                assert time.monotonic() < deadline, "the resumed round was not resent"
                time.sleep(0.05)
    # Assert: trained once per run, resent on resume
    assert caplog.text.count("round 1: training") == 2
    assert "already completed" not in caplog.text
    assert retrained.meta["base_sha256"] == first.global_sha256
