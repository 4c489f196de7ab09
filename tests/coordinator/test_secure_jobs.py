"""Secure aggregation in whole jobs: the coordinator (run_job), a real Mosquitto, real
`fedge run` boards and, where a test needs a board to drop out or misbehave at one stage, real
edge clients in threads whose stage messages are dropped or forged (secure_support.py)."""

from __future__ import annotations

import dataclasses
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest

from coordinator.aggregation import weighted_average
from coordinator.config import JobConfig
from coordinator.job import run_job
from coordinator.run_dir import RunDir
from coordinator.simulation import ROOT
from edge_client.manifest import Manifest
from edge_client.protocol import (
    DeviceStatus,
    Envelope,
    JobControl,
    Keys,
    Masked,
    RoundAnnouncement,
    Shares,
    Topics,
    UnmaskReply,
    decode,
    encode_masked,
    encode_shares,
    encode_weights,
    read_stage,
)
from edge_client.protocol.secagg import CIPHERTEXT_BYTES
from edge_client.secagg import Ring, to_signed
from edge_client.secure_round import quantized_update
from edge_client.trainable_model import TrainableModel
from edge_client.transport import BrokerConfig
from tests.coordinator.secure_support import (
    HookedBoard,
    board_log,
    drop_at,
    envelopes,
    hold_at,
    local_data,
    of_job,
    real_boards,
)
from tests.fixtures.brokers import FixtureClient, mqtt_client

pytestmark = pytest.mark.slow  # over ~5 s: left out of the fast loop (pytest -m "not slow")

BASE = dict(rounds=1, min_devices=3, round_timeout=120, wait_timeout=90, epochs=1, lr=0.05)


