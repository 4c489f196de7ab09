"""The JSON messages: round announcements, device status, job control (round metrics: metrics.py).

Each is a frozen dataclass whose construction validates every field (ProtocolError), with
``to_json() -> bytes`` (compact strict UTF-8 JSON with ``"v": 1`` first) and
``from_json(data) -> cls``. Readers ignore unknown fields, so a newer sender may add some
without breaking older boards; a missing required field or a different ``v`` is an error.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import MISSING, dataclass, fields
from typing import Any, ClassVar, TypeVar

from edge_client.errors import ProtocolError
from edge_client.protocol.secagg import SECAGG, SecAggParams
from edge_client.protocol.tensors import WEIGHT_ENCODINGS
from edge_client.protocol.validation import (
    PROTOCOL_VERSION,
    check_choice,
    check_float,
    check_id,
    check_int,
    check_json_dict,
    check_sha256,
    check_str,
    dumps,
    loads,
)

ROUND_STATES = ("open", "closed", "aborted")
# What devices send: weights in one of these, or a masked vector of a secure round (boards
# that predate secure aggregation refuse such an announcement, so they never send weights)
UPDATE_ENCODINGS = (*WEIGHT_ENCODINGS, SECAGG)
ROUND_MODES = ("sync", "buffered")  # what a board may say it speaks (DeviceStatus.modes)
BUFFERED = "buffered"  # RoundAnnouncement.mode of asynchronous buffered rounds (FedBuff)
BUFFERED_VERSION = 2  # the "v" of a buffered announcement: older boards refuse it, as they must
_MAX_MODES = 16
DEVICE_STATES = ("online", "offline", "training", "idle", "failed")
JOB_STATES = ("running", "paused", "stopped")
_MAX_SELECTED = 100_000
MAX_ENDORSEMENT = 1024  # characters of a SiteEndorsement's JSON (about 260 in practice)

_M = TypeVar("_M", bound="_JsonMessage")


class _JsonMessage:
    """to_json / from_json for the frozen dataclasses below."""

    _what: ClassVar[str] = "message"
    _omit_none: ClassVar[tuple[str, ...]] = ()  # optional fields left out while None
    _versions: ClassVar[tuple[int, ...]] = (PROTOCOL_VERSION,)  # "v" values readers accept

    def _version(self) -> int:
        return PROTOCOL_VERSION

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"v": self._version()}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is not None or f.name not in self._omit_none:
                body[f.name] = value
        return dumps(body, self._what)

    @classmethod
    def from_json(cls: type[_M], data: bytes | bytearray | memoryview | str) -> _M:
        obj = _versioned_object(data, cls._what, cls._versions)
        cls._check_version(obj)
        kwargs: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name in obj:
                kwargs[f.name] = obj[f.name]
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ProtocolError(f"{cls._what} is missing field {f.name!r}")
        return cls(**kwargs)  # a lone surrogate (\ud800) is refused by validation.dumps

    @classmethod
    def _check_version(cls, obj: dict[str, Any]) -> None:
        """A message whose fields contradict its ``v`` (only announcements have two)."""


def _versioned_object(
    data: bytes | bytearray | memoryview | str,
    what: str,
    versions: tuple[int, ...] = (PROTOCOL_VERSION,),
) -> dict[str, Any]:
    """A message's JSON object, with its protocol version ``v`` checked."""
    obj = loads(data, what)
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} must be a JSON object")
    if "v" not in obj:
        raise ProtocolError(f"{what} is missing field 'v'")
    if check_int(obj["v"], f"{what} v") not in versions:
        raise ProtocolError(f"unsupported {what} version {obj['v']}")
    return obj


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)  # normalizing a frozen dataclass in __post_init__


