"""Tensors on the wire: their layout entries, wire encodings and the weights digest.

A weights body holds tensors back to back, C order, little endian. Floating tensors travel
as float32, float16 or int8 (symmetric per-tensor quantization with a ``scale``); integer
tensors (step counters and the like) keep their dtype.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_client.errors import ProtocolError
from edge_client.protocol.validation import check_choice, check_float, check_int

WEIGHT_ENCODINGS = ("float32", "float16", "int8")
"""How floating tensors travel. Integer tensors always keep their own dtype."""
DTYPES = ("float32", "float16", "int8", "int32", "int64", "uint8")
"""Wire dtypes of tensor entries (always little endian)."""
_FLOAT16_MAX = 65504.0
_MAX_NDIM = 32
_MAX_DIM = 2**31 - 1  # numpy on 32-bit boards cannot index beyond this
_MAX_NAME = 256


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a weights body: ``body[offset : offset + nbytes]`` holds it.

    ``scale`` is set only for int8-quantized floating tensors: value = float32(int8) *
    float32(scale), computed in float32 (docs/protocol.md has a test vector).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    scale: float | None = None

    def __post_init__(self) -> None:
        what = f"tensor {self.name!r}"
        if not isinstance(self.name, str) or not 1 <= len(self.name) <= _MAX_NAME:
            raise ProtocolError(f"tensor name must be a string of 1-{_MAX_NAME} characters")
        check_choice(self.dtype, f"{what} dtype", DTYPES)
        if not isinstance(self.shape, (tuple, list)) or len(self.shape) > _MAX_NDIM:
            raise ProtocolError(f"{what} shape must be a list of at most {_MAX_NDIM} integers")
        shape = tuple(check_int(d, f"{what} dimension") for d in self.shape)
        if any(d > _MAX_DIM for d in shape):
            raise ProtocolError(f"{what} has a dimension above {_MAX_DIM}")
        object.__setattr__(self, "shape", shape)
        check_int(self.offset, f"{what} offset")
        check_int(self.nbytes, f"{what} nbytes")
        expected = math.prod(shape) * np.dtype(self.dtype).itemsize
        if self.nbytes != expected:
            raise ProtocolError(f"{what} has nbytes {self.nbytes}, shape {shape} needs {expected}")
        if self.scale is not None:
            if self.dtype != "int8":
                raise ProtocolError(f"{what} has a scale but dtype {self.dtype}, not int8")
            scale = check_float(self.scale, f"{what} scale")
            if scale <= 0:
                raise ProtocolError(f"{what} scale must be > 0, got {scale}")
            object.__setattr__(self, "scale", scale)

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "offset": self.offset,
            "nbytes": self.nbytes,
        }
        if self.scale is not None:
            entry["scale"] = self.scale
        return entry

    def read(self, body: bytes) -> np.ndarray:
        """A fresh array: float32 for floating and quantized tensors, else the tensor's dtype."""
        wire = np.dtype(self.dtype).newbyteorder("<")
        if self.count == 0:
            array = np.zeros(self.shape, dtype=wire)
        else:
            array = np.frombuffer(body, dtype=wire, count=self.count, offset=self.offset)
            array = array.reshape(self.shape)
        if self.scale is not None:
            scaled: np.ndarray = array.astype(np.float32) * np.float32(self.scale)
            return scaled
        if wire.kind == "f":
            return array.astype(np.float32)
        return array.astype(wire.newbyteorder("="))


def tensor_from_json(entry: object) -> TensorSpec:
    if not isinstance(entry, dict):
        raise ProtocolError("each envelope tensor must be a JSON object")
    missing = [k for k in ("name", "dtype", "shape", "offset", "nbytes") if k not in entry]
    if missing:
        raise ProtocolError(f"envelope tensor is missing field(s) {', '.join(missing)}")
    return TensorSpec(
        name=entry["name"],
        dtype=entry["dtype"],
        shape=entry["shape"],
        offset=entry["offset"],
        nbytes=entry["nbytes"],
        scale=entry.get("scale"),
    )


def check_layout(tensors: tuple[TensorSpec, ...], body_size: int) -> None:
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise ProtocolError("envelope lists a tensor name twice")
    end = 0
    for t in sorted(tensors, key=lambda t: (t.offset, t.nbytes)):
        if t.nbytes == 0:
            continue
        if t.offset < end:
            raise ProtocolError(f"tensor {t.name!r} at offset {t.offset} overlaps another tensor")
        end = t.offset + t.nbytes
        if end > body_size:
            raise ProtocolError(
                f"tensor {t.name!r} ends at byte {end}, past the {body_size}-byte body"
            )


def to_wire(name: object, value: object, encoding: str) -> tuple[str, float | None, bytes]:
    """(wire dtype, int8 scale or None, little-endian C-order bytes) of one tensor."""
    if not isinstance(name, str):
        raise ProtocolError(f"tensor names must be strings, got {type(name).__name__}")
    array = np.asarray(value)
    if array.dtype.kind == "f":
        if encoding == "float32":
            return "float32", None, array.astype("<f4").tobytes()
        if encoding == "float16":
            finite = np.abs(array[np.isfinite(array)])
            if finite.size and float(finite.max()) > _FLOAT16_MAX:
                raise ProtocolError(f"tensor {name!r} has values beyond the float16 range")
            return "float16", None, array.astype("<f2").tobytes()
        return _quantize_int8(name, array)
    if array.dtype.kind in "iu" and array.dtype.name in DTYPES:
        return array.dtype.name, None, array.astype(array.dtype.newbyteorder("<")).tobytes()
    raise ProtocolError(
        f"tensor {name!r} has dtype {array.dtype}; the wire carries floating "
        f"tensors and {', '.join(d for d in DTYPES if d[0] in 'iu')}"
    )


def _quantize_int8(name: str, array: np.ndarray) -> tuple[str, float, bytes]:
    # Symmetric per-tensor quantization: q = round(x / scale), scale = max|x| / 127.
    values = array.astype(np.float64)
    if not np.all(np.isfinite(values)):
        raise ProtocolError(f"tensor {name!r} has NaN or infinite values; int8 cannot carry them")
    peak = float(np.max(np.abs(values), initial=0.0))
    scale = peak / 127.0 if peak > 0 else 1.0
    quantized = np.clip(np.rint(values / scale), -127, 127).astype(np.int8)
    return "int8", scale, quantized.tobytes()


def weights_sha256(weights: Mapping[str, np.ndarray]) -> str:
    """Stable digest of names, shapes and values; independent of mapping order and byte order.

    Tensors are taken in name order. Each contributes: u32 name length, UTF-8 name, a tag
    byte (``f`` floating, hashed as float32; ``i`` integer, hashed as int64), u32 ndim,
    u64 per dimension, then the little-endian C-order values.
    """
    digest = hashlib.sha256(b"EFLW\x01")
    for name in sorted(weights):
        if not isinstance(name, str):
            raise ProtocolError(f"tensor names must be strings, got {type(name).__name__}")
        array = np.asarray(weights[name])
        if array.dtype.kind == "f":
            tag, canonical = b"f", array.astype("<f4")
        elif array.dtype.kind in "iub":
            tag, canonical = b"i", array.astype("<i8")
        else:
            raise ProtocolError(f"tensor {name!r} has dtype {array.dtype}, which has no digest")
        encoded = name.encode("utf-8")
        digest.update(struct.pack("<I", len(encoded)) + encoded + tag)
        digest.update(struct.pack(f"<I{array.ndim}Q", array.ndim, *array.shape))
        digest.update(np.ascontiguousarray(canonical).tobytes())
    return digest.hexdigest()
