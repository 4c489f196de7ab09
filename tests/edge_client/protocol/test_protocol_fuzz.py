"""Property tests: malformed input only ever raises ProtocolError, never another exception,
and corruption of a checksummed region never goes unnoticed.

What the checksums cover (docs/protocol.md, sections 3 and 4): an envelope's ``sha256`` covers
its body only, not its 12-byte prefix (checked field by field) nor its JSON header; every
envelope travels as chunks, whose whole-message sha256 covers all of it, header included, and
each chunk's data sha256 covers its slice. So a changed header byte may still decode as an
envelope, but never gets through the chunk layer.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_client.errors import ProtocolError
from edge_client.protocol import (
    CHUNK_HEADER_SIZE,
    DeviceStatus,
    JobControl,
    Reassembler,
    RoundAnnouncement,
    RoundMetrics,
    Topics,
    decode,
    encode_weights,
    split,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID_UPDATE = encode_weights(
    {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([3], np.int64)},
    kind="update",
    job="demo",
    round=1,
    sender="pi-01",
    samples=10,
    meta={"loss": 0.5},
)
VALID_CHUNKS = split(VALID_UPDATE, 200)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def _only_protocol_errors(call, *args) -> None:  # noqa: ANN001
    with contextlib.suppress(ProtocolError):
        call(*args)


@FUZZ
@given(st.binary(max_size=600))
def test_decode_random_bytes(data: bytes) -> None:
    _only_protocol_errors(decode, data)
    _only_protocol_errors(decode, b"EFLM\x01\x00\x00\x00" + data)


HEADER_LEN = int.from_bytes(VALID_UPDATE[8:12], "little")
VALID_HEADER = json.loads(VALID_UPDATE[12 : 12 + HEADER_LEN])
VALID_BODY = VALID_UPDATE[12 + HEADER_LEN :]
JSON_HEADER = range(12, 12 + HEADER_LEN)  # the only bytes the envelope's sha256 leaves out


def _with_byte(data: bytes, position: int, value: int) -> bytes:
    return data[:position] + bytes([value]) + data[position + 1 :]


@FUZZ
@given(st.integers(0, len(VALID_UPDATE) - 1), st.integers(1, 255), st.integers(1, 40))
def test_decode_mutated_envelope(position: int, xor: int, cut: int) -> None:
    mutated = _with_byte(VALID_UPDATE, position, VALID_UPDATE[position] ^ xor)
    with contextlib.suppress(ProtocolError):
        _decode_and_read(mutated)
        assert position in JSON_HEADER, f"byte {position} corrupted and still decoded"
    with pytest.raises(ProtocolError):
        _decode_and_read(VALID_UPDATE[:-cut])


def test_every_corruption_of_the_prefix_or_body_is_detected() -> None:
    # Execute: every byte of the 12-byte prefix and of the body, every other value
    undetected = []
    for position in [*range(12), *range(12 + HEADER_LEN, len(VALID_UPDATE))]:
        for value in range(256):
            if value == VALID_UPDATE[position]:
                continue
            try:
                _decode_and_read(_with_byte(VALID_UPDATE, position, value))
            except ProtocolError:
                continue
            undetected.append((position, value))
    # Assert
    assert undetected == []


def test_header_corruption_that_decodes_is_caught_by_the_chunk_checksum() -> None:
    # Prepare: every single-bit flip of the JSON header that still decodes as an envelope
    # (e.g. a digit of "loss" or of "samples": the envelope's sha256 covers only the body)
    decoding = []
    for position in JSON_HEADER:
        for bit in range(8):
            mutated = _with_byte(VALID_UPDATE, position, VALID_UPDATE[position] ^ (1 << bit))
            with contextlib.suppress(ProtocolError):
                _decode_and_read(mutated)
                decoding.append(mutated)
    assert decoding  # there are such flips: the header is not the envelope checksum's job
    # Execute: each one in transit, as the data of the original chunks (one chunk, many)
    accepted = []
    for mutated in decoding:
        for chunks in (split(VALID_UPDATE), VALID_CHUNKS):
            size = len(chunks[0]) - CHUNK_HEADER_SIZE
            moved = [
                c[:CHUNK_HEADER_SIZE] + mutated[i * size : (i + 1) * size]
                for i, c in enumerate(chunks)
            ]
            accepted += _reassembled(moved)
    # Assert
    assert accepted == []


def _reassembled(chunks: list[bytes]) -> list[bytes]:
    """Every message a fresh Reassembler returns for these chunks, fed in order."""
    reassembler, out = Reassembler(), []
    for index, chunk in enumerate(chunks):
        with contextlib.suppress(ProtocolError):
            message = reassembler.feed("t", chunk, index=index)
            if message is not None:
                out.append(message)
    return out


@pytest.mark.parametrize("chunks", [split(VALID_UPDATE), VALID_CHUNKS], ids=["1-chunk", "5-chunks"])
def test_every_chunk_corruption_is_detected_or_harmless(chunks: list[bytes]) -> None:
    # Execute: every byte of every chunk, every bit flipped and set to 0x00 and 0xFF
    wrong, complete_after = [], set()
    for which, chunk in enumerate(chunks):
        for position in range(len(chunk)):
            values = {chunk[position] ^ (1 << bit) for bit in range(8)} | {0, 255}
            for value in values - {chunk[position]}:
                corrupted = list(chunks)
                corrupted[which] = _with_byte(chunk, position, value)
                got = _reassembled(corrupted)
                wrong += [(which, position, value) for m in got if m != VALID_UPDATE]
                complete_after |= {position for _ in got}
    # Assert: nothing but the original ever comes out. It comes out only when the message id
    # (bytes 8-23) of a 1-chunk message changed: the id is an opaque key, not content.
    assert wrong == []
    assert complete_after == (set(range(8, 24)) if len(chunks) == 1 else set())


HEADER_KEYS = [*VALID_HEADER, "name", "dtype", "shape", "offset", "nbytes", "scale"]

small_ints = st.integers(-2, 40) | st.sampled_from([0, 2**31, 2**63, 10**30])
tensor_entries = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["w", "n", "x", ""]),
        "dtype": st.sampled_from(["float32", "float16", "int8", "int64", "uint8", "bool"]),
        "shape": st.lists(small_ints, max_size=3),
        "offset": small_ints,
        "nbytes": small_ints,
    },
    optional={"scale": st.none() | st.floats(allow_nan=False) | st.integers(-1, 2)},
)


@pytest.mark.slow
@FUZZ
@given(
    st.dictionaries(st.sampled_from(HEADER_KEYS), json_values),
    st.none() | st.lists(tensor_entries, max_size=3),
)
def test_decode_random_headers(fields: dict, tensors: list | None) -> None:
    header = {**VALID_HEADER, **fields}
    if tensors is not None:
        header["tensors"] = tensors
    raw = json.dumps(header).encode()
    payload = VALID_UPDATE[:8] + len(raw).to_bytes(4, "little") + raw + VALID_BODY
    _only_protocol_errors(_decode_and_read, payload)


def _decode_and_read(payload: bytes) -> None:
    envelope = decode(payload)
    if envelope.kind in ("update", "global"):
        envelope.weights()


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.binary(max_size=300)), max_size=8))
def test_reassembler_random_chunks(feeds: list[tuple[str, bytes]]) -> None:
    reassembler = Reassembler(max_bytes=10_000)
    for topic, data in feeds:
        _only_protocol_errors(reassembler.feed, topic, data)
        _only_protocol_errors(reassembler.feed, topic, b"EFLC\x01\x00\x00\x00" + data)


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, len(VALID_CHUNKS) - 1), st.integers(0, 199), st.integers(0, 255)),
        max_size=12,
    )
)
def test_reassembler_mutated_chunks(edits: list[tuple[int, int, int]]) -> None:
    reassembler = Reassembler()
    for which, position, value in edits:
        chunk = VALID_CHUNKS[which]
        position %= len(chunk)
        mutated = chunk[:position] + bytes([value]) + chunk[position + 1 :]
        with contextlib.suppress(ProtocolError):
            message = reassembler.feed("t", mutated)
            assert message in (None, VALID_UPDATE)  # never a corrupted message
    assert reassembler.pending_bytes <= reassembler.max_bytes


@FUZZ
@given(st.text(max_size=80) | st.from_regex(r"fl/v1/demo/[a-z]{0,8}(/[^/]{0,6}){0,3}"))
def test_topics_parse_random_strings(topic: str) -> None:
    _only_protocol_errors(Topics("demo").parse, topic)


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_every_from_json_random_bytes(data: bytes) -> None:
    for cls in (RoundAnnouncement, DeviceStatus, RoundMetrics, JobControl):
        _only_protocol_errors(cls.from_json, data)


@pytest.mark.slow
@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "v",
                "job",
                "round",
                "deadline",
                "selected",
                "hyperparams",
                "model_sha256",
                "global_sha256",
                "encoding",
                "state",
                "device",
                "time",
                "detail",
                "interpreter",
                "samples",
                "heartbeat_s",
                "version",
                "accuracy",
                "loss",
                "participants",
                "bytes_up",
                "bytes_down",
                "duration_s",
                "extra",
            ]
        ),
        json_values,
    )
)
def test_every_from_json_random_objects(obj: dict) -> None:
    data = json.dumps(obj).encode()
    for cls in (RoundAnnouncement, DeviceStatus, RoundMetrics, JobControl):
        _only_protocol_errors(cls.from_json, data)


IMPORT_CHECK = """
import os, sys, sysconfig
before = set(sys.modules)
import edge_client.protocol
import numpy
base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
stdlib = [sysconfig.get_paths(vars=base)[k] for k in ("stdlib", "platstdlib")]
ours = [os.path.dirname(numpy.__file__), os.path.dirname(sys.modules["edge_client"].__file__)]
for name in sorted(set(sys.modules) - before):
    path = getattr(sys.modules[name], "__file__", None)  # None: builtin or cython internals
    if not path or any(path.startswith(d) for d in ours):
        continue
    if "-packages" in path or not any(path.startswith(d) for d in stdlib):
        print(name, path)
"""


def test_protocol_imports_only_stdlib_and_numpy() -> None:
    # Prepare: a fresh interpreter, so other tests' imports do not count
    root = Path(__file__).resolve().parents[3]
    path = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])

    # Execute
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": path},
    )

    # Assert
    assert result.stdout == ""