def _ids(value: object, what: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or len(value) > _MAX_SELECTED:
        raise ProtocolError(f"{what} must be a list of device ids")
    ids = tuple(check_id(v, f"device id in {what}") for v in value)
    if len(set(ids)) != len(ids):
        raise ProtocolError(f"{what} lists a device twice")
    return ids


def _optional_float(value: object, what: str) -> float | None:
    return None if value is None else check_float(value, what)


def _grants(value: object, selected: tuple[str, ...]) -> dict[str, int]:
    """A buffered announcement's grants: exactly one positive number per selected device."""
    grants = check_json_dict(value, "grants")
    for device, grant in grants.items():
        check_id(device, "device id in grants")
        check_int(grant, f"grant of {device}", minimum=1)
    if set(grants) != set(selected):
        raise ProtocolError("grants must name exactly the selected devices")
    return grants


@dataclass(frozen=True)
class RoundAnnouncement(_JsonMessage):
    """Published retained on ``round`` when a round opens and again when it closes.

    ``hyperparams`` is free-form for strategies; the usual keys are ``epochs`` (int), ``lr``
    (float), ``batch_size`` (int) and ``mu`` (FedProx proximal weight, float).
    ``model_sha256`` is the sha256 of the .tflite bytes (the model envelope's ``sha256``);
    ``global_sha256`` is :func:`weights_sha256` of the decoded global weights to train from.
    """

    _what: ClassVar[str] = "round announcement"
    _omit_none: ClassVar[tuple[str, ...]] = (
        "run",
        "mode",
        "grants",
        "max_staleness",
        "signature",
        "secagg",
        "endorsement",
    )
    _versions: ClassVar[tuple[int, ...]] = (PROTOCOL_VERSION, BUFFERED_VERSION)

    job: str
    round: int
    deadline: float  # unix time after which the coordinator stops waiting for updates
    selected: tuple[str, ...]  # devices that train this round; others stay idle
    hyperparams: dict[str, Any]
    model_sha256: str
    global_sha256: str
    # how devices send their updates: float32 / float16 / int8 weights, or "secagg": a
    # masked vector through the stages of secure aggregation (then ``secagg`` is set)
    encoding: str = "float32"
    state: str = "open"
    # Identity of this run of the job, made by the coordinator when the run starts and kept
    # by --resume: boards key their progress on it, so a second run of the same job and
    # model trains again. None (coordinators before it): left out of the JSON.
    run: str | None = None
    # Asynchronous buffered rounds (FedBuff; docs/protocol.md section 2b): mode "buffered",
    # ``round`` is the global version, ``selected`` the devices holding a training slot, each
    # with its grant number in ``grants`` (a device trains each grant once), and an update
    # more than ``max_staleness`` versions behind is rejected. Written as "v": 2, which
    # boards that only speak synchronous rounds refuse. None: a synchronous round (v 1).
    mode: str | None = None
    grants: dict[str, int] | None = None
    max_staleness: int | None = None
    # Ed25519 signature object {"alg", "key", "sig"} (docs/protocol.md section 12); None:
    # unsigned, and then left out of the JSON
    signature: dict[str, Any] | None = None
    # A secure round's parameters (SecAggParams.to_dict(); protocol/secagg.py), with
    # encoding "secagg"; None otherwise, and then left out of the JSON
    secagg: dict[str, Any] | None = None
    # Set by a site aggregator that signs the rounds it announces to its boards with its own
    # key: the exact JSON of the job key's SiteEndorsement of that key (docs/protocol.md
    # section 12); None: signed with the job's own key, or unsigned, and left out of the JSON
    endorsement: str | None = None

    def __post_init__(self) -> None:
        check_id(self.job, "job id")
        check_int(self.round, "round")
        if self.endorsement is not None:
            check_str(self.endorsement, "endorsement", max_len=MAX_ENDORSEMENT)
        if (self.secagg is not None) != (self.encoding == SECAGG):
            raise ProtocolError(
                "a secure round has encoding 'secagg' and a secagg object, or neither"
            )
        if self.secagg is not None:
            _set(self, "secagg", SecAggParams.from_dict(self.secagg).to_dict())
            if self.mode is not None:  # a masked vector unmasks only in a round's sum
                raise ProtocolError(f"a secure round cannot be a {self.mode} one")
        if self.run is not None:
            check_id(self.run, "run id")
        if self.signature is not None:
            _set(self, "signature", check_json_dict(self.signature, "signature"))
        _set(self, "deadline", check_float(self.deadline, "deadline", minimum=0.0))
        _set(self, "selected", _ids(self.selected, "selected"))
        _set(self, "hyperparams", check_json_dict(self.hyperparams, "hyperparams"))
        check_sha256(self.model_sha256, "model_sha256")
        check_sha256(self.global_sha256, "global_sha256")
        check_choice(self.encoding, "encoding", UPDATE_ENCODINGS)
        check_choice(self.state, "round state", ROUND_STATES)
        self._check_mode()

    def _check_mode(self) -> None:
        if self.mode is None:
            if self.grants is not None or self.max_staleness is not None:
                raise ProtocolError("grants and max_staleness belong to buffered announcements")
            return
        check_choice(self.mode, "round mode", (BUFFERED,))
        if self.grants is None or self.max_staleness is None:
            raise ProtocolError("a buffered announcement needs grants and max_staleness")
        _set(self, "grants", _grants(self.grants, self.selected))
        check_int(self.max_staleness, "max_staleness")

    def _version(self) -> int:
        return BUFFERED_VERSION if self.buffered else PROTOCOL_VERSION

    @classmethod
    def _check_version(cls, obj: dict[str, Any]) -> None:
        if (obj["v"] == BUFFERED_VERSION) != (obj.get("mode") == BUFFERED):
            raise ProtocolError(
                f"round announcement version {obj['v']} with mode {obj.get('mode')!r}: "
                f"buffered announcements are version {BUFFERED_VERSION}, the others "
                f"{PROTOCOL_VERSION}"
            )

    @property
    def buffered(self) -> bool:
        return self.mode == BUFFERED

    @property
    def secure(self) -> SecAggParams | None:
        """The secure round's parameters; None for a plain round."""
        return None if self.secagg is None else SecAggParams.from_dict(self.secagg)

    def is_selected(self, device: str) -> bool:
        return device in self.selected

    def grant(self, device: str) -> int | None:
        """The grant number ``device`` holds in a buffered announcement (None: none)."""
        return (self.grants or {}).get(device)

    @property
    def start_over(self) -> StartOver | None:
        """Whether a training from this buffered version starts over when a newer one comes
        out early in it (``hyperparams.start_over``, docs/protocol.md section 2b); None when
        it does not (a synchronous round, a later version, no or a malformed hint)."""
        hint = StartOver.from_hyperparams(self.hyperparams)
        if hint is None or not self.buffered or self.round > hint.version:
            return None
        return hint


@dataclass(frozen=True)
class StartOver:
    """``hyperparams.start_over`` of a buffered announcement: a board training from version
    ``version`` or older (the job's initial weights) that hears of a newer version before it
    has done ``within`` of its training drops what it did and trains the same grant from the
    newer version. At the start of a job every board trains from the same initial weights;
    without it the slow boards' first updates, trained from them, all arrive together many
    versions later and pull the model back (docs/benchmarks.md)."""

    version: int
    within: float

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "within": self.within}

    @classmethod
    def from_hyperparams(cls, hyperparams: dict[str, Any]) -> StartOver | None:
        """The hint, or None when absent or malformed (a hint: a board that cannot read it
        trains as if it were not there)."""
        raw = hyperparams.get("start_over")
        if not isinstance(raw, dict):
            return None
        version, within = raw.get("version"), raw.get("within")
        if isinstance(version, bool) or not isinstance(version, int):
            return None
        if isinstance(within, bool) or not isinstance(within, (int, float)):
            return None
        if not 0 < within <= 1:
            return None
        return cls(version, float(within))


