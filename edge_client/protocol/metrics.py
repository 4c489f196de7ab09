"""One round's metrics: the record the coordinator fills, stores and publishes.

:class:`RoundMetrics` is the only shape of a completed round's metrics. Two JSON forms:

- ``to_json`` / ``from_json``: the retained ``metrics`` topic (docs/protocol.md section 5).
  Per-device results, failed devices and the sample total travel inside the wire's
  ``extra`` object (``extra.devices``, ``extra.failed``, ``extra.samples``); any other key
  of ``extra`` is kept in :attr:`RoundMetrics.extra` (a newer sender may add some).
- ``to_record`` / ``from_record``: one line of the run directory's ``metrics.jsonl``, which
  also holds what the topic leaves out (``selected``, ``rejected``, ``updates_aggregated``,
  ``time``) and no ``job`` (the run directory belongs to one job).

Both forms carry the round-mode keys (``dropped``, ``target_updates``, ``cancelled``,
``wasted``, ``late_discarded``, ``late_folded``, and for buffered rounds ``mode`` and ``buffer``;
docs/round-modes.md) only when not empty, so a synchronous round's line and message are what
they always were.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from edge_client.errors import ProtocolError
from edge_client.protocol.messages import _ids, _optional_float, _set, _versioned_object
from edge_client.protocol.validation import (
    PROTOCOL_VERSION,
    check_float,
    check_id,
    check_int,
    check_json_dict,
    check_sha256,
    check_str,
    dumps,
)

# Keys of the round mode (dropped devices, semi-synchronous rounds): on the wire inside extra
# and in metrics.jsonl, both only when not empty (docs/protocol.md section 5)
_ROUND_MODE = (
    "dropped",
    "target_updates",
    "cancelled",
    "wasted",
    "late_discarded",
    "late_folded",
    "mode",
    "buffer",
    "secagg",
)
# keys of the wire's extra read into fields
_TYPED_EXTRA = (
    "devices",
    "failed",
    "samples",
    "rejections",
    "contested",
    "bytes_rejected",
    *_ROUND_MODE,
)


@dataclass(frozen=True)
class DeviceMetrics:
    """What one device's reply contributed to a round (an update, or a reported failure)."""

    device: str
    samples: int = 0  # the update's sample count (its FedAvg weight); 0 for a failure
    loss: float | None = None  # local training loss the device reported
    accuracy: float | None = None  # local training accuracy the device reported
    duration_s: float | None = None  # local training time the device reported
    interpreter: str = ""  # "ai-edge-litert 2.3.0", ...
    test_accuracy: float | None = None  # of this update on the test set (--eval-devices)
    bytes_up: int = 0  # envelope bytes of the reply
    failed: str = ""  # the device's failure reason; "" when it sent weights

    def __post_init__(self) -> None:
        check_id(self.device, "device id")
        check_int(self.samples, "device samples")
        for name in ("loss", "accuracy", "duration_s", "test_accuracy"):
            _set(self, name, _optional_float(getattr(self, name), f"device {name}"))
        check_str(self.interpreter, "device interpreter", max_len=256)
        check_int(self.bytes_up, "device bytes_up")
        check_str(self.failed, "device failure reason")

    def to_dict(self) -> dict[str, Any]:
        """The per-device object of ``extra.devices`` and of ``metrics.jsonl``'s ``devices``."""
        return {
            "samples": self.samples,
            "loss": self.loss,
            "accuracy": self.accuracy,
            "duration_s": self.duration_s,
            "interpreter": self.interpreter,
            "test_accuracy": self.test_accuracy,
            "bytes_up": self.bytes_up,
            "failed": self.failed or None,
        }

    @classmethod
    def from_dict(cls, device: str, d: object) -> DeviceMetrics:
        if not isinstance(d, dict):
            raise ProtocolError(f"metrics of device {device!r} must be a JSON object")
        return cls(
            device=device,
            samples=d.get("samples", 0),
            loss=d.get("loss"),
            accuracy=d.get("accuracy"),
            duration_s=d.get("duration_s"),
            interpreter=d.get("interpreter", ""),
            test_accuracy=d.get("test_accuracy"),
            bytes_up=d.get("bytes_up", 0),
            failed=d.get("failed") or "",
        )


