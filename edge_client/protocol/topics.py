"""The MQTT topic tree of one federated-learning job: names, parsing, subscriptions.

Every topic of a job lives under ``{prefix}/{job}/``::

    fl/v1/demo/model/{i}            binary chunks, retained      coordinator -> devices
    fl/v1/demo/round                JSON, retained               coordinator -> devices
    fl/v1/demo/global/{i}           binary chunks, retained      coordinator -> devices
    fl/v1/demo/update/{device}/{i}  binary chunks                device -> coordinator
    fl/v1/demo/status/{device}      JSON, retained, Last Will    device -> everyone
    fl/v1/demo/metrics              JSON, retained (latest)      coordinator -> everyone
    fl/v1/demo/control              JSON, retained               coordinator/operator -> all
    fl/v1/demo/secagg/{device}/{i}  binary chunks                device -> coordinator
    fl/v1/demo/secagg-all/{i}       binary chunks                coordinator -> devices
    fl/v1/demo/secagg-to/{device}/{i} binary chunks              coordinator -> one device

Binary messages are always split into chunks (see :mod:`.chunking`): a message of one
chunk is published on ``<base>/0``. The device id sits at a fixed level so a broker ACL
``pattern write fl/v1/+/update/%u/#`` ties it to the authenticated user name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_client.errors import ProtocolError
from edge_client.protocol.validation import check_id

DEFAULT_PREFIX = "fl/v1"

QOS = 1
"""Every topic uses QoS 1 (at least once); handlers are idempotent and updates are deduped."""

MODEL, ROUND, GLOBAL, UPDATE, STATUS, METRICS, CONTROL = (
    "model",
    "round",
    "global",
    "update",
    "status",
    "metrics",
    "control",
)
SECAGG, SECAGG_ALL, SECAGG_TO = "secagg", "secagg-all", "secagg-to"  # secure rounds' stages
BINARY_KINDS = frozenset({MODEL, GLOBAL, UPDATE, SECAGG, SECAGG_ALL, SECAGG_TO})
"""Kinds whose payloads are envelopes published as chunks on ``<base>/<index>``."""
JSON_KINDS = frozenset({ROUND, STATUS, METRICS, CONTROL})
RETAINED_KINDS = frozenset({MODEL, GLOBAL, ROUND, STATUS, METRICS, CONTROL})
"""Everything but updates and secure-aggregation stages is retained, so late joiners see the
current state (a stage message is for the devices of one round attempt, at that moment)."""
_DEVICE_LEVEL = (UPDATE, STATUS, SECAGG, SECAGG_TO)  # kinds with a device id level

_PREFIX_LEVEL_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAX_PREFIX_LEVELS = 8
_MAX_CHUNK_INDEX = 2**32 - 1  # the chunk header stores the index as u32


def check_prefix(prefix: object) -> str:
    """Return ``prefix`` if it is 1-8 levels of ``[A-Za-z0-9_.-]`` joined by ``/``."""
    if not isinstance(prefix, str):
        raise ProtocolError(f"invalid topic prefix {prefix!r}: expected a string")
    levels = prefix.split("/")
    if len(levels) > _MAX_PREFIX_LEVELS or not all(_PREFIX_LEVEL_RE.fullmatch(x) for x in levels):
        raise ProtocolError(
            f"invalid topic prefix {prefix!r}: expected 1-{_MAX_PREFIX_LEVELS} levels of "
            "[A-Za-z0-9_.-] separated by '/' (no wildcards, no leading or trailing '/')"
        )
    return prefix


@dataclass(frozen=True)
class ParsedTopic:
    """What a topic of this job is.

    ``kind`` is one of ``model round global update status metrics control secagg secagg-all
    secagg-to``; ``device`` is set for ``update``, ``status``, ``secagg`` (the sender) and
    ``secagg-to`` (the recipient); ``chunk`` is the chunk index of binary kinds; ``base`` is the
    topic without the chunk level (the key to feed a :class:`~.chunking.Reassembler`).
    """

    kind: str
    device: str | None = None
    chunk: int | None = None
    base: str = ""

    @property
    def is_binary(self) -> bool:
        return self.kind in BINARY_KINDS


@dataclass(frozen=True)
class Topics:
    """Topic names of one job. ``Topics("demo").update("pi-01")`` -> ``fl/v1/demo/update/pi-01``."""

    job: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_id(self.job, "job id")
        check_prefix(self.prefix)

    @property
    def root(self) -> str:
        """``{prefix}/{job}``: the parent of every topic of the job."""
        return f"{self.prefix}/{self.job}"

    @property
    def all(self) -> str:
        """Filter matching every topic of the job (for monitors): ``{prefix}/{job}/#``."""
        return f"{self.root}/#"

    @property
    def model(self) -> str:
        """Base topic of the model envelope (binary, retained; chunks on ``model/{i}``)."""
        return f"{self.root}/{MODEL}"

    @property
    def round(self) -> str:
        """Round announcement (JSON, retained)."""
        return f"{self.root}/{ROUND}"

    @property
    def global_weights(self) -> str:
        """Base topic of the global weights envelope (binary, retained)."""
        return f"{self.root}/{GLOBAL}"

    def update(self, device: str) -> str:
        """Base topic of a device's update or failure envelope (binary, not retained)."""
        return f"{self.root}/{UPDATE}/{check_id(device, 'device id')}"

    def status(self, device: str) -> str:
        """Device presence and progress (JSON, retained; the Last Will sets ``offline``)."""
        return f"{self.root}/{STATUS}/{check_id(device, 'device id')}"

    def secagg(self, device: str) -> str:
        """Base topic of a device's secure-aggregation stage messages (binary, not retained)."""
        return f"{self.root}/{SECAGG}/{check_id(device, 'device id')}"

    @property
    def secagg_all(self) -> str:
        """Base topic of the coordinator's stage messages to every device of a secure round."""
        return f"{self.root}/{SECAGG_ALL}"

    def secagg_to(self, device: str) -> str:
        """Base topic of the coordinator's stage messages to one device (its routed shares)."""
        return f"{self.root}/{SECAGG_TO}/{check_id(device, 'device id')}"

    @property
    def metrics(self) -> str:
        """Metrics of the latest finished round (JSON, retained)."""
        return f"{self.root}/{METRICS}"

    @property
    def control(self) -> str:
        """Job state ``running`` / ``paused`` / ``stopped`` (JSON, retained)."""
        return f"{self.root}/{CONTROL}"

    def device_subscriptions(self, device: str | None = None) -> list[tuple[str, int]]:
        """(filter, qos) pairs a device subscribes to in ``on_connect``; with its id, also the
        secure-aggregation stages (to every device, and to it)."""
        filters = [
            (f"{self.model}/#", QOS),
            (f"{self.global_weights}/#", QOS),
            (self.round, QOS),
            (self.control, QOS),
        ]
        if device is not None:
            filters += [(f"{self.secagg_all}/#", QOS), (f"{self.secagg_to(device)}/#", QOS)]
        return filters

    def coordinator_subscriptions(self) -> list[tuple[str, int]]:
        """(filter, qos) pairs the coordinator subscribes to in ``on_connect``.

        The coordinator listens on ``control`` too, so an operator tool can pause or stop it;
        it ignores control messages older than its own start (a retained ``stopped`` from a
        previous run).
        """
        return [
            (f"{self.root}/{UPDATE}/+/#", QOS),
            (f"{self.root}/{STATUS}/+", QOS),
            (self.control, QOS),
            (f"{self.root}/{SECAGG}/+/#", QOS),
        ]

    def parse(self, topic: str) -> ParsedTopic:
        """Classify a topic of this job; ProtocolError if foreign, malformed or of another job."""
        if not isinstance(topic, str):
            raise ProtocolError(f"topic must be a string, got {type(topic).__name__}")
        head = f"{self.prefix}/"
        if not topic.startswith(head):
            raise ProtocolError(f"topic {_show(topic)} is not under prefix {self.prefix!r}")
        levels = topic[len(head) :].split("/")
        if levels[0] != self.job:
            raise ProtocolError(f"topic {_show(topic)} belongs to another job, not {self.job!r}")
        return _classify(topic, levels[1:])


