"""Binary envelopes: round trips, the documented layout, and every rejection."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

from edge_client.errors import ProtocolError
from edge_client.protocol import (
    DEFAULT_MAX_HEADER,
    Envelope,
    decode,
    encode_failure,
    encode_model,
    encode_weights,
    weights_sha256,
)


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "conv1/kernel": rng.normal(size=(3, 3, 1, 8)).astype(np.float32),  # [kh, kw, in, out]
        "conv1/bias": rng.normal(size=(8,)).astype(np.float32),
        "dense/kernel": rng.normal(size=(72, 10)).astype(np.float64),  # cast to float32 on wire
        "step": np.array([41], dtype=np.int64),
        "scalar": np.float32(0.25),
        "empty": np.zeros((0, 4), dtype=np.float32),
    }


def _update(**overrides: object) -> bytes:
    args: dict = dict(kind="update", job="demo", round=3, sender="pi-01", samples=12000)
    args.update(overrides)
    return encode_weights(_weights(), **args)


def test_float32_update_round_trips_exactly() -> None:
    # Prepare
    weights = _weights()
    meta = {"loss": 0.41, "accuracy": 0.87, "duration_s": 12.5, "base_sha256": "0" * 64}

    # Execute
    payload = encode_weights(
        weights, kind="update", job="demo", round=3, sender="pi-01", samples=12000, meta=meta
    )
    envelope = decode(payload, expect_job="demo", expect_kind="update", expect_sender="pi-01")
    decoded = envelope.weights()

    # Assert
    assert (envelope.kind, envelope.job, envelope.round, envelope.sender) == (
        "update",
        "demo",
        3,
        "pi-01",
    )
    assert envelope.samples == 12000
    assert envelope.meta == meta
    assert envelope.encoding == "float32"
    assert list(decoded) == list(weights)  # header order = mapping order
    for name, original in weights.items():
        expected = original.astype(np.float32) if original.dtype.kind == "f" else original
        assert decoded[name].dtype == expected.dtype
        assert decoded[name].shape == np.shape(original)
        np.testing.assert_array_equal(decoded[name], expected)
    assert envelope.weights_sha256() == weights_sha256(weights)


def test_float16_global_round_trips_within_half_precision() -> None:
    # Prepare
    weights = _weights()

    # Execute
    payload = encode_weights(
        weights, kind="global", job="demo", round=4, sender="coordinator", encoding="float16"
    )
    envelope = decode(payload)
    decoded = envelope.weights()

    # Assert
    assert envelope.encoding == "float16"
    assert {t.name: t.dtype for t in envelope.tensors}["conv1/kernel"] == "float16"
    assert {t.name: t.dtype for t in envelope.tensors}["step"] == "int64"
    assert decoded["conv1/kernel"].dtype == np.float32
    np.testing.assert_allclose(decoded["conv1/kernel"], weights["conv1/kernel"], rtol=1e-3)
    np.testing.assert_array_equal(decoded["step"], weights["step"])
    assert len(payload) < len(_update())


def test_int8_quantized_weights_round_trip_within_one_step() -> None:
    # Prepare
    weights = _weights()

    # Execute
    envelope = decode(_update(encoding="int8"))
    decoded = envelope.weights()

    # Assert
    for spec in envelope.tensors:
        if spec.name == "step":
            assert spec.scale is None
            continue
        original = np.asarray(weights[spec.name], dtype=np.float32)
        assert decoded[spec.name].dtype == np.float32
        assert np.all(np.abs(decoded[spec.name] - original) <= spec.scale / 2 + 1e-6)


def test_float16_refuses_values_it_cannot_hold() -> None:
    with pytest.raises(ProtocolError, match="float16 range"):
        encode_weights(
            {"w": np.array([1e6], dtype=np.float32)},
            kind="update",
            job="demo",
            round=0,
            sender="pi-01",
            encoding="float16",
        )


def test_unsupported_dtypes_and_kinds_are_refused() -> None:
    with pytest.raises(ProtocolError, match="dtype"):
        encode_weights({"w": np.array([1j])}, kind="update", job="d", round=0, sender="p")
    with pytest.raises(ProtocolError, match="weights kind"):
        encode_weights({}, kind="model", job="d", round=0, sender="p")
    with pytest.raises(ProtocolError, match="weights encoding"):
        encode_weights({}, kind="update", job="d", round=0, sender="p", encoding="bfloat16")


def test_body_is_numpy_decodable_with_only_json_and_frombuffer() -> None:
    # Prepare: what docs/protocol.md shows a reader doing by hand
    weights = _weights()
    payload = _update()

    # Execute
    magic, version, reserved, header_len = struct.unpack_from("<4sB3sI", payload)
    header = json.loads(payload[12 : 12 + header_len])
    body = payload[12 + header_len :]
    manual = {
        t["name"]: np.frombuffer(
            body,
            dtype="<" + np.dtype(t["dtype"]).str[1:],
            count=int(np.prod(t["shape"])),
            offset=t["offset"],
        ).reshape(t["shape"])
        for t in header["tensors"]
        if t["nbytes"]
    }

    # Assert
    assert (magic, version, reserved) == (b"EFLM", 1, b"\0\0\0")
    assert header["sha256"] == hashlib.sha256(body).hexdigest()
    assert header["size"] == len(body)
    np.testing.assert_array_equal(manual["conv1/kernel"], weights["conv1/kernel"])
    np.testing.assert_array_equal(manual["step"], weights["step"])
    offsets = [(t["offset"], t["nbytes"]) for t in header["tensors"]]
    assert all(a + n == b for (a, n), (b, _) in zip(offsets, offsets[1:], strict=False))


def test_model_envelope_carries_tflite_bytes_and_manifest() -> None:
    # Prepare
    tflite = b"\x1c\x00\x00\x00TFL3" + bytes(range(256)) * 4
    manifest = {"weights": [{"name": "w", "shape": [2], "dtype": "float32"}], "batch_size": 32}

    # Execute
    envelope = decode(encode_model(tflite, manifest, job="demo", sender="coordinator"))

    # Assert
    assert envelope.kind == "model"
    assert envelope.body == tflite
    assert envelope.meta == manifest
    assert envelope.sha256 == hashlib.sha256(tflite).hexdigest()
    assert envelope.encoding == "tflite"
    with pytest.raises(ProtocolError, match="no weights"):
        envelope.weights()


def test_failure_envelope_carries_reason() -> None:
    # Execute
    envelope = decode(
        encode_failure("demo", 7, "pi-01", "out of memory", meta={"interpreter": "litert"}),
        expect_kind=("update", "failure"),
    )

    # Assert
    assert (envelope.kind, envelope.round, envelope.sender) == ("failure", 7, "pi-01")
    assert envelope.reason == "out of memory"
    assert envelope.meta["interpreter"] == "litert"
    assert envelope.body == b""


def test_envelope_to_bytes_is_stable() -> None:
    payload = _update()

    assert decode(payload).to_bytes() == payload


def test_weights_sha256_ignores_order_and_detects_changes() -> None:
    # Prepare
    weights = _weights()
    reordered = dict(reversed(list(weights.items())))
    changed = dict(weights, **{"conv1/bias": weights["conv1/bias"] + 1e-3})
    reshaped = dict(weights, **{"conv1/bias": weights["conv1/bias"].reshape(2, 4)})
    renamed = {("x" + k): v for k, v in weights.items()}

    # Execute
    digests = [weights_sha256(w) for w in (weights, reordered, changed, reshaped, renamed)]

    # Assert
    assert digests[0] == digests[1]
    assert len(set(digests[1:])) == 4
    assert digests[0] not in digests[2:]


def _patch_header(payload: bytes, **changes: object) -> bytes:
    header_len = struct.unpack_from("<I", payload, 8)[0]
    header = json.loads(payload[12 : 12 + header_len])
    header.update(changes)
    raw = json.dumps(header).encode()
    return payload[:8] + struct.pack("<I", len(raw)) + raw + payload[12 + header_len :]


def _corrupt(payload: bytes, case: str) -> bytes:
    if case == "magic":
        return b"XXXX" + payload[4:]
    if case == "version":
        return payload[:4] + b"\x02" + payload[5:]
    if case == "reserved":
        return payload[:5] + b"\x01" + payload[6:]
    if case == "truncated":
        return payload[:-1]
    if case == "short":
        return payload[:10]
    if case == "body":
        return payload[:-1] + bytes([payload[-1] ^ 0xFF])
    if case == "header_len":
        return payload[:8] + struct.pack("<I", len(payload)) + payload[12:]
    if case == "not_json":
        return payload[:12] + b"[" + payload[13:]
    raise AssertionError(case)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("magic", "magic"),
        ("version", "unsupported envelope version 2"),
        ("reserved", "reserved"),
        ("truncated", "header says"),
        ("short", "shorter than"),
        ("body", "sha256 mismatch"),
        ("header_len", "truncated"),
        ("not_json", "not valid UTF-8 JSON"),
    ],
)
def test_damaged_envelopes_are_rejected(case: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode(_corrupt(_update(), case))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"v": 2}, "header version"),
        ({"kind": "gradient"}, "envelope kind"),
        ({"job": "a/b"}, "job id"),
        ({"round": -1}, "round"),
        ({"round": True}, "round"),
        ({"sha256": "0" * 64}, "sha256 mismatch"),
        ({"sha256": "XYZ"}, "sha256"),
        ({"encoding": "tflite"}, "encoding"),
        ({"samples": "many"}, "samples"),
        ({"meta": []}, "meta"),
        ({"tensors": {}}, "tensors"),
        ({"tensors": [{"name": "w"}]}, "missing field"),
        (
            {
                "tensors": [
                    {"name": "w", "dtype": "float64", "shape": [1], "offset": 0, "nbytes": 8}
                ]
            },
            "dtype",
        ),
        (
            {
                "tensors": [
                    {"name": "w", "dtype": "float32", "shape": [3], "offset": 0, "nbytes": 8}
                ]
            },
            "nbytes",
        ),
        (
            {
                "tensors": [
                    {
                        "name": "w",
                        "dtype": "float32",
                        "shape": [10**6],
                        "offset": 0,
                        "nbytes": 4 * 10**6,
                    }
                ]
            },
            "past the",
        ),
        (
            {
                "tensors": [
                    {"name": "a", "dtype": "float32", "shape": [2], "offset": 0, "nbytes": 8},
                    {"name": "b", "dtype": "float32", "shape": [2], "offset": 4, "nbytes": 8},
                ]
            },
            "overlaps",
        ),
        (
            {
                "tensors": [
                    {"name": "a", "dtype": "float32", "shape": [1], "offset": 0, "nbytes": 4},
                    {"name": "a", "dtype": "float32", "shape": [1], "offset": 4, "nbytes": 4},
                ]
            },
            "twice",
        ),
        (
            {
                "tensors": [
                    {
                        "name": "a",
                        "dtype": "float32",
                        "shape": [1],
                        "offset": 0,
                        "nbytes": 4,
                        "scale": 0.5,
                    }
                ]
            },
            "scale",
        ),
        ({"size": 1}, "header says 1"),
    ],
)
def test_inconsistent_headers_are_rejected(changes: dict, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode(_patch_header(_update(), **changes))


def test_missing_header_fields_are_named() -> None:
    payload = _update()
    header_len = struct.unpack_from("<I", payload, 8)[0]
    header = json.loads(payload[12 : 12 + header_len])
    del header["sender"], header["sha256"]
    raw = json.dumps(header).encode()
    broken = payload[:8] + struct.pack("<I", len(raw)) + raw + payload[12 + header_len :]

    with pytest.raises(ProtocolError, match="missing field.*sender, sha256"):
        decode(broken)


def test_unknown_header_fields_are_ignored() -> None:
    envelope = decode(_patch_header(_update(), compression=None, future={"x": 1}))

    assert envelope.samples == 12000


def test_oversized_header_is_rejected_before_parsing() -> None:
    payload = _update()
    header_len = struct.unpack_from("<I", payload, 8)[0]

    with pytest.raises(ProtocolError, match="limit"):
        decode(payload, max_header=header_len - 1)
    fake = payload[:8] + struct.pack("<I", DEFAULT_MAX_HEADER + 1) + payload[12:]
    with pytest.raises(ProtocolError, match="limit"):
        decode(fake)


@pytest.mark.parametrize(
    ("expectation", "message"),
    [
        ({"expect_job": "other"}, "job 'demo', expected 'other'"),
        ({"expect_kind": "global"}, "expected global"),
        ({"expect_sender": "pi-02"}, "does not match"),
    ],
)
def test_expectations_reject_other_jobs_kinds_and_senders(expectation: dict, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        decode(_update(), **expectation)


def test_envelope_construction_validates_body_digest() -> None:
    with pytest.raises(ProtocolError, match="sha256 mismatch"):
        Envelope(
            kind="model",
            job="demo",
            round=0,
            sender="c",
            encoding="tflite",
            sha256="0" * 64,
            body=b"x",
        )


def test_failure_requires_reason_and_empty_body() -> None:
    empty = hashlib.sha256(b"").hexdigest()
    with pytest.raises(ProtocolError, match="reason"):
        Envelope(kind="failure", job="demo", round=0, sender="p", encoding="none", sha256=empty)


def test_meta_must_be_strict_json() -> None:
    with pytest.raises(ProtocolError, match="strict JSON"):
        _update(meta={"loss": float("nan")})