@dataclass(frozen=True)
class Rejection:
    """A message on a device's update topic that the coordinator did not aggregate.

    ``device`` is the topic's device, ``sender`` the payload's: the message was published
    under ``device``'s name, not necessarily by it (a replay, a late copy, or a forgery when
    the broker does not bind topics to credentials). ``counted`` says whether it counted as
    the device's reply for the round (a selected device's update for the open round whose
    content was unusable); the others (stale or replayed rounds, another job, a mismatched
    sender, a second update) say nothing about the device."""

    device: str
    sender: str
    round: int
    reason: str
    counted: bool = False
    bytes: int = 0  # the message, all chunks

    def __post_init__(self) -> None:
        check_id(self.device, "rejected device id")
        check_id(self.sender, "rejected sender id")
        check_int(self.round, "rejected round")
        check_str(self.reason, "rejection reason")
        if not isinstance(self.counted, bool):
            raise ProtocolError("rejection counted must be true or false")
        check_int(self.bytes, "rejected bytes")

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "sender": self.sender,
            "round": self.round,
            "reason": self.reason,
            "counted": self.counted,
            "bytes": self.bytes,
        }

    @classmethod
    def from_dict(cls, d: object) -> Rejection:
        if not isinstance(d, dict):
            raise ProtocolError("a rejection must be a JSON object")
        missing = [k for k in ("device", "sender", "round", "reason") if k not in d]
        if missing:
            raise ProtocolError(f"a rejection is missing field(s) {', '.join(missing)}")
        return cls(
            d["device"],
            d["sender"],
            d["round"],
            d["reason"],
            d.get("counted", False),
            d.get("bytes", 0),
        )


@dataclass(frozen=True)
class FoldedUpdate:
    """One update folded into a global version of a buffered job (docs/round-modes.md).

    The version's ``buffer`` lists them: which grant of which device, trained from which
    version (``base``), how many versions behind it arrived (``staleness``), the staleness
    weight its change was scaled by, its sample count and its envelope's ``sha256``. Saved
    with every version in ``metrics.jsonl``, they are also how a resumed coordinator knows
    what it folded already."""

    device: str
    grant: int
    base: int  # the version (round) of the global weights it trained from
    staleness: int  # versions between its base and the version it was folded into
    weight: float  # 1 / sqrt(1 + staleness)
    samples: int
    sha256: str  # the update envelope's sha256 (of its body)

    def __post_init__(self) -> None:
        check_id(self.device, "folded device id")
        check_int(self.grant, "folded grant", minimum=1)
        check_int(self.base, "folded base version")
        check_int(self.staleness, "folded staleness")
        _set(self, "weight", check_float(self.weight, "folded weight", minimum=0.0))
        check_int(self.samples, "folded samples")
        check_sha256(self.sha256, "folded sha256")

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "grant": self.grant,
            "base": self.base,
            "staleness": self.staleness,
            "weight": self.weight,
            "samples": self.samples,
            "sha256": self.sha256,
        }

    @classmethod
    def from_dict(cls, d: object) -> FoldedUpdate:
        if not isinstance(d, dict):
            raise ProtocolError("a folded update must be a JSON object")
        names = ("device", "grant", "base", "staleness", "weight", "samples", "sha256")
        missing = [k for k in names if k not in d]
        if missing:
            raise ProtocolError(f"a folded update is missing field(s) {', '.join(missing)}")
        return cls(*(d[k] for k in names))


def _folded(value: object) -> tuple[FoldedUpdate, ...]:
    if not isinstance(value, (list, tuple)):
        raise ProtocolError("buffer must be a list of folded updates")
    return tuple(f if isinstance(f, FoldedUpdate) else FoldedUpdate.from_dict(f) for f in value)


def _rejections(value: object) -> tuple[Rejection, ...]:
    if not isinstance(value, (list, tuple)):
        raise ProtocolError("rejections must be a list")
    return tuple(r if isinstance(r, Rejection) else Rejection.from_dict(r) for r in value)


def _devices(value: object) -> tuple[DeviceMetrics, ...]:
    if isinstance(value, dict):
        return tuple(DeviceMetrics.from_dict(check_id(k, "device id"), v) for k, v in value.items())
    if isinstance(value, (list, tuple)) and all(isinstance(d, DeviceMetrics) for d in value):
        return tuple(value)
    raise ProtocolError("devices must be a JSON object of per-device metrics")