@dataclass(frozen=True)
class SiteEndorsement(_JsonMessage):
    """The job's key vouching for a site aggregator's key: signed with the job's key, carried
    (as its exact JSON text) in ``endorsement`` of every round the site announces, which the
    site signs with ``key`` (docs/protocol.md section 12)."""

    _what: ClassVar[str] = "site endorsement"
    _omit_none: ClassVar[tuple[str, ...]] = ("signature",)

    job: str  # the job whose rounds the site may announce
    site: str  # the site aggregator's id (its device id for the central coordinator)
    key: str  # the site's Ed25519 public key: standard base64 of the raw 32 bytes
    issued: float  # unix time it was made (informational)
    signature: dict[str, Any] | None = None  # by the job's key

    def __post_init__(self) -> None:
        check_id(self.job, "job id")
        check_id(self.site, "site id")
        if not isinstance(self.key, str) or len(_b64_bytes(self.key)) != 32:
            raise ProtocolError("site endorsement key must be the base64 of 32 bytes")
        _set(self, "issued", check_float(self.issued, "issued", minimum=0.0))
        if self.signature is not None:
            _set(self, "signature", check_json_dict(self.signature, "signature"))

    @property
    def public_raw(self) -> bytes:
        return _b64_bytes(self.key)


def _b64_bytes(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


@dataclass(frozen=True)
class DeviceStatus(_JsonMessage):
    """Published retained on ``status/{device}``; the Last Will is an ``offline`` one."""

    _what: ClassVar[str] = "device status"
    _omit_none: ClassVar[tuple[str, ...]] = ("modes",)

    device: str
    state: str
    time: float  # unix time the status was made (for a Last Will: when it was registered)
    round: int | None = None  # the round being trained or last trained
    detail: str = ""  # human-readable, e.g. a failure reason
    interpreter: str = ""  # "ai-edge-litert 2.3.0", "tflite-runtime 2.14.0", ...
    samples: int = 0  # local training samples
    heartbeat_s: float = 0.0  # the device republishes its status this often; 0 = no heartbeat
    version: str = ""  # edge_client version
    # Round modes the device speaks (ROUND_MODES; unknown ones are kept): ("sync",
    # "buffered") from boards that train buffered rounds; None (left out): synchronous only
    modes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_id(self.device, "device id")
        if self.modes is not None:
            if not isinstance(self.modes, (list, tuple)) or len(self.modes) > _MAX_MODES:
                raise ProtocolError("modes must be a list of round modes")
            _set(self, "modes", tuple(check_id(m, "round mode") for m in self.modes))
        check_choice(self.state, "device state", DEVICE_STATES)
        _set(self, "time", check_float(self.time, "time", minimum=0.0))
        if self.round is not None:
            check_int(self.round, "round")
        check_str(self.detail, "detail")
        check_str(self.interpreter, "interpreter", max_len=256)
        check_int(self.samples, "samples")
        _set(self, "heartbeat_s", check_float(self.heartbeat_s, "heartbeat_s", minimum=0.0))
        check_str(self.version, "version", max_len=64)

    def speaks(self, mode: str) -> bool:
        """Whether the device said it trains rounds of ``mode`` (all boards speak sync)."""
        return mode == "sync" or mode in (self.modes or ())

    @classmethod
    def last_will(cls, device: str, time: float, **extra: Any) -> DeviceStatus:
        """The status a device registers as its Last Will when it connects."""
        return cls(device=device, state="offline", time=time, detail="connection lost", **extra)


@dataclass(frozen=True)
class JobControl(_JsonMessage):
    """Published retained on ``control``: the job is ``running``, ``paused`` or ``stopped``."""

    _what: ClassVar[str] = "job control"
    _omit_none: ClassVar[tuple[str, ...]] = ("by", "until", "signature", "signed")

    job: str
    state: str
    time: float  # unix time of the decision; a coordinator ignores ones older than its start
    detail: str = ""
    # who decided, e.g. "coordinator" or "dashboard admin at 10.0.0.5"; None: left out
    by: str | None = None
    # a pause the coordinator accepted: unix time at which it resumes by itself (--max-pause)
    until: float | None = None
    # Ed25519 signature object, as on announcements (docs/protocol.md section 12); None:
    # unsigned, and then left out of the JSON
    signature: dict[str, Any] | None = None
    # Set by the coordinator (None, and then left out of the JSON: not said, e.g. an operator
    # tool): True when it signs the model, rounds and control (the key's id is in
    # ``signature``); False for a job run with --unsigned, which boards cannot authenticate.
    signed: bool | None = None

    def __post_init__(self) -> None:
        check_id(self.job, "job id")
        check_choice(self.state, "job state", JOB_STATES)
        _set(self, "time", check_float(self.time, "time", minimum=0.0))
        check_str(self.detail, "detail")
        if self.by is not None:
            check_str(self.by, "by", max_len=200)
        _set(self, "until", _optional_float(self.until, "until"))
        if self.signature is not None:
            _set(self, "signature", check_json_dict(self.signature, "signature"))
        if self.signed is not None and not isinstance(self.signed, bool):
            raise ProtocolError("job control signed must be true, false or absent")