def test_a_secure_round_is_plain_fedavg_of_the_same_updates_and_hides_each_one(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: the same 3 boards (same data, same deterministic training) in a plain job
    # and in a secure one, a recorder on every topic
    model = export_dir("mlp")
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    common = {**BASE, "model_dir": str(model)}
    plain = JobConfig(job="plain", run_dir=str(tmp_path / "plain"), **common)
    secure = JobConfig(
        job="secure", run_dir=str(tmp_path / "secure"), secure_aggregation=True, **common
    )
    with mqtt_client(mosquitto_broker, "recorder") as recorder:
        recorder.subscribe_wait("fl/v1/#", qos=1)
        # Execute
        with real_boards(plain, broker, tmp_path / "p", 3):
            run_job(plain, broker=broker, final_models=False)
        with real_boards(secure, broker, tmp_path / "s", 3):
            state = run_job(secure, broker=broker, final_models=False)
        messages = recorder.collector.matching("fl/v1/#")
    # Assert 1: the secure global is FedAvg of the plain job's updates, within the bound
    updates = {
        env.sender: (env.weights(), env.samples)
        for kind, env in envelopes(messages, Topics("plain"))
        if kind == "update" and env.kind == "update"
    }
    assert sorted(updates) == ["sim-00", "sim-01", "sim-02"]
    fedavg = weighted_average(updates.values())
    secure_weights, _ = RunDir(tmp_path / "secure").load_weights(state)
    (m,) = state.history
    bound = m.secagg["error_bound"]
    assert m.participants == ("sim-00", "sim-01", "sim-02") and 0 < bound < 1e-6
    assert m.samples == sum(n for _, n in updates.values())
    for name, expected in fedavg.items():
        ulp = np.spacing(np.abs(expected))
        assert np.all(np.abs(secure_weights[name] - expected) <= bound + ulp), name
    manifest = Manifest.load(model / "manifest.json")
    tflite = (model / "model.tflite").read_bytes()
    start = TrainableModel(tflite, manifest, num_threads=1).get_weights()  # round 1's global
    assert not all(np.array_equal(secure_weights[k], start[k]) for k in start)  # it trained
    # Assert 2: what the boards sent in the secure job is keys, ciphertexts, masked vectors
    # and returned shares; no update, and no byte run of any board's true weights
    topics = Topics("secure")
    kinds = ("update", "secagg", "status", "control")  # what the coordinator reads
    sent = [m for m in of_job(messages, topics) if topics.parse(m.topic).kind in kinds]
    stages: dict[str, list] = {}
    for m in sent:
        kind = topics.parse(m.topic).kind
        if kind == "status" and m.payload:
            DeviceStatus.from_json(m.payload)
        elif kind == "control":
            JobControl.from_json(m.payload)
    for kind, env in envelopes(sent, topics):
        assert kind == "secagg", f"a {env.kind} envelope on a {kind} topic"
        msg = read_stage(env)
        stages.setdefault(msg.stage, []).append(msg)
        assert isinstance(msg.body, (Keys, Shares, Masked, UnmaskReply))
    assert {s: len(v) for s, v in stages.items()} == {
        "keys": 3,
        "shares": 3,
        "masked": 3,
        "unmask-reply": 3,
    }
    payloads = [m.payload for m in sent]
    for weights, _ in updates.values():
        raw = max(weights.values(), key=lambda w: w.size).astype("<f4").tobytes()
        for offset in range(0, len(raw) - 32, len(raw) // 7):
            assert not any(raw[offset : offset + 32] in p for p in payloads)
    # Assert 3: no masked vector correlates with its board's quantized change, or its change
    ann = next(
        RoundAnnouncement.from_json(m.payload)
        for m in messages
        if m.topic == topics.round and json.loads(m.payload)["state"] == "open"
    )
    assert ann.encoding == "secagg" and ann.secure is not None
    names = [w.name for w in manifest.weights]
    for msg in stages["masked"]:
        weights, samples = updates[msg.sender]
        ring = Ring(msg.body.bits)
        x = to_signed(quantized_update(weights, start, names, samples, ann.secure), ring)
        y = to_signed(msg.body.vector, ring)
        assert x.shape == y.shape and np.count_nonzero(x[:-1]) > x.shape[0] // 2
        assert abs(np.corrcoef(x[:-1], y[:-1])[0, 1]) < 0.05
        change = np.concatenate([(weights[n] - start[n]).ravel() for n in names])
        assert abs(np.corrcoef(change, y[:-1])[0, 1]) < 0.05
    assert "secure round 1: unmask reply sent" in board_log(tmp_path / "s", 0)


def _as_is(r: int, stage: str, env: Envelope) -> Envelope:
    return env


def _hooked(broker, job, tmp, boards):  # noqa: ANN001, ANN202
    """Start HookedBoards: {device: (partition index, hook)} of 6 partitions."""
    started = []
    for device, (index, hook) in boards.items():
        b = HookedBoard(broker, job, device, local_data(index, 6), tmp / device, hook)
        b.start()
        started.append(b)
    return started


def test_dropouts_after_keys_shares_and_masked_vector_are_recovered(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: 3 real boards and 3 clients that drop out of round 1 after their keys, after
    # their shares and after their masked vector (they stay online: the stages time out)
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    job = JobConfig(
        job="dropouts", run_dir=str(tmp_path / "run"), model_dir=str(export_dir("mlp")),
        secure_aggregation=True, secagg_timeout=4, **{**BASE, "rounds": 2, "min_devices": 6},
    )  # fmt: skip
    hooks = {
        "after-keys": (3, drop_at("shares")),
        "after-shares": (4, drop_at("masked")),
        "after-masked": (5, drop_at("unmask-reply")),
    }
    hooked = _hooked(broker, job.job, tmp_path, hooks)
    try:
        with real_boards(job, broker, tmp_path, 3, of=6):
            # Execute
            state = run_job(job, broker=broker, final_models=False)
    finally:
        for b in hooked:
            b.stop()
    # Assert: round 1 unmasked the 4 vectors that arrived (after-masked's among them, its
    # self seed rebuilt from the others' shares; after-shares' pairwise masks removed)
    first, second = state.history
    real = ["sim-00", "sim-01", "sim-02"]
    assert first.participants == tuple(sorted(["after-masked", *real]))
    s = first.secagg
    assert s["advertised"] == sorted([*hooks, *real])
    assert s["shared"] == sorted(["after-masked", "after-shares", *real])
    assert s["recovered"] == ["after-shares"] and s["threshold"] == 3
    assert s["stages"]["unmask"]["devices"] == 3  # after-masked never answered
    assert first.samples == 3 * 10000 + 2000
    assert second.participants == tuple(sorted([*hooks, *real]))  # all back in round 2
    assert not any(b.errors for b in hooked)
    weights, _ = RunDir(tmp_path / "run").load_weights(state)
    assert all(np.all(np.isfinite(w)) for w in weights.values())


@pytest.mark.parametrize("encoding", ["int8", "float16"])
def test_compressed_global_weights_secure_round_is_fedavg_of_the_boards_updates(
    mosquitto_broker, export_dir, tmp_path, encoding
):
    # Prepare: a secure job whose global weights go out as int8 (or float16); 3 real edge
    # clients that record what they trained from and what they trained (never sent)
    model = export_dir("mlp")
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    job = JobConfig(
        job=f"secure-{encoding}", run_dir=str(tmp_path / "run"), model_dir=str(model),
        secure_aggregation=True, encoding=encoding, **BASE,
    )  # fmt: skip
    boards = _hooked(broker, job.job, tmp_path, {f"b{i}": (i, _as_is) for i in range(3)})
    try:
        # Execute
        state = run_job(job, broker=broker, final_models=False)
    finally:
        for b in boards:
            b.stop()
    # Assert 1: the boards trained from the compressed global (what the coordinator
    # unmasks their changes against), not from the exact one
    manifest = Manifest.load(model / "manifest.json")
    start = TrainableModel((model / "model.tflite").read_bytes(), manifest).get_weights()
    sent = decode(
        encode_weights(start, kind="global", job=job.job, round=1, sender="c", encoding=encoding)
    ).weights()
    began = [b.began for b in boards]
    assert all(len(b) == 1 and b[0][0] == 1 for b in began)
    for ((_, _, base, _),) in began:
        assert all(np.array_equal(base[k], sent[k]) for k in start)
    assert not all(np.array_equal(sent[k], start[k]) for k in start)  # it was compressed
    # Assert 2: the secure global is FedAvg of the boards' trained weights, within the bound
    (m,) = state.history
    assert m.participants == ("b0", "b1", "b2") and m.secagg["stage"] == "done"
    bound = m.secagg["error_bound"]
    assert 0 < bound < 1e-6
    fedavg = weighted_average((trained, n) for ((_, trained, _, n),) in began)
    assert m.samples == sum(n for ((_, _, _, n),) in began)
    weights, _ = RunDir(tmp_path / "run").load_weights(state)
    for name, expected in fedavg.items():
        ulp = np.spacing(np.abs(expected))
        assert np.all(np.abs(weights[name] - expected) <= bound + ulp), name
    assert not any(b.errors for b in boards)


def _sent_masked(recorder: FixtureClient, topics: Topics, device: str) -> bool:
    """Whether ``device``'s masked vector (all its chunks) has crossed the broker."""
    messages = recorder.collector.matching(f"{topics.secagg(device)}/#")
    return any(read_stage(env).stage == "masked" for _, env in envelopes(messages, topics))


def _wait(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_board_process_killed_after_its_masked_vector_is_still_in_the_sum(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: 3 real `fedge run` boards and one edge client ("gate") that holds its masked
    # vector until sim-00 is dead, so the masked stage is open when the kill happens; the
    # same 4 boards first run a plain job, whose updates are the reference (deterministic
    # training from the same global)
    model = export_dir("mlp")
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    common = {**BASE, "model_dir": str(model), "min_devices": 4}
    plain = JobConfig(job="plain", run_dir=str(tmp_path / "plain"), **common)
    secure = JobConfig(
        job="killed", run_dir=str(tmp_path / "secure"), secure_aggregation=True, **common
    )
    released = threading.Event()
    with mqtt_client(mosquitto_broker, "recorder") as recorder:
        recorder.subscribe_wait("fl/v1/#", qos=1)
        (gate,) = _hooked(broker, plain.job, tmp_path / "p", {"gate": (3, _as_is)})
        try:
            with real_boards(plain, broker, tmp_path / "p", 3, of=4):
                run_job(plain, broker=broker, final_models=False)
        finally:
            gate.stop()
        (gate,) = _hooked(
            broker, secure.job, tmp_path / "s", {"gate": (3, hold_at("masked", released))}
        )
        topics = Topics(secure.job)
        try:
            with real_boards(secure, broker, tmp_path / "s", 3, of=4) as procs:

                def kill_after_masked() -> None:
                    try:
                        _wait(lambda: _sent_masked(recorder, topics, "sim-00"), "sim-00's vector")
                        procs[0].send_signal(signal.SIGKILL)
                        procs[0].wait(10)
                        _wait(  # its Last Will: the coordinator drops it, waits for it no more
                            lambda: any(
                                DeviceStatus.from_json(m.payload).state == "offline"
                                for m in recorder.collector.matching(topics.status("sim-00"))
                                if m.payload
                            ),
                            "sim-00's offline status",
                        )
                    finally:
                        released.set()

                killer = threading.Thread(target=kill_after_masked, daemon=True)
                killer.start()
                # Execute
                state = run_job(secure, broker=broker, final_models=False)
                killer.join(10)
        finally:
            released.set()
            gate.stop()
        messages = recorder.collector.matching("fl/v1/#")
    # Assert 1: sim-00 was killed after its masked vector and before it could answer
    assert procs[0].returncode == -signal.SIGKILL
    log = board_log(tmp_path / "s", 0)
    assert "unmask reply sent" not in log and "Traceback" not in log
    # Assert 2: the round completed with all 4 vectors: sim-00's self mask was rebuilt from
    # the survivors' shares, so its update is in the sum (docs/secure-aggregation.md)
    (m,) = state.history
    everyone = ("gate", "sim-00", "sim-01", "sim-02")
    assert m.participants == everyone and m.secagg["stage"] == "done"
    assert m.dropped == ("sim-00",) and m.secagg["recovered"] == []
    assert m.secagg["stages"]["unmask"]["devices"] == 3 and m.secagg["threshold"] <= 3
    # Assert 3: it is FedAvg of the same 4 boards' plain updates, within the bound
    updates = {
        env.sender: (env.weights(), env.samples)
        for kind, env in envelopes(messages, Topics(plain.job))
        if kind == "update" and env.kind == "update"
    }
    assert tuple(sorted(updates)) == everyone and m.samples == sum(n for _, n in updates.values())
    fedavg = weighted_average(updates.values())
    weights, _ = RunDir(tmp_path / "secure").load_weights(state)
    bound = m.secagg["error_bound"]
    for name, expected in fedavg.items():
        ulp = np.spacing(np.abs(expected))
        assert np.all(np.abs(weights[name] - expected) <= bound + ulp), name
    assert not gate.errors


def test_fewer_than_the_threshold_fails_the_round_cleanly_and_the_job_goes_on(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: 2 real boards and 4 clients that drop out of round 1 after their shares:
    # 2 masked vectors, threshold 3; no retry
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    model = export_dir("mlp")
    job = JobConfig(
        job="toofew", run_dir=str(tmp_path / "run"), model_dir=str(model),
        secure_aggregation=True, secagg_timeout=4, max_retries=0,
        **{**BASE, "rounds": 2, "min_devices": 6},
    )  # fmt: skip
    hooks = {f"quits-{i}": (i + 2, drop_at("masked")) for i in range(4)}
    hooked = _hooked(broker, job.job, tmp_path, hooks)
    try:
        with real_boards(job, broker, tmp_path, 2, of=6):
            # Execute
            state = run_job(job, broker=broker, final_models=False)
    finally:
        for b in hooked:
            b.stop()
    # Assert: round 1 failed with its reason and kept the weights; round 2 ran with all 6
    first, second = state.history
    assert first.participants == () and first.updates_aggregated == 0
    assert "only 2 devices sent their masked vectors, the threshold is 3" in first.secagg["failed"]
    run = RunDir(tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["secagg"]["stage"] == "failed"
    manifest = Manifest.load(model / "manifest.json")
    start = TrainableModel((model / "model.tflite").read_bytes(), manifest).get_weights()
    round1 = dataclasses.replace(state, round=1, checkpoint="checkpoints/round-0001.npz")
    after_first = run.load_weights(round1)[0]
    assert all(np.array_equal(after_first[k], start[k]) for k in start)
    assert len(second.participants) == 6 and second.secagg["stage"] == "done"


def _garbage_shares(r: int, stage: str, env: Envelope) -> Envelope | None:
    """Round 1: ciphertexts of random bytes instead of its encrypted shares."""
    if r == 1 and stage == "shares":
        holders = read_stage(env).body
        assert isinstance(holders, Shares)
        garbage = {h: secrets.token_bytes(CIPHERTEXT_BYTES) for h in holders.ciphertexts}
        return encode_shares(env.job, r, env.sender, env.meta["session"], Shares(garbage))
    return env


def _short_vector(r: int, stage: str, env: Envelope) -> Envelope | None:
    """Every round: a masked vector 3 elements short."""
    if stage == "masked":
        masked = read_stage(env).body
        assert isinstance(masked, Masked)
        short = Masked(masked.vector[:-3], masked.bits)
        return encode_masked(env.job, r, env.sender, env.meta["session"], short)
    return env


def test_garbage_shares_or_a_malformed_vector_fail_the_attempt_or_are_excluded_with_a_reason(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: 3 real boards; "forged" encrypts garbage for its holders in round 1, "short"
    # sends a malformed masked vector; a stranger publishes random bytes on stage topics
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    job = JobConfig(
        job="forged", run_dir=str(tmp_path / "run"), model_dir=str(export_dir("mlp")),
        secure_aggregation=True, secagg_timeout=4, **{**BASE, "min_devices": 5},
    )  # fmt: skip
    hooked = _hooked(
        broker, job.job, tmp_path, {"forged": (3, _garbage_shares), "short": (4, _short_vector)}
    )
    try:
        with real_boards(job, broker, tmp_path, 3, of=6), mqtt_client(mosquitto_broker) as x:
            for topic in ("fl/v1/forged/secagg/sim-00/0", "fl/v1/forged/secagg/zz/0"):
                x.publish(topic, secrets.token_bytes(500), qos=1)
            # Execute
            state = run_job(job, broker=broker, final_models=False)
    finally:
        for b in hooked:
            b.stop()
    # Assert: attempt 1 failed naming forged's garbage; attempt 2 left it out; short's vector
    # was refused with its reason both times and its masks removed like a dropout's
    (m,) = state.history
    first_attempt = m.secagg["attempts"][0]
    assert "sent garbage: forged (its encrypted shares did not decrypt for" in first_attempt
    assert m.secagg["attempts"][-1] == "done" and "forged" not in m.selected
    assert m.participants == ("sim-00", "sim-01", "sim-02")
    assert m.secagg["recovered"] == ["short"]
    assert "malformed masked vector" in m.rejected["short"]
    assert not any(b.errors for b in hooked)
    weights, _ = RunDir(tmp_path / "run").load_weights(state)
    assert all(np.all(np.isfinite(w)) for w in weights.values())


def test_an_over_selected_secure_round_closes_its_keys_stage_at_the_target_and_the_slow_board_stops(
    mosquitto_broker, export_dir, tmp_path
):
    # Prepare: 4 real boards, sim-03 forty times slower; 3 vectors needed, 4 selected
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    job = JobConfig(
        job="oversecure", run_dir=str(tmp_path / "run"), model_dir=str(export_dir("mlp")),
        secure_aggregation=True, clients_per_round=3, over_select=1.34,
        **{**BASE, "min_devices": 4},
    )  # fmt: skip
    with real_boards(job, broker, tmp_path, 4, slowdown={3: 40.0}):
        # Execute
        state = run_job(job, broker=broker, final_models=False)
    # Assert: the key list went out at 3 advertisers; sim-03 saw it and stopped training
    (m,) = state.history
    assert m.selected == ("sim-00", "sim-01", "sim-02", "sim-03")
    assert m.participants == ("sim-00", "sim-01", "sim-02")
    assert m.target_updates == 3 and m.cancelled == ("sim-03",)
    assert m.secagg["advertised"] == ["sim-00", "sim-01", "sim-02"] and m.duration_s < 60
    slow = board_log(tmp_path, 3)
    assert "keys stage closed at its target without this device" in slow
    assert "keys advertised" not in slow and "Traceback" not in slow


def test_fedcoord_simulate_runs_a_signed_secure_job_with_boards_that_verify_its_stages(
    mosquitto_broker, export_dir, tmp_path
):
    # Execute: the README's simulated job, secure; its boards get the job's key (--trust-key)
    # and take only stage messages signed with it
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "coordinator.cli", "simulate", "--devices", "3", "--rounds", "1"]
    cmd += ["--broker", mosquitto_broker.url, "--run-dir", str(run_dir), "--secure-aggregation"]
    cmd += ["--model-dir", str(export_dir("mlp")), "--epochs", "1", "--lr", "0.05"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    # Assert
    assert r.returncode == 0, r.stderr[-3000:]
    assert "signed with" in r.stdout  # and simulate gives its boards --trust-key
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["secagg"]["stage"] for m in lines] == ["done"]
    assert all(len(m["participants"]) == 3 for m in lines)
    for i in range(3):
        log = (run_dir / "devices" / f"sim-{i:02d}.log").read_text()
        assert log.count("unmask reply sent") == 1 and "ignoring a stage message" not in log