@dataclass(frozen=True)
class RoundMetrics:
    """Metrics of one completed round (published retained on ``metrics``: the latest wins)."""

    _what: ClassVar[str] = "round metrics"

    job: str
    round: int
    accuracy: float | None = None  # global model on the test set; None: not evaluated
    loss: float | None = None
    participants: tuple[str, ...] = ()  # devices whose updates were aggregated
    bytes_up: int = 0  # envelope bytes of the updates and failures accepted this round
    bytes_down: int = 0  # global-weights bytes published x devices selected
    duration_s: float = 0.0  # wall time of the round, all attempts
    extra: dict[str, Any] = field(default_factory=dict)  # other keys of the wire's extra
    # On the wire inside extra (None / empty: not known, and then not written)
    devices: tuple[DeviceMetrics, ...] = ()  # every reply, in arrival order
    failed: tuple[str, ...] = ()  # devices that reported a failed round
    samples: int | None = None  # sum of the participants' sample counts (their FedAvg weights)
    rejections: tuple[Rejection, ...] = ()  # every message rejected this round, in order
    contested: tuple[str, ...] = ()  # participants whose name carried a second, different update
    bytes_rejected: int = 0  # rejected messages, all chunks
    # Only in metrics.jsonl
    selected: tuple[str, ...] = ()
    # device -> reason its reply for the round was rejected (rejections counted against it)
    rejected: dict[str, str] = field(default_factory=dict)
    updates_aggregated: int = 0
    time: float | None = None  # unix time the round's metrics were made
    # Round mode (wire extra and metrics.jsonl, only when not empty; docs/round-modes.md)
    # Selected devices that went offline (Last Will) before replying: not waited for
    dropped: tuple[str, ...] = ()
    target_updates: int = 0  # over-selection: the round closed at this many updates; 0: off
    cancelled: tuple[str, ...] = ()  # selected, still training when the target was reached
    wasted: int = 0  # updates for closed rounds discarded while this round was open
    late_discarded: dict[str, str] = field(default_factory=dict)  # device -> why
    late_folded: dict[str, int] = field(default_factory=dict)  # device -> round it trained
    mode: str = ""  # "buffered": ``round`` is a global version (FedBuff); "": a round
    buffer: tuple[FoldedUpdate, ...] = ()  # buffered: the updates folded into this version
    # A secure round: its stages, graph, survivors, bound (docs/protocol.md section 14)
    secagg: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_id(self.job, "job id")
        check_int(self.round, "round")
        _set(self, "accuracy", _optional_float(self.accuracy, "accuracy"))
        _set(self, "loss", _optional_float(self.loss, "loss"))
        _set(self, "participants", _ids(self.participants, "participants"))
        check_int(self.bytes_up, "bytes_up")
        check_int(self.bytes_down, "bytes_down")
        _set(self, "duration_s", check_float(self.duration_s, "duration_s", minimum=0.0))
        extra = check_json_dict(self.extra, "extra")
        for key in _TYPED_EXTRA:  # the wire's typed keys become fields
            if key in extra:
                if getattr(self, key) not in ((), None, 0, {}, ""):
                    raise ProtocolError(f"round metrics give {key} twice (field and extra)")
                _set(self, key, extra.pop(key))
        _set(self, "extra", extra)
        _set(self, "devices", _devices(self.devices))
        _set(self, "failed", _ids(self.failed, "failed"))
        _set(self, "rejections", _rejections(self.rejections))
        _set(self, "contested", _ids(self.contested, "contested"))
        check_int(self.bytes_rejected, "bytes_rejected")
        if self.samples is not None:
            check_int(self.samples, "samples")
        _set(self, "selected", _ids(self.selected, "selected"))
        _set(self, "dropped", _ids(self.dropped, "dropped"))
        _set(self, "cancelled", _ids(self.cancelled, "cancelled"))
        check_int(self.target_updates, "target_updates")
        check_int(self.wasted, "wasted")
        discarded = check_json_dict(self.late_discarded, "late_discarded")
        for device, reason in discarded.items():
            check_str(reason, f"late update reason of {device!r}")
        _set(self, "late_discarded", discarded)
        folded = check_json_dict(self.late_folded, "late_folded")
        for device, round_ in folded.items():
            check_int(round_, f"late update round of {device!r}")
        _set(self, "late_folded", folded)
        _set(self, "secagg", check_json_dict(self.secagg, "secagg"))
        rejected = check_json_dict(self.rejected, "rejected")
        for device, reason in rejected.items():
            check_str(reason, f"rejection reason of {device!r}")
        _set(self, "rejected", rejected)
        check_int(self.updates_aggregated, "updates_aggregated")
        check_str(self.mode, "round mode", max_len=64)
        _set(self, "buffer", _folded(self.buffer))
        if self.time is not None:
            _set(self, "time", check_float(self.time, "time", minimum=0.0))

    def __getitem__(self, key: str) -> Any:
        """``metrics["participants"]``: a value of the ``metrics.jsonl`` record (lists, dicts),
        for code that reads rounds as those JSON lines (scripts, tests)."""
        return self.to_record()[key]

    def device(self, device: str) -> DeviceMetrics | None:
        return next((d for d in self.devices if d.device == device), None)

    def with_job(self, job: str) -> RoundMetrics:
        return replace(self, job=job)

    # -- the metrics topic --------------------------------------------------------------------
    def to_json(self) -> bytes:
        extra: dict[str, Any] = {}
        if self.samples is not None or self.devices or self.failed:
            extra = {
                "devices": {d.device: d.to_dict() for d in self.devices},
                "failed": list(self.failed),
                "samples": self.samples,
                "rejections": [r.to_dict() for r in self.rejections],
                "contested": list(self.contested),
                "bytes_rejected": self.bytes_rejected,
            }
        body = {
            "v": PROTOCOL_VERSION,
            "job": self.job,
            "round": self.round,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "participants": list(self.participants),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "duration_s": self.duration_s,
            "extra": extra | self._round_mode_record() | self.extra,
        }
        return dumps(body, self._what)

    @classmethod
    def from_json(cls, data: bytes | bytearray | memoryview | str) -> RoundMetrics:
        obj = _versioned_object(data, cls._what)
        for name in ("job", "round"):
            if name not in obj:
                raise ProtocolError(f"{cls._what} is missing field {name!r}")
        wire = ("accuracy", "loss", "participants", "bytes_up", "bytes_down", "duration_s")
        extra = obj.get("extra", {})
        if not isinstance(extra, dict):
            raise ProtocolError("extra must be a JSON object with string keys")
        return cls(
            job=obj["job"],
            round=obj["round"],
            extra=extra,
            **{k: obj[k] for k in wire if k in obj},
        )

    # -- metrics.jsonl ------------------------------------------------------------------------
    def to_record(self) -> dict[str, Any]:
        """One line of ``metrics.jsonl`` (keys in this order; docs/protocol.md section 5)."""
        return {
            "round": self.round,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "participants": list(self.participants),
            "selected": list(self.selected),
            "failed": list(self.failed),
            "rejected": dict(self.rejected),
            "updates_aggregated": self.updates_aggregated,
            "samples": self.samples,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "duration_s": self.duration_s,
            "devices": {d.device: d.to_dict() for d in self.devices},
            "time": self.time,
            "rejections": [r.to_dict() for r in self.rejections],
            "contested": list(self.contested),
            "bytes_rejected": self.bytes_rejected,
        } | self._round_mode_record()

    def _round_mode_record(self) -> dict[str, Any]:
        """The keys of dropped devices and of semi-synchronous rounds, only when they say
        something (a synchronous round without them writes the line it always wrote)."""
        out: dict[str, Any] = {}
        for key in _ROUND_MODE:
            value = getattr(self, key)
            if value and key == "buffer":
                out[key] = [f.to_dict() for f in value]
            elif value:
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    @property
    def staleness(self) -> tuple[float, int] | None:
        """Mean and largest staleness of a buffered version's updates (None: not buffered)."""
        if not self.buffer:
            return None
        values = [f.staleness for f in self.buffer]
        return sum(values) / len(values), max(values)

    @classmethod
    def from_record(cls, job: str, record: Mapping[str, Any]) -> RoundMetrics:
        """Parse a ``metrics.jsonl`` line; missing keys take their defaults."""
        if not isinstance(record, Mapping) or "round" not in record:
            raise ProtocolError("a metrics record must be a JSON object with a round")
        keys = (
            "accuracy",
            "loss",
            "participants",
            "selected",
            "failed",
            "rejected",
            "updates_aggregated",
            "samples",
            "bytes_up",
            "bytes_down",
            "duration_s",
            "devices",
            "time",
            "rejections",
            "contested",
            "bytes_rejected",
            *_ROUND_MODE,
        )
        values = {k: record[k] for k in keys if record.get(k) is not None}
        return cls(job=job, round=record["round"], **values)