def _classify(topic: str, rest: list[str]) -> ParsedTopic:
    kind, args = (rest[0], rest[1:]) if rest else ("", [])
    expected = {
        MODEL: 1,
        GLOBAL: 1,
        UPDATE: 2,
        STATUS: 1,
        ROUND: 0,
        METRICS: 0,
        CONTROL: 0,
        SECAGG: 2,
        SECAGG_ALL: 1,
        SECAGG_TO: 2,
    }.get(kind)
    if expected is None:
        raise ProtocolError(f"topic {_show(topic)} has unknown kind {kind!r}")
    if len(args) != expected:
        raise ProtocolError(f"topic {_show(topic)} is malformed: {kind} takes {expected} level(s)")
    device = check_id(args[0], "device id") if kind in _DEVICE_LEVEL else None
    chunk = _chunk_index(topic, args[-1]) if kind in BINARY_KINDS else None
    base = topic.rsplit("/", 1)[0] if chunk is not None else topic
    return ParsedTopic(kind=kind, device=device, chunk=chunk, base=base)


def _chunk_index(topic: str, level: str) -> int:
    # Canonical decimal only: "0", "17"; not "007", "+1" or " 1" (one topic per chunk).
    canonical = level.isascii() and level.isdigit() and len(level) <= 10
    if not canonical or (len(level) > 1 and level[0] == "0"):
        raise ProtocolError(f"topic {_show(topic)} has invalid chunk index {level!r}")
    index = int(level)
    if index > _MAX_CHUNK_INDEX:
        raise ProtocolError(f"topic {_show(topic)} has chunk index {index} out of range")
    return index


def _show(topic: str, limit: int = 120) -> str:
    return repr(topic if len(topic) <= limit else topic[: limit - 3] + "...")
