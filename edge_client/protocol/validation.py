"""Small validators and strict JSON helpers shared by the protocol modules.

Everything here raises :class:`~edge_client.errors.ProtocolError` and nothing else, so
callers can promise that malformed input never escapes as another exception type.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from edge_client.errors import ProtocolError

PROTOCOL_VERSION = 1
"""Version of the wire protocol: the ``v`` field of every JSON message and envelope header."""

ID_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
_ID_RE = re.compile(ID_PATTERN)
_SHA256_RE = re.compile(r"[0-9a-f]{64}")


def check_id(value: object, what: str) -> str:
    """Return ``value`` if it is a valid job or device id, else raise ProtocolError."""
    if not isinstance(value, str) or _ID_RE.fullmatch(value) is None:
        raise ProtocolError(f"invalid {what} {value!r}: expected 1-64 characters of [A-Za-z0-9_.-]")
    return value


def check_sha256(value: object, what: str) -> str:
    """Return ``value`` if it is 64 lowercase hex digits, else raise ProtocolError."""
    if not isinstance(value, str) or _SHA256_RE.fullmatch(value) is None:
        raise ProtocolError(f"invalid {what} {value!r}: expected 64 lowercase hex digits")
    return value


def check_int(value: object, what: str, *, minimum: int | None = 0) -> int:
    """Return ``value`` if it is an int (not a bool) at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{what} must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ProtocolError(f"{what} must be >= {minimum}, got {value}")
    return value


def check_float(value: object, what: str, *, minimum: float | None = None) -> float:
    """Return ``value`` as a finite float (ints are accepted: JSON writes 5.0 as 5 sometimes)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"{what} must be a number, got {type(value).__name__}")
    try:
        result = float(value)
    except OverflowError:
        raise ProtocolError(f"{what} is too large for a float") from None
    if not math.isfinite(result):
        raise ProtocolError(f"{what} must be finite, got {result}")
    if minimum is not None and result < minimum:
        raise ProtocolError(f"{what} must be >= {minimum}, got {result}")
    return result


def check_str(value: object, what: str, *, max_len: int = 4096) -> str:
    """Return ``value`` if it is a string of at most ``max_len`` characters."""
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string, got {type(value).__name__}")
    if len(value) > max_len:
        raise ProtocolError(f"{what} is longer than {max_len} characters")
    return value


def check_choice(value: object, what: str, choices: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ProtocolError(f"invalid {what} {value!r}: expected one of {', '.join(choices)}")
    return value


def check_json_dict(value: object, what: str) -> dict[str, Any]:
    """Shallow copy of ``value`` if it is a dict with str keys that strict JSON can hold."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ProtocolError(f"{what} must be a JSON object with string keys")
    dumps(value, what)  # raises ProtocolError on NaN, sets, objects, ...
    return dict(value)


def dumps(obj: object, what: str) -> bytes:
    """Compact, strict (no NaN/Infinity) UTF-8 JSON."""
    try:
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        return text.encode("utf-8")  # a lone surrogate ("\\ud800") parses but has no UTF-8
    except (TypeError, ValueError, RecursionError) as exc:  # UnicodeEncodeError: a ValueError
        raise ProtocolError(f"{what} cannot be written as strict JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def loads(data: bytes | bytearray | memoryview | str, what: str) -> Any:
    """Parse strict UTF-8 JSON; any failure (encoding, syntax, NaN, nesting) is a ProtocolError."""
    try:
        text = data if isinstance(data, str) else bytes(data).decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float)
    except (
        ValueError,
        RecursionError,
    ) as exc:  # UnicodeDecodeError, JSONDecodeError are ValueErrors
        raise ProtocolError(f"{what} is not valid UTF-8 JSON: {_short(exc)}") from None
    except TypeError:
        raise ProtocolError(f"{what} must be bytes or str, got {type(data).__name__}") from None


def _short(exc: BaseException, limit: int = 120) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
