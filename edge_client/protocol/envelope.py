"""The binary envelope of models, global weights, updates and failures (never pickle).

Layout (all integers little endian)::

    offset  size  field
    0       4     magic b"EFLM"
    4       1     envelope version (u8, = 1)
    5       3     reserved, zero
    8       4     header length H (u32)
    12      H     header: UTF-8 JSON object
    12+H    ...   body (its sha256 is in the header)

A weights body is the tensors concatenated in header order, C order, little endian, so
``np.frombuffer(body, dtype, count, offset).reshape(shape)`` reads each one. A model body is
the raw ``.tflite`` file. A failure has an empty body. See docs/protocol.md.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_client.errors import ProtocolError
from edge_client.protocol.tensors import (
    WEIGHT_ENCODINGS,
    TensorSpec,
    check_layout,
    tensor_from_json,
    to_wire,
    weights_sha256,
)
from edge_client.protocol.update_meta import UpdateMeta
from edge_client.protocol.validation import (
    PROTOCOL_VERSION,
    check_choice,
    check_id,
    check_int,
    check_json_dict,
    check_sha256,
    check_str,
    dumps,
    loads,
)

MAGIC = b"EFLM"
ENVELOPE_VERSION = 1
_PREFIX = struct.Struct("<4sB3sI")  # magic, version, reserved, header length
PREFIX_SIZE = _PREFIX.size  # 12
DEFAULT_MAX_HEADER = 1 << 20  # 1 MiB: ~10,000 tensors or a large manifest; bounds a hostile length

KINDS = ("model", "global", "update", "failure", "secagg")
WEIGHT_KINDS = ("global", "update")
MODEL_ENCODING = "tflite"  # body of kind "model": the raw .tflite bytes
FAILURE_ENCODING = "none"  # body of kind "failure": empty
SECAGG_ENCODING = "secagg"  # body of kind "secagg": a stage message (protocol/secagg.py)


@dataclass(frozen=True, kw_only=True)
class Envelope:
    """A decoded (or about to be encoded) envelope. Construction validates everything."""

    kind: str
    job: str
    round: int
    sender: str
    encoding: str
    sha256: str
    samples: int = 0  # training samples behind an update (the FedAvg weight)
    tensors: tuple[TensorSpec, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)
    body: bytes = field(default=b"", repr=False)
    v: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if check_int(self.v, "envelope header v") != PROTOCOL_VERSION:
            raise ProtocolError(f"unsupported envelope header version {self.v}")
        check_choice(self.kind, "envelope kind", KINDS)
        check_id(self.job, "job id")
        check_int(self.round, "round")
        check_id(self.sender, "sender id")
        check_int(self.samples, "samples")
        check_sha256(self.sha256, "envelope sha256")
        object.__setattr__(self, "meta", check_json_dict(self.meta, "envelope meta"))
        if not isinstance(self.body, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"envelope body must be bytes, got {type(self.body).__name__}")
        object.__setattr__(self, "body", bytes(self.body))
        if not isinstance(self.tensors, (tuple, list)):
            raise ProtocolError("envelope tensors must be a list")
        tensors = tuple(
            t if isinstance(t, TensorSpec) else tensor_from_json(t) for t in self.tensors
        )
        object.__setattr__(self, "tensors", tensors)
        self._check_kind_rules()
        check_layout(self.tensors, len(self.body))
        actual = hashlib.sha256(self.body).hexdigest()
        if actual != self.sha256:
            raise ProtocolError(
                f"envelope body sha256 mismatch: header {self.sha256[:12]}..., "
                f"body {actual[:12]}... (corrupted or truncated)"
            )

    def _check_kind_rules(self) -> None:
        if self.kind in WEIGHT_KINDS:
            check_choice(self.encoding, f"{self.kind} encoding", WEIGHT_ENCODINGS)
        elif self.kind == "model":
            check_choice(self.encoding, "model encoding", (MODEL_ENCODING,))
        elif self.kind == "secagg":
            check_choice(self.encoding, "secagg encoding", (SECAGG_ENCODING,))
        else:
            check_choice(self.encoding, "failure encoding", (FAILURE_ENCODING,))
            check_str(self.meta.get("reason"), "failure meta.reason")
            if self.body:
                raise ProtocolError("a failure envelope must have an empty body")
        if self.tensors and self.kind not in WEIGHT_KINDS:
            raise ProtocolError(f"a {self.kind} envelope must not list tensors")

    @property
    def size(self) -> int:
        """Body length in bytes."""
        return len(self.body)

    def update_meta(self) -> UpdateMeta:
        """The typed ``meta`` of an ``update`` (ProtocolError if a field has the wrong type)."""
        if self.kind != "update":
            raise ProtocolError(f"a {self.kind} envelope carries no update meta")
        return UpdateMeta.from_dict(self.meta)

    @property
    def reason(self) -> str:
        """Why a device failed (kind ``failure``); empty otherwise."""
        return str(self.meta.get("reason", "")) if self.kind == "failure" else ""

    def header(self) -> dict[str, Any]:
        """The JSON header as written on the wire."""
        return {
            "v": self.v,
            "kind": self.kind,
            "job": self.job,
            "round": self.round,
            "sender": self.sender,
            "encoding": self.encoding,
            "sha256": self.sha256,
            "size": self.size,
            "samples": self.samples,
            "tensors": [t.to_json() for t in self.tensors],
            "meta": self.meta,
        }

    def to_bytes(self) -> bytes:
        return envelope_bytes(self.header(), self.body)

    def weights(self) -> dict[str, np.ndarray]:
        """Tensors by name in header order; floating (incl. float16/int8 on the wire) as float32."""
        if self.kind not in WEIGHT_KINDS:
            raise ProtocolError(f"a {self.kind} envelope carries no weights")
        return {t.name: t.read(self.body) for t in self.tensors}

    def weights_sha256(self) -> str:
        """:func:`weights_sha256` of the decoded weights (what a receiver will train from)."""
        return weights_sha256(self.weights())


def envelope_bytes(header: Mapping[str, Any], body: bytes) -> bytes:
    """Prefix, JSON ``header`` and ``body`` as one envelope; the header is not checked.

    :meth:`Envelope.to_bytes` writes a validated envelope with it. A sender that varies
    only the header of an envelope it validated once (the load generator: the same body
    under many senders) may call it directly, skipping the body's sha256 per copy."""
    data = dumps(dict(header), "envelope header")
    if len(data) > DEFAULT_MAX_HEADER:
        raise ProtocolError(
            f"envelope header is {len(data)} bytes, the limit is "
            f"{DEFAULT_MAX_HEADER}; shrink meta or the tensor list"
        )
    prefix = _PREFIX.pack(MAGIC, ENVELOPE_VERSION, b"\0\0\0", len(data))
    return b"".join((prefix, data, body))


