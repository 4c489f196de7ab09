"""Secure aggregation on the wire: the round's parameters and the messages of its 4 stages.

A secure round is announced with ``encoding = "secagg"`` and a ``secagg`` object
(:class:`SecAggParams`). Its messages are envelopes of kind ``secagg`` (encoding ``secagg``,
no tensors, ``samples`` 0) whose ``meta`` names the ``stage`` and the round's ``session``,
on three topics (docs/protocol.md section 14)::

    secagg/{device}/{i}     device -> coordinator   keys, shares, masked, unmask-reply
    secagg-all/{i}          coordinator -> devices  key-list, unmask
    secagg-to/{device}/{i}  coordinator -> device   routed (the shares sent to it)

Bodies are binary: a 64-byte key pair, the ring vector, or *records*::

    u32 count, then per record: u8 id length L, L bytes of id (ASCII), u32 data length D, D bytes

all little endian. :func:`read_stage` turns a decoded envelope into one typed message (a
``ProtocolError`` names anything malformed); the ``encode_*`` functions write them.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_client.errors import ProtocolError
from edge_client.protocol.envelope import Envelope
from edge_client.protocol.validation import check_float, check_id, check_int, check_json_dict

SECAGG = "secagg"  # the announcement's encoding, the envelope's kind and encoding
PUBLIC_KEY_BYTES = 32  # X25519
CIPHERTEXT_BYTES = 12 + 2 * 70 + 16  # nonce + (self-seed share, mask-key share) + tag
SHARE_BYTES = 70  # x (u32) + y (66 bytes), docs/secure-aggregation.md
SEED_SHARE, KEY_SHARE = 0, 1  # the kind byte of an unmask reply's record
STAGES = ("keys", "shares", "masked", "unmask-reply", "key-list", "routed", "unmask")
DEVICE_STAGES = ("keys", "shares", "masked", "unmask-reply")
_SESSION_RE = re.compile(r"[0-9a-f]{16}")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_U32 = struct.Struct("<I")
_MAX_RECORDS = 100_000


@dataclass(frozen=True)
class SecAggParams:
    """The ``secagg`` object of a secure round's announcement: what every board must use.

    The quantization (docs/secure-aggregation.md): each board clips each coordinate of its
    change (trained - global) to ``[-clip, clip]``, multiplies by its weight (its sample count,
    at most ``max_weight``), rounds to ``1/scale`` and appends the weight; the ring is Z_2^bits,
    big enough for the sum of ``n_devices`` such vectors.
    """

    session: str  # 16 hex digits, fresh per round attempt: binds every key and message
    clip: float  # per-coordinate clip of the change
    scale: float  # quanta per unit
    max_weight: int  # largest weight (sample count) a board may put in
    n_devices: int  # most vectors summed (the round's selected devices)
    bits: int  # ring size: 32 or 64
    stage_timeout: float  # seconds each stage after the first may last
    l2_clip: float = 0.0  # > 0: boards scale their change to this L2 norm first (--clip-norm)

    def __post_init__(self) -> None:
        if not isinstance(self.session, str) or _SESSION_RE.fullmatch(self.session) is None:
            raise ProtocolError(f"invalid secagg session {self.session!r}: 16 hex digits")
        for name in ("clip", "scale"):
            value = check_float(getattr(self, name), f"secagg {name}")
            if value <= 0:
                raise ProtocolError(f"secagg {name} must be positive")
            object.__setattr__(self, name, value)
        check_int(self.max_weight, "secagg max_weight", minimum=1)
        check_int(self.n_devices, "secagg n_devices", minimum=1)
        if self.bits not in (32, 64) or isinstance(self.bits, bool):
            raise ProtocolError(f"secagg bits must be 32 or 64, not {self.bits!r}")
        timeout = check_float(self.stage_timeout, "secagg stage_timeout", minimum=0.0)
        object.__setattr__(self, "stage_timeout", timeout)
        object.__setattr__(self, "l2_clip", check_float(self.l2_clip, "secagg l2_clip", minimum=0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "session": self.session,
            "clip": self.clip,
            "scale": self.scale,
            "max_weight": self.max_weight,
            "n_devices": self.n_devices,
            "bits": self.bits,
            "stage_timeout": self.stage_timeout,
            "l2_clip": self.l2_clip,
        }

    @classmethod
    def from_dict(cls, value: object) -> SecAggParams:
        d = check_json_dict(value, "secagg")
        names = ("session", "clip", "scale", "max_weight", "n_devices", "bits", "stage_timeout")
        missing = [n for n in names if n not in d]
        if missing:
            raise ProtocolError(f"secagg is missing field(s) {', '.join(missing)}")
        return cls(**{n: d[n] for n in names}, l2_clip=d.get("l2_clip", 0.0))


# -- typed stage messages -----------------------------------------------------------------
@dataclass(frozen=True)
class Keys:
    """Stage 1, device -> coordinator: its two X25519 public keys for this session."""

    c_public: bytes  # agrees the keys that encrypt shares
    s_public: bytes  # agrees the pairwise mask seeds


@dataclass(frozen=True)
class KeyList:
    """Coordinator -> all: who advertised (sorted) with their keys, and the graph to build."""

    keys: Mapping[str, Keys]
    k: int  # degree; len(keys) - 1: complete graph
    threshold: int
    graph_seed: bytes  # 32 bytes
    deadline: float  # unix time the shares stage ends


@dataclass(frozen=True)
class Shares:
    """Stage 2, device -> coordinator: one ciphertext per holder (recipient -> ciphertext)."""

    ciphertexts: Mapping[str, bytes]


@dataclass(frozen=True)
class Routed:
    """Coordinator -> one device: the ciphertexts addressed to it (sender -> ciphertext)."""

    ciphertexts: Mapping[str, bytes]
    deadline: float  # unix time the masked-input stage ends


@dataclass(frozen=True)
class Masked:
    """Stage 3, device -> coordinator: the masked vector y (ring elements)."""

    vector: np.ndarray  # shape (length,), uint32 or uint64
    bits: int


@dataclass(frozen=True)
class UnmaskRequest:
    """Coordinator -> all: whose masked vectors arrived (sorted); holders answer for them."""

    survivors: tuple[str, ...]
    deadline: float  # unix time the unmask stage ends


@dataclass(frozen=True)
class UnmaskReply:
    """Stage 4, device -> coordinator: per owner, the self-seed share (owner survived) or
    the mask-key share (owner shared, sent no y), never both; owners whose ciphertext did
    not decrypt are named."""

    seed_shares: Mapping[str, bytes]
    key_shares: Mapping[str, bytes]
    undecryptable: tuple[str, ...] = ()


StageBody = Keys | KeyList | Shares | Routed | Masked | UnmaskRequest | UnmaskReply


@dataclass(frozen=True)
class StageMessage:
    """A decoded secagg envelope: its round, sender, session, stage and typed body."""

    job: str
    round: int
    sender: str
    session: str
    stage: str
    body: StageBody


# -- records --------------------------------------------------------------------------------
def pack_records(records: Mapping[str, bytes]) -> bytes:
    """``u32 count`` + per record ``u8 len, id, u32 len, data`` (ids in the mapping's order)."""
    parts = [_U32.pack(len(records))]
    for key, data in records.items():
        raw = check_id(key, "record id").encode("ascii")
        parts += [bytes([len(raw)]), raw, _U32.pack(len(data)), data]
    return b"".join(parts)


def unpack_records(body: bytes, what: str, *, size: int | None = None) -> dict[str, bytes]:
    """The records of ``body``; each data ``size`` bytes if given. ProtocolError if malformed."""
    if len(body) < 4:
        raise ProtocolError(f"{what}: the body is shorter than its record count")
    (count,) = _U32.unpack_from(body)
    if count > _MAX_RECORDS:
        raise ProtocolError(f"{what}: {count} records is more than {_MAX_RECORDS}")
    out: dict[str, bytes] = {}
    pos = 4
    for _ in range(count):
        if pos >= len(body):
            raise ProtocolError(f"{what}: truncated after {len(out)} records")
        n = body[pos]
        key_raw = body[pos + 1 : pos + 1 + n]
        pos += 1 + n
        if len(key_raw) != n or pos + 4 > len(body):
            raise ProtocolError(f"{what}: truncated after {len(out)} records")
        try:
            key = check_id(key_raw.decode("ascii"), f"{what} record id")
        except UnicodeDecodeError:
            raise ProtocolError(f"{what}: a record id is not ASCII") from None
        (d,) = _U32.unpack_from(body, pos)
        data = body[pos + 4 : pos + 4 + d]
        pos += 4 + d
        if len(data) != d:
            raise ProtocolError(f"{what}: record {key!r} is truncated")
        if size is not None and d != size:
            raise ProtocolError(f"{what}: record {key!r} has {d} bytes, expected {size}")
        if key in out:
            raise ProtocolError(f"{what}: {key!r} appears twice")
        out[key] = data
    if pos != len(body):
        raise ProtocolError(f"{what}: {len(body) - pos} bytes after the last record")
    return out


# -- encoding -------------------------------------------------------------------------------
def _envelope(
    job: str, round_: int, sender: str, session: str, stage: str, body: bytes, **meta: Any
) -> Envelope:
    return Envelope(
        kind=SECAGG,
        job=job,
        round=round_,
        sender=sender,
        encoding=SECAGG,
        sha256=hashlib.sha256(body).hexdigest(),
        meta={"stage": stage, "session": session, **meta},
        body=body,
    )


def encode_keys(job: str, round_: int, sender: str, session: str, keys: Keys) -> Envelope:
    return _envelope(job, round_, sender, session, "keys", keys.c_public + keys.s_public)


def encode_key_list(job: str, round_: int, sender: str, session: str, msg: KeyList) -> Envelope:
    body = pack_records({d: k.c_public + k.s_public for d, k in sorted(msg.keys.items())})
    meta = {"k": msg.k, "threshold": msg.threshold, "graph_seed": msg.graph_seed.hex()}
    return _envelope(job, round_, sender, session, "key-list", body, deadline=msg.deadline, **meta)


def encode_shares(job: str, round_: int, sender: str, session: str, msg: Shares) -> Envelope:
    return _envelope(job, round_, sender, session, "shares", pack_records(msg.ciphertexts))


def encode_routed(job: str, round_: int, sender: str, session: str, msg: Routed) -> Envelope:
    body = pack_records(msg.ciphertexts)
    return _envelope(job, round_, sender, session, "routed", body, deadline=msg.deadline)


def encode_masked(job: str, round_: int, sender: str, session: str, msg: Masked) -> Envelope:
    dtype = np.dtype(np.uint32 if msg.bits == 32 else np.uint64).newbyteorder("<")
    body = np.ascontiguousarray(msg.vector, dtype=dtype).tobytes()
    meta = {"bits": msg.bits, "length": int(msg.vector.shape[0])}
    return _envelope(job, round_, sender, session, "masked", body, **meta)


def encode_unmask_request(
    job: str, round_: int, sender: str, session: str, msg: UnmaskRequest
) -> Envelope:
    meta = {"survivors": list(msg.survivors), "deadline": msg.deadline}
    return _envelope(job, round_, sender, session, "unmask", b"", **meta)


def encode_unmask_reply(
    job: str, round_: int, sender: str, session: str, msg: UnmaskReply
) -> Envelope:
    if set(msg.seed_shares) & set(msg.key_shares):
        raise ValueError("an unmask reply never holds both shares of one owner")
    records = {o: bytes([SEED_SHARE]) + s for o, s in msg.seed_shares.items()}
    records |= {o: bytes([KEY_SHARE]) + s for o, s in msg.key_shares.items()}
    meta: dict[str, Any] = {}
    if msg.undecryptable:
        meta["undecryptable"] = list(msg.undecryptable)
    return _envelope(job, round_, sender, session, "unmask-reply", pack_records(records), **meta)


# -- decoding -------------------------------------------------------------------------------
def read_stage(env: Envelope) -> StageMessage:
    """The typed stage message of a ``secagg`` envelope (ProtocolError if malformed)."""
    if env.kind != SECAGG:
        raise ProtocolError(f"a {env.kind} envelope is not a secure-aggregation message")
    meta = env.meta
    stage = meta.get("stage")
    if stage not in STAGES:
        raise ProtocolError(f"unknown secagg stage {stage!r}")
    session = meta.get("session")
    if not isinstance(session, str) or _SESSION_RE.fullmatch(session) is None:
        raise ProtocolError(f"invalid secagg session {session!r}")
    what = f"secagg {stage} from {env.sender}"
    body = _READERS[stage](env.body, meta, what)
    return StageMessage(env.job, env.round, env.sender, session, stage, body)


def _keys(body: bytes, meta: Mapping[str, Any], what: str) -> Keys:
    if len(body) != 2 * PUBLIC_KEY_BYTES:
        raise ProtocolError(f"{what}: {len(body)} bytes, two public keys are 64")
    return Keys(body[:PUBLIC_KEY_BYTES], body[PUBLIC_KEY_BYTES:])


def _key_list(body: bytes, meta: Mapping[str, Any], what: str) -> KeyList:
    records = unpack_records(body, what, size=2 * PUBLIC_KEY_BYTES)
    seed = meta.get("graph_seed")
    if not isinstance(seed, str) or _HEX64_RE.fullmatch(seed) is None:
        raise ProtocolError(f"{what}: graph_seed must be 64 hex digits")
    keys = {d: Keys(r[:PUBLIC_KEY_BYTES], r[PUBLIC_KEY_BYTES:]) for d, r in records.items()}
    return KeyList(
        keys,
        check_int(meta.get("k"), f"{what} k", minimum=1),
        check_int(meta.get("threshold"), f"{what} threshold", minimum=1),
        bytes.fromhex(seed),
        check_float(meta.get("deadline"), f"{what} deadline", minimum=0.0),
    )


def _shares(body: bytes, meta: Mapping[str, Any], what: str) -> Shares:
    return Shares(unpack_records(body, what, size=CIPHERTEXT_BYTES))


def _routed(body: bytes, meta: Mapping[str, Any], what: str) -> Routed:
    deadline = check_float(meta.get("deadline"), f"{what} deadline", minimum=0.0)
    return Routed(unpack_records(body, what, size=CIPHERTEXT_BYTES), deadline)


def _masked(body: bytes, meta: Mapping[str, Any], what: str) -> Masked:
    bits, length = meta.get("bits"), meta.get("length")
    if bits not in (32, 64) or isinstance(bits, bool):
        raise ProtocolError(f"{what}: bits must be 32 or 64, not {bits!r}")
    check_int(length, f"{what} length", minimum=1)
    assert isinstance(length, int) and isinstance(bits, int)
    if len(body) != length * bits // 8:
        raise ProtocolError(f"{what}: {len(body)} bytes for {length} {bits}-bit elements")
    dtype = np.dtype(np.uint32 if bits == 32 else np.uint64)
    vector = np.frombuffer(body, dtype=dtype.newbyteorder("<")).astype(dtype)
    return Masked(vector, bits)


def _unmask_request(body: bytes, meta: Mapping[str, Any], what: str) -> UnmaskRequest:
    if body:
        raise ProtocolError(f"{what}: the body must be empty")
    return UnmaskRequest(
        _id_list(meta.get("survivors"), f"{what} survivors"),
        check_float(meta.get("deadline"), f"{what} deadline", minimum=0.0),
    )


def _unmask_reply(body: bytes, meta: Mapping[str, Any], what: str) -> UnmaskReply:
    records = unpack_records(body, what, size=1 + SHARE_BYTES)
    seeds = {o: r[1:] for o, r in records.items() if r[0] == SEED_SHARE}
    keys = {o: r[1:] for o, r in records.items() if r[0] == KEY_SHARE}
    if len(seeds) + len(keys) != len(records):
        raise ProtocolError(f"{what}: a share kind is neither 0 (seed) nor 1 (key)")
    bad = _id_list(meta.get("undecryptable", []), f"{what} undecryptable")
    return UnmaskReply(seeds, keys, bad)


def _id_list(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > _MAX_RECORDS:
        raise ProtocolError(f"{what} must be a list of device ids")
    ids = tuple(check_id(v, what) for v in value)
    if len(set(ids)) != len(ids):
        raise ProtocolError(f"{what} lists a device twice")
    return ids


_READERS: dict[str, Any] = {
    "keys": _keys,
    "key-list": _key_list,
    "shares": _shares,
    "routed": _routed,
    "masked": _masked,
    "unmask": _unmask_request,
    "unmask-reply": _unmask_reply,
}


def session_id(seed: bytes) -> str:
    """16 hex digits for a session from random bytes (the coordinator's ``secrets``)."""
    return hashlib.sha256(seed).hexdigest()[:16]


def ids_of(values: Sequence[str]) -> tuple[str, ...]:
    """Sorted, distinct device ids (ProtocolError on a bad one)."""
    return tuple(sorted({check_id(v, "device id") for v in values}))
