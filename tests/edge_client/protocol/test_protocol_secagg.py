"""Secure-aggregation messages: round trips of every stage, the announcement's parameters,
topics, and malformed bodies (ProtocolError naming the problem, nothing else)."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from edge_client.errors import ProtocolError
from edge_client.protocol import (
    KeyList,
    Keys,
    Masked,
    RoundAnnouncement,
    Routed,
    SecAggParams,
    Shares,
    Topics,
    UnmaskReply,
    UnmaskRequest,
    chunked,
    decode,
    encode_key_list,
    encode_keys,
    encode_masked,
    encode_routed,
    encode_shares,
    encode_unmask_reply,
    encode_unmask_request,
    read_stage,
)
from edge_client.protocol.secagg import CIPHERTEXT_BYTES, pack_records, unpack_records

SESSION = "0123456789abcdef"
PARAMS = SecAggParams(SESSION, 1.0, 8192.0, 12000, 20, 32, 30.0)
HEAD = ("demo", 3, "pi-01", SESSION)
CT = bytes(range(CIPHERTEXT_BYTES))


def _round_trip(env):  # type: ignore[no-untyped-def]
    return read_stage(decode(env.to_bytes(), expect_kind="secagg"))


def test_keys_round_trip() -> None:
    msg = _round_trip(encode_keys(*HEAD, Keys(b"c" * 32, b"s" * 32)))
    assert (msg.stage, msg.sender, msg.round, msg.session) == ("keys", "pi-01", 3, SESSION)
    assert msg.body == Keys(b"c" * 32, b"s" * 32)


def test_key_list_round_trip_sorts_members() -> None:
    keys = {"pi-02": Keys(b"a" * 32, b"b" * 32), "pi-01": Keys(b"c" * 32, b"d" * 32)}
    sent = KeyList(keys, 1, 2, b"\x07" * 32, 1767225600.5)
    msg = _round_trip(encode_key_list("demo", 3, "coordinator", SESSION, sent))
    assert isinstance(msg.body, KeyList)
    assert list(msg.body.keys) == ["pi-01", "pi-02"]
    assert msg.body.keys == keys and msg.body.graph_seed == b"\x07" * 32
    assert (msg.body.k, msg.body.threshold, msg.body.deadline) == (1, 2, 1767225600.5)


def test_shares_and_routed_round_trip() -> None:
    shares = _round_trip(encode_shares(*HEAD, Shares({"pi-01": CT, "pi-02": CT[::-1]})))
    routed = _round_trip(encode_routed("demo", 3, "coordinator", SESSION, Routed({"x": CT}, 5.0)))
    assert shares.body == Shares({"pi-01": CT, "pi-02": CT[::-1]})
    assert routed.body == Routed({"x": CT}, 5.0)


@pytest.mark.parametrize("bits", [32, 64])
def test_masked_round_trip_is_little_endian_ring_elements(bits: int) -> None:
    dtype = np.uint32 if bits == 32 else np.uint64
    y = np.array([0, 1, 2**bits - 1, 12345], dtype=dtype)
    env = encode_masked(*HEAD, Masked(y, bits))
    assert env.body[: bits // 8] == bytes(bits // 8)  # element 0, little endian
    assert env.body[bits // 8 : bits // 4] == (1).to_bytes(bits // 8, "little")
    msg = _round_trip(env)
    assert isinstance(msg.body, Masked) and msg.body.bits == bits
    np.testing.assert_array_equal(msg.body.vector, y)
    assert msg.body.vector.dtype == np.dtype(dtype)


def test_unmask_request_and_reply_round_trip() -> None:
    req = _round_trip(
        encode_unmask_request("demo", 3, "coordinator", SESSION, UnmaskRequest(("a", "b"), 9.0))
    )
    reply = UnmaskReply({"a": b"s" * 70}, {"c": b"k" * 70}, ("d",))
    got = _round_trip(encode_unmask_reply(*HEAD, reply))
    assert req.body == UnmaskRequest(("a", "b"), 9.0)
    assert got.body == reply


def test_an_unmask_reply_never_holds_both_shares_of_one_owner() -> None:
    with pytest.raises(ValueError, match="never holds both"):
        encode_unmask_reply(*HEAD, UnmaskReply({"a": b"s" * 70}, {"a": b"k" * 70}))


def test_secure_announcement_round_trip_and_old_encodings() -> None:
    ann = RoundAnnouncement(
        job="demo", round=1, deadline=10.0, selected=("pi-01",), hyperparams={},
        model_sha256="a" * 64, global_sha256="b" * 64, encoding="secagg",
        secagg=PARAMS.to_dict(), run="r1",
    )  # fmt: skip
    back = RoundAnnouncement.from_json(ann.to_json())
    assert back == ann and back.secure == PARAMS
    plain = dataclasses.replace(ann, encoding="float32", secagg=None)
    assert b"secagg" not in plain.to_json() and plain.secure is None


@pytest.mark.parametrize(
    ("encoding", "secagg", "match"),
    [
        ("secagg", None, "encoding 'secagg' and a secagg object"),
        ("float32", PARAMS.to_dict(), "encoding 'secagg' and a secagg object"),
        ("secagg", {**PARAMS.to_dict(), "bits": 16}, "bits must be 32 or 64"),
        ("secagg", {**PARAMS.to_dict(), "session": "xyz"}, "session"),
        ("secagg", {**PARAMS.to_dict(), "scale": 0}, "scale must be positive"),
        ("secagg", {k: v for k, v in PARAMS.to_dict().items() if k != "clip"}, "missing"),
    ],
)
def test_bad_secure_announcements_are_refused(encoding: str, secagg: object, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        RoundAnnouncement(
            job="demo", round=1, deadline=10.0, selected=("pi-01",), hyperparams={},
            model_sha256="a" * 64, global_sha256="b" * 64, encoding=encoding,
            secagg=secagg,  # type: ignore[arg-type]
        )  # fmt: skip


def test_topics_of_the_stages_parse_with_their_device() -> None:
    topics = Topics("demo")
    for base, kind, device in [
        (topics.secagg("pi-01"), "secagg", "pi-01"),
        (topics.secagg_all, "secagg-all", None),
        (topics.secagg_to("pi-02"), "secagg-to", "pi-02"),
    ]:
        topic, _ = chunked(base, b"x")[0]
        parsed = topics.parse(topic)
        assert (parsed.kind, parsed.device, parsed.chunk, parsed.base) == (kind, device, 0, base)
        assert parsed.is_binary
    with pytest.raises(ProtocolError, match="takes 2 level"):
        topics.parse("fl/v1/demo/secagg/pi-01")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"", "shorter than its record count"),
        ((5).to_bytes(4, "little"), "truncated"),
        (pack_records({"a": b"xy"}) + b"!", "after the last record"),
        ((1).to_bytes(4, "little") + b"\x01/" + (0).to_bytes(4, "little"), "record id"),
        ((1).to_bytes(4, "little") + b"\x01a" + (9).to_bytes(4, "little") + b"xy", "truncated"),
        ((2).to_bytes(4, "little") + (b"\x01a" + (0).to_bytes(4, "little")) * 2, "twice"),
        ((10**6).to_bytes(4, "little"), "more than"),
    ],
)
def test_malformed_records_are_protocol_errors(body: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        unpack_records(body, "test")


@pytest.mark.parametrize(
    ("stage", "body", "meta", "match"),
    [
        ("keys", b"x" * 63, {}, "two public keys are 64"),
        ("shares", pack_records({"a": b"x" * 10}), {}, "expected 168"),
        ("masked", b"x" * 7, {"bits": 32, "length": 2}, "7 bytes for 2 32-bit"),
        ("masked", b"x" * 8, {"bits": 16, "length": 4}, "bits must be 32 or 64"),
        ("unmask", b"x", {"survivors": [], "deadline": 1}, "must be empty"),
        ("unmask", b"", {"survivors": ["a", "a"], "deadline": 1}, "twice"),
        ("unmask-reply", pack_records({"a": b"\x02" + b"x" * 70}), {}, "neither 0"),
        ("key-list", pack_records({}), {"k": 1, "threshold": 2, "graph_seed": "zz"}, "64 hex"),
        ("nonsense", b"", {}, "unknown secagg stage"),
    ],
)
def test_malformed_stage_bodies_are_protocol_errors(
    stage: str, body: bytes, meta: dict[str, object], match: str
) -> None:
    env = dataclasses.replace(
        encode_keys(*HEAD, Keys(b"c" * 32, b"s" * 32)),
        meta={"stage": stage, "session": SESSION, **meta},
    )
    env = dataclasses.replace(env, body=body, sha256=hashlib.sha256(body).hexdigest())
    with pytest.raises(ProtocolError, match=match):
        read_stage(decode(env.to_bytes()))


def test_a_secagg_envelope_has_its_own_encoding_and_no_tensors() -> None:
    env = encode_keys(*HEAD, Keys(b"c" * 32, b"s" * 32))
    with pytest.raises(ProtocolError, match="secagg encoding"):
        dataclasses.replace(env, encoding="float32")
    assert env.kind == "secagg" and env.samples == 0 and env.tensors == ()