def decode(
    payload: bytes | bytearray | memoryview,
    *,
    max_header: int = DEFAULT_MAX_HEADER,
    expect_job: str | None = None,
    expect_kind: str | tuple[str, ...] | None = None,
    expect_sender: str | None = None,
) -> Envelope:
    """Parse and verify an envelope; any problem is a ProtocolError naming it.

    ``expect_*`` reject envelopes of another job, kind (one or a tuple, e.g. ``("update",
    "failure")`` on an update topic) or sender (the device id taken from the topic).
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"envelope payload must be bytes, got {type(payload).__name__}")
    data = bytes(payload)
    if len(data) < PREFIX_SIZE:
        raise ProtocolError(
            f"envelope is {len(data)} bytes, shorter than its {PREFIX_SIZE}-byte prefix"
        )
    magic, version, reserved, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"not an envelope: magic {magic!r}, expected {MAGIC!r}")
    if version != ENVELOPE_VERSION:
        raise ProtocolError(
            f"unsupported envelope version {version} (this side reads {ENVELOPE_VERSION})"
        )
    if reserved != b"\0\0\0":
        raise ProtocolError("envelope reserved bytes are not zero")
    if header_len > max_header:
        raise ProtocolError(f"envelope header is {header_len} bytes, the limit is {max_header}")
    if PREFIX_SIZE + header_len > len(data):
        raise ProtocolError(
            f"envelope truncated: header of {header_len} bytes, only "
            f"{len(data) - PREFIX_SIZE} follow the prefix"
        )
    header = loads(data[PREFIX_SIZE : PREFIX_SIZE + header_len], "envelope header")
    body = data[PREFIX_SIZE + header_len :]
    envelope = _from_header(header, body)
    _check_expected(envelope, expect_job, expect_kind, expect_sender)
    return envelope


def _from_header(header: object, body: bytes) -> Envelope:
    if not isinstance(header, dict):
        raise ProtocolError("envelope header must be a JSON object")
    required = ("v", "kind", "job", "round", "sender", "encoding", "sha256", "size")
    missing = [k for k in required if k not in header]
    if missing:
        raise ProtocolError(f"envelope header is missing field(s) {', '.join(missing)}")
    if check_int(header["v"], "envelope header v") != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported envelope header version {header['v']}")
    size = check_int(header["size"], "envelope size")
    if size != len(body):
        raise ProtocolError(
            f"envelope body is {len(body)} bytes, header says {size} (truncated or padded)"
        )
    return Envelope(
        kind=header["kind"],
        job=header["job"],
        round=header["round"],
        sender=header["sender"],
        encoding=header["encoding"],
        sha256=header["sha256"],
        samples=header.get("samples", 0),
        tensors=header.get("tensors", ()),
        meta=header.get("meta", {}),
        body=body,
    )


def _check_expected(
    env: Envelope, job: str | None, kind: str | tuple[str, ...] | None, sender: str | None
) -> None:
    if job is not None and env.job != job:
        raise ProtocolError(f"envelope belongs to job {env.job!r}, expected {job!r}")
    kinds = (kind,) if isinstance(kind, str) else kind
    if kinds is not None and env.kind not in kinds:
        raise ProtocolError(f"envelope is a {env.kind!r}, expected {' or '.join(kinds)}")
    if sender is not None and env.sender != sender:
        raise ProtocolError(f"envelope sender {env.sender!r} does not match {sender!r}")


def encode_weights(
    weights: Mapping[str, np.ndarray],
    *,
    kind: str,
    job: str,
    round: int,
    sender: str,
    samples: int = 0,
    meta: Mapping[str, Any] | UpdateMeta | None = None,
    encoding: str = "float32",
) -> bytes:
    """Envelope bytes of a ``global`` or ``update`` with the tensors in mapping order."""
    if isinstance(meta, UpdateMeta):
        meta = meta.to_dict()
    check_choice(kind, "weights kind", WEIGHT_KINDS)
    check_choice(encoding, "weights encoding", WEIGHT_ENCODINGS)
    specs: list[TensorSpec] = []
    parts: list[bytes] = []
    offset = 0
    for name, value in weights.items():
        dtype, scale, data = to_wire(name, value, encoding)
        spec = TensorSpec(name, dtype, tuple(np.shape(value)), offset, len(data), scale)
        specs.append(spec)
        parts.append(data)
        offset += len(data)
    body = b"".join(parts)
    return Envelope(
        kind=kind,
        job=job,
        round=round,
        sender=sender,
        encoding=encoding,
        sha256=hashlib.sha256(body).hexdigest(),
        samples=samples,
        tensors=tuple(specs),
        meta=dict(meta or {}),
        body=body,
    ).to_bytes()


def encode_model(tflite: bytes, manifest: Mapping[str, Any], *, job: str, sender: str) -> bytes:
    """Envelope bytes of a model: body = the ``.tflite`` file, meta = its manifest."""
    if not isinstance(tflite, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"model must be bytes, got {type(tflite).__name__}")
    body = bytes(tflite)
    return Envelope(
        kind="model",
        job=job,
        round=0,  # a model is not tied to a round; round announcements name it by sha256
        sender=sender,
        encoding=MODEL_ENCODING,
        sha256=hashlib.sha256(body).hexdigest(),
        meta=dict(manifest),
        body=body,
    ).to_bytes()


def encode_failure(
    job: str, round: int, sender: str, reason: str, *, meta: Mapping[str, Any] | None = None
) -> bytes:
    """Envelope bytes of a device's failed round (published on its update topic)."""
    return Envelope(
        kind="failure",
        job=job,
        round=round,
        sender=sender,
        encoding=FAILURE_ENCODING,
        sha256=hashlib.sha256(b"").hexdigest(),
        meta={**(meta or {}), "reason": reason},
    ).to_bytes()
