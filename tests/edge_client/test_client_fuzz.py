"""Fuzzing a board: hypothesis-made payloads on the model, global, round and control topics
(random bytes, mutated valid chunks and messages, random JSON) reach a running EdgeClient.
It never raises, never hits an unexpected-error path, and still trains the next real round."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_client_support import ModelFiles, Rig

from edge_client.protocol import (
    JobControl,
    RoundAnnouncement,
    Topics,
    encode_model,
    encode_weights,
    split,
)
from edge_client.transport import Message

T = Topics("demo")
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Errors(logging.Handler):
    """Collects ERROR records of the client's unexpected-error paths."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "unexpected" in record.getMessage():
            self.records.append(record)


@pytest.fixture(scope="module")
def board(export_dir, tmp_path_factory):
    files = ModelFiles.load(export_dir("mlp"))
    rig = Rig.create(files, tmp_path_factory.mktemp("fuzz-board"))
    client = rig.client()
    errors = Errors()
    logging.getLogger("edge_client").addHandler(errors)
    yield rig, client, errors
    logging.getLogger("edge_client").removeHandler(errors)


def _corpus() -> list[bytes]:
    small = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    glob = encode_weights(small, kind="global", job="demo", round=1, sender="coordinator")
    fake_model = encode_model(b"TFL3" + bytes(300), {"format_version": 1}, job="demo", sender="coordinator")  # fmt: skip
    ann = RoundAnnouncement("demo", 7, 1e12, ("pi-01",), {"epochs": 1}, "0" * 64, "1" * 64)
    return [
        *split(glob, 120),
        *split(fake_model, 10_000),
        ann.to_json(),
        JobControl("demo", "paused", 1.0).to_json(),  # older than the client: ignored
    ]


CORPUS = _corpus()
TOPICS = [
    T.model + "/0",
    T.model + "/1",
    T.global_weights + "/0",
    T.round,
    T.control,
    "fl/v1/demo/x",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    base = draw(st.sampled_from(CORPUS))
    if draw(st.booleans()):
        i = draw(st.integers(0, len(base) - 1))
        return base[:i] + bytes([draw(st.integers(0, 255))]) + base[i + 1 :]
    return base[: draw(st.integers(0, len(base)))]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["v", "job", "round", "state", "selected", "time"]), inner
        )
    ),
    max_leaves=12,
)
payloads = st.one_of(
    st.binary(max_size=400), mutated(), json_values.map(lambda v: json.dumps(v).encode())
)


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(TOPICS), payloads), min_size=1, max_size=6))
def test_fuzzed_model_global_round_and_control_messages_never_crash_a_board(board, messages):
    rig, client, errors = board
    for topic, payload in messages:
        client.transport._deliver(Message(topic, payload))  # type: ignore[attr-defined]
    for _ in range(len(messages) + 2):
        client.step(0)  # raises nothing by contract; the handler must not hit a bug either
    assert errors.records == []
    assert rig.updates() == []  # nothing of the fuzz made it train


def test_after_the_fuzzing_the_board_trains_a_real_round(board):
    rig, client, errors = board
    client.job_state = "running"
    ann = rig.coord.start_round(rig.files, round_=1000)
    rig.drain(client)
    updates = [u for u in rig.updates() if u.kind == "update"]
    assert [u.round for u in updates] == [1000] and updates[0].meta[
        "base_sha256"
    ] == ann.global_sha256
    assert errors.records == []
