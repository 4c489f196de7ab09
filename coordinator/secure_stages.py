"""The coordinator's side of one secure round attempt: 4 stages with deadlines.

The coordinator sees public keys, ciphertexts it cannot read, masked vectors and, in the
last stage, the shares it needs to remove the masks: never one board's update
(docs/secure-aggregation.md, docs/protocol.md section 14). :class:`SecureRound` is a state
machine driven by the round loop: ``offer`` each stage message a device sends, ``fail_device``
/ ``drop`` devices that reported a failure or went offline, ``advance`` on every tick; it
publishes the coordinator's stage messages itself through the two callables it is given.

1. ``keys``: until every selected device advertised keys (or failed, or dropped), the
   over-selection target is reached, or the announcement's deadline (training time).
2. ``shares``: the key list goes out (graph degree and threshold for the advertisers); until
   every advertiser shared or the stage deadline.
3. ``masked``: each sharer gets the ciphertexts addressed to it; until every sharer sent its
   masked vector or the deadline.
4. ``unmask``: the survivors (whose vector arrived) go out; until every survivor answered or
   the deadline; then :mod:`coordinator.secure_unmask` rebuilds the secrets and the sum.

Anything malformed from a device is a :class:`~edge_client.protocol.Rejection` with a reason:
the device leaves the round at that stage (recovered like a dropout). Too few left for the
threshold, or secrets that cannot be rebuilt, fail the attempt with a reason (``failed``);
devices shown to have sent garbage are named in ``blamed``, so a retry can leave them out.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coordinator.secure_unmask import UnmaskInputs, unmask_round
from edge_client.errors import EdgeFLError
from edge_client.protocol import (
    Envelope,
    KeyList,
    Keys,
    Masked,
    Rejection,
    Routed,
    SecAggParams,
    Shares,
    UnmaskReply,
    UnmaskRequest,
    encode_key_list,
    encode_routed,
    encode_unmask_request,
    read_stage,
)
from edge_client.secagg import (
    Graph,
    GraphParameters,
    build_graph,
    check_public,
    choose_parameters,
)

log = logging.getLogger(__name__)

SENDER = "coordinator"
STAGE_NAMES = ("keys", "shares", "masked", "unmask")
MIN_DEVICES = 3  # with 2, each learns the other's update from the sum; t would be 1
PublishAll = Callable[[Envelope], int]  # secagg-all; returns bytes published
PublishTo = Callable[[str, Envelope], int]  # secagg-to/{device}


@dataclass
class StageLog:
    """One stage as it happened: for metrics.jsonl and the monitor."""

    started: float
    ended: float | None = None
    devices: int = 0  # devices whose message of this stage was taken
    bytes_up: int = 0  # their messages, all chunks
    bytes_down: int = 0  # what the coordinator published to open the stage, per recipient
    cpu_s: float = 0.0  # the coordinator's CPU time closing it (unmask: rebuilding, unmasking)

    def to_dict(self) -> dict[str, Any]:
        end = self.ended if self.ended is not None else self.started
        return {
            "devices": self.devices,
            "duration_s": round(end - self.started, 3),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "cpu_s": round(self.cpu_s, 4),
        }


@dataclass
class SecureRound:
    """One secure round attempt, from the announcement to the unmasked weighted mean."""

    job: str
    run: str | None
    round: int
    selected: frozenset[str]
    params: SecAggParams
    names: Sequence[str]  # tensors in manifest order
    base: Mapping[str, np.ndarray]  # the global weights as the boards decoded them
    keys_deadline: float  # the announcement's deadline (unix time)
    publish_all: PublishAll
    publish_to: PublishTo
    target: int = 0  # over-selection: the keys stage closes at this many advertisers
    min_survivors: int = 1  # also --min-results
    graph_params: Callable[[int], GraphParameters] = choose_parameters
    clock: Callable[[], float] = time.time
    stage: str = "keys"  # keys, shares, masked, unmask, done, failed
    failed: str = ""  # why the attempt failed
    blamed: dict[str, str] = field(default_factory=dict)  # device -> garbage it sent
    rejections: list[Rejection] = field(default_factory=list)
    reported: dict[str, str] = field(default_factory=dict)  # device -> its failure reason
    dropped: set[str] = field(default_factory=set)  # went offline
    cancelled: set[str] = field(default_factory=set)  # still training at the target
    keys: dict[str, Keys] = field(default_factory=dict)
    shares: dict[str, Mapping[str, bytes]] = field(
        default_factory=dict
    )  # sender -> recipient -> ct
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    replies: dict[str, UnmaskReply] = field(default_factory=dict)
    bytes_by_device: dict[str, int] = field(default_factory=dict)
    stages: dict[str, StageLog] = field(default_factory=dict)
    graph: Graph | None = None
    advertised: tuple[str, ...] = ()  # U1
    sharers: tuple[str, ...] = ()  # U2
    survivors: tuple[str, ...] = ()  # U3
    weights: dict[str, np.ndarray] | None = None  # the result: base + weighted mean change
    total_weight: int = 0
    _deadline: float = 0.0
    _digests: dict[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._deadline = self.keys_deadline
        self.stages["keys"] = StageLog(self.clock())

    # -- input -----------------------------------------------------------------------------
    def offer(self, env: Envelope, device: str, size: int) -> bool:
        """A stage message from ``device`` (its topic's id); True if taken."""
        try:
            msg = read_stage(env)
            self._check(msg.job, msg.round, msg.sender, msg.session, device)
        except EdgeFLError as exc:
            self._reject(device, env.sender, env.round, str(exc), size)
            return False
        digest = hashlib.sha256(env.body).hexdigest()
        earlier = self._digests.get((device, msg.stage))
        if earlier == digest:
            return False  # a QoS 1 duplicate
        if earlier is not None:
            self._reject(device, env.sender, env.round, f"a second, different {msg.stage}", size)
            return False
        expected = {"keys": "keys", "shares": "shares", "masked": "masked"}.get(self.stage)
        wanted = "unmask-reply" if self.stage == "unmask" else expected
        if msg.stage != wanted or not self._may_send(device):
            why = f"{msg.stage} during the {self.stage} stage" if msg.stage != wanted else ""
            self._reject(device, env.sender, env.round, why or "not part of this stage", size)
            return False
        try:
            self._take(device, msg.body)
        except EdgeFLError as exc:
            self._reject(device, env.sender, env.round, str(exc), size, counted=True)
            return False
        self._digests[(device, msg.stage)] = digest
        stage = self.stages[self.stage]
        stage.devices += 1
        stage.bytes_up += size
        self.bytes_by_device[device] = self.bytes_by_device.get(device, 0) + size
        return True

    def fail_device(self, device: str, reason: str) -> None:
        """``device`` reported a failed round (its ``failure`` envelope)."""
        if device in self.selected and device not in self.reported:
            self.reported[device] = reason

    def drop(self, device: str) -> bool:
        """``device`` went offline: no stage waits for it any more."""
        if device not in self.selected or device in self.dropped:
            return False
        self.dropped.add(device)
        return True

    # -- progress ----------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.stage in ("done", "failed")

    def advance(self) -> None:
        """Close the current stage when nobody is left to wait for or its deadline passed."""
        while not self.complete and (self._stage_done() or self.clock() >= self._deadline):
            self._close_stage()

    def _waiting_for(self) -> set[str]:
        gone = self.dropped | set(self.reported) | set(self.blamed)
        pool, have = self._pool(), self._have()
        return set(pool) - have - gone

    def _pool(self) -> Iterable[str]:
        """Who may send the current stage's message."""
        pools: dict[str, Iterable[str]] = {
            "keys": self.selected,
            "shares": self.advertised,
            "masked": self.sharers,
            "unmask": self.survivors,
        }
        return pools.get(self.stage, ())

    def _have(self) -> set[str]:
        """Who sent the current stage's message."""
        got: dict[str, Iterable[str]] = {
            "keys": self.keys,
            "shares": self.shares,
            "masked": self.masked,
            "unmask": self.replies,
        }
        return set(got.get(self.stage, ()))

    def _stage_done(self) -> bool:
        if self.stage == "keys" and self.target and len(self.keys) >= self.target:
            return True
        return not self._waiting_for()

    def _close_stage(self) -> None:
        now = self.clock()
        self.stages[self.stage].ended = now
        late = sorted(self._waiting_for())
        if late:
            log.warning(
                "secure round %d: %s stage closed without %s",
                self.round,
                self.stage,
                ", ".join(late),
            )
        step = {
            "keys": self._open_shares,
            "shares": self._open_masked,
            "masked": self._open_unmask,
            "unmask": self._finish,
        }[self.stage]
        closing, cpu = self.stages[self.stage], time.process_time()
        try:
            step()
        except EdgeFLError as exc:
            self._fail(str(exc))
        closing.cpu_s += time.process_time() - cpu

    def _open_shares(self) -> None:
        self.advertised = tuple(sorted(self.keys))
        if self.target and len(self.keys) >= self.target:  # told to stop by the key list
            self.cancelled = self._waiting_for()
        n = len(self.advertised)
        if n < max(MIN_DEVICES, self.min_survivors):
            raise _Short(
                f"{n} of {len(self.selected)} devices advertised keys, a secure round needs "
                f"{max(MIN_DEVICES, self.min_survivors)} (3, and --min-results)"
            )
        params = self.graph_params(n)
        seed = secrets.token_bytes(32)  # public, unpredictable: places the devices in the graph
        self.graph = build_graph(self.advertised, seed, params)
        self._enough(n, "advertised keys")
        deadline = self._next_stage("shares")
        msg = KeyList(
            {d: self.keys[d] for d in self.advertised}, params.k, params.threshold, seed, deadline
        )
        env = encode_key_list(self.job, self.round, SENDER, self.params.session, msg)
        self.stages["shares"].bytes_down = self.publish_all(env) * n
        log.info(
            "secure round %d: %d devices advertised keys; %s graph, threshold %d",
            self.round,
            n,
            "complete" if self.graph.complete else f"{params.k}-regular",
            self.graph.threshold,
        )

    def _open_masked(self) -> None:
        assert self.graph is not None
        self.sharers = tuple(sorted(self.shares))
        self._enough(len(self.sharers), "shared their secrets")
        deadline = self._next_stage("masked")
        for holder in self.sharers:
            cts = {j: self.shares[j][holder] for j in self.sharers if holder in self.shares[j]}
            env = encode_routed(
                self.job, self.round, SENDER, self.params.session, Routed(cts, deadline)
            )
            self.stages["masked"].bytes_down += self.publish_to(holder, env)

    def _open_unmask(self) -> None:
        self.survivors = tuple(sorted(self.masked))
        self._enough(len(self.survivors), "sent their masked vectors")
        if len(self.survivors) < self.min_survivors:
            raise _Short(
                f"{len(self.survivors)} masked vectors, --min-results is {self.min_survivors}"
            )
        deadline = self._next_stage("unmask")
        env = encode_unmask_request(
            self.job,
            self.round,
            SENDER,
            self.params.session,
            UnmaskRequest(self.survivors, deadline),
        )
        self.stages["unmask"].bytes_down = self.publish_all(env) * len(self.survivors)

    def _finish(self) -> None:
        assert self.graph is not None
        result = unmask_round(
            UnmaskInputs(
                graph=self.graph,
                ctx_job=self.job,
                ctx_run=self.run,
                round=self.round,
                params=self.params,
                names=self.names,
                base=self.base,
                masked=self.masked,
                sharers=self.sharers,
                mask_publics={d: k.s_public for d, k in self.keys.items()},
                replies=self.replies,
            )
        )
        for device, reason in result.excluded.items():
            self._reject(device, device, self.round, reason, 0, counted=True)
        self.blamed.update(result.blamed)
        if result.weights is None:
            raise _Short(result.failed)
        self.weights, self.total_weight = result.weights, result.total_weight
        self.stage = "done"
        log.info(
            "secure round %d: unmasked the sum of %d devices (total weight %d)",
            self.round,
            len(self.survivors),
            self.total_weight,
        )

    def _enough(self, n: int, what: str) -> None:
        assert self.graph is not None
        if n < self.graph.threshold:
            raise _Short(
                f"only {n} devices {what}, the threshold is {self.graph.threshold}: too few to "
                "rebuild the masks"
            )

    def _next_stage(self, name: str) -> float:
        self.stage = name
        now = self.clock()
        self.stages[name] = StageLog(now)
        self._deadline = now + self.params.stage_timeout
        return self._deadline

    def _fail(self, reason: str) -> None:
        self.stage, self.failed = "failed", reason
        log.warning("secure round %d failed: %s", self.round, reason)

    # -- checks ------------------------------------------------------------------------------
    def _check(self, job: str, round_: int, sender: str, session: str, device: str) -> None:
        if job != self.job:
            raise _Bad(f"secure-aggregation message for job {job!r}")
        if sender != device:
            raise _Bad(f"payload sender {sender!r} differs from topic device {device!r}")
        if round_ != self.round or session != self.params.session:
            raise _Bad(f"for round {round_} session {session}, not the open secure round")
        if device not in self.selected:
            raise _Bad("device was not selected for this round")

    def _may_send(self, device: str) -> bool:
        if device in self.blamed or device in self.reported:
            return False
        return device in self._pool()

    def _take(self, device: str, body: object) -> None:
        match body:
            case Keys() if self.stage == "keys":
                if body.c_public == body.s_public:
                    raise _Bad("its two public keys are the same")
                check_public(body.c_public, "its share-encryption key")  # else every
                check_public(body.s_public, "its mask key")  # neighbour would leave the round
                self.keys[device] = body
            case Shares() if self.stage == "shares":
                assert self.graph is not None
                holders = set(self.graph.holders(device))
                if set(body.ciphertexts) != holders:
                    raise _Bad(
                        f"shares for {len(body.ciphertexts)} holders, its neighbourhood has "
                        f"{len(holders)}"
                    )
                self.shares[device] = dict(body.ciphertexts)
            case Masked() if self.stage == "masked":
                length = sum(int(np.prod(np.shape(self.base[n]))) for n in self.names) + 1
                if body.bits != self.params.bits or body.vector.shape != (length,):
                    raise _Bad(
                        f"malformed masked vector: {body.vector.shape[0]} {body.bits}-bit "
                        f"elements, the round expects {length} of {self.params.bits} bits"
                    )
                self.masked[device] = body.vector
            case UnmaskReply() if self.stage == "unmask":
                self.replies[device] = body
            case _:
                raise _Bad("a message of another stage")

    def _reject(
        self, device: str, sender: str, round_: int, reason: str, size: int, counted: bool = False
    ) -> None:
        self.rejections.append(Rejection(device, sender, round_, reason, counted, size))
        log.warning("secure round %d: rejected a message from %s: %s", self.round, device, reason)

    # -- results -----------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        """The round's ``secagg`` object in metrics.jsonl and on the metrics topic."""
        graph = self.graph
        out: dict[str, Any] = {
            "session": self.params.session,
            "stage": self.stage,
            "bits": self.params.bits,
            "scale": self.params.scale,
            "clip": self.params.clip,
            "stages": {n: s.to_dict() for n, s in self.stages.items()},
            "advertised": list(self.advertised),
            "shared": list(self.sharers),
            "survivors": list(self.survivors),
            "recovered": sorted(set(self.sharers) - set(self.survivors)),
        }
        if graph is not None:
            out |= {"k": len(graph.neighbours(graph.members[0])), "threshold": graph.threshold}
            out["graph"] = "complete" if graph.complete else "k-regular"
        if self.params.l2_clip:
            out["l2_clip"] = self.params.l2_clip
        if self.total_weight:
            out["weight"] = self.total_weight
            out["error_bound"] = len(self.survivors) / (2 * self.params.scale * self.total_weight)
        if self.failed:
            out["failed"] = self.failed
        if self.blamed:
            out["blamed"] = dict(self.blamed)
        return out

    def participants(self) -> Iterable[str]:
        return self.survivors if self.stage == "done" else ()


class _Bad(EdgeFLError):
    """A device's stage message is unusable."""


class _Short(EdgeFLError):
    """The attempt cannot go on (too few devices, secrets that cannot be rebuilt)."""
