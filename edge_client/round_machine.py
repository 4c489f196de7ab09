"""What the client does with an announced round: phases and a transition table.

Each announcement of an open round (a round *attempt*: a re-announcement with a new deadline
is a new one; in a buffered job, a new grant of a training slot) starts in :attr:`Phase.NEW`. On every step the client gathers the
:class:`RoundFacts` and takes the first row of :data:`TRANSITIONS` whose guard holds from
the attempt's phase: the row names the next phase and the :class:`Action` to carry out.
Rows are read in order, so an earlier row wins (a device that already sent round 3 does
not wait for the job to resume before sending it again). A new way of handling rounds is a
new row.

::

    NEW ─┬─ not selected / completed / late / refused / data ─► DONE   (skip, resend or fail)
         ├─ the job is paused ─────────────────────────────────► PAUSED ──┐
         ├─ the model or the global weights are missing ──────► WAITING ─┤ decided again
         └─ ready ─────────────────────────────────────────────► TRAINING ─► DONE
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from edge_client.protocol import RoundAnnouncement


class Phase(enum.Enum):
    NEW = "new"  # announced and open; nothing decided yet
    PAUSED = "paused"  # the job is paused: decided again once it runs
    WAITING = "waiting"  # selected; the model or the global weights have not arrived
    TRAINING = "training"  # training, then sending the update
    DONE = "done"  # sent, resent, failed, skipped or too late: nothing more to do


UNDECIDED = frozenset({Phase.NEW, Phase.PAUSED, Phase.WAITING})
"""Phases the transition table is consulted from."""


class Action(enum.Enum):
    SKIP = "skip"  # log why (once) and send nothing
    HOLD = "hold"  # log why (once) and decide again on the next step
    RESEND = "resend"  # publish again the update already computed for this round
    FAIL = "fail"  # publish a failure envelope with the reason
    TRAIN = "train"  # train from the global weights and publish the update


AttemptKey = tuple[object, ...]


def attempt_key(ann: RoundAnnouncement, device: str = "") -> AttemptKey:
    """Identity of an attempt: a re-announced round (new deadline) is a new attempt. In a
    buffered job ``device``'s grant is the attempt, whatever version is announced (the
    announcement changes with every version and every slot, the grant only when the
    coordinator grants this device a new training)."""
    grant = ann.grant(device) if ann.buffered else None
    if grant is not None:
        return ("grant", ann.run, ann.model_sha256, grant)
    return (ann.round, ann.model_sha256, ann.global_sha256, ann.deadline)


@dataclass(frozen=True)
class RoundFacts:
    """What the transition guards read about the current attempt (gathered once a step)."""

    announcement: RoundAnnouncement
    selected: bool  # this device is in the announcement's selection
    completed: bool  # this device sent this very round (same run, model, global) or grant
    job_state: str  # running | paused | stopped
    late: bool  # the attempt's deadline has passed (never in a buffered job: slots are revoked)
    waited: bool  # this round waited for its inputs before (some attempt)
    refused: str | None  # why the announced model was refused (when it is not the one held)
    data_problem: str | None  # why the local data cannot train the announced model (held)
    missing: tuple[str, ...]  # inputs not held yet ("model 1a2b...", "global weights ...")
    load_saved_update: Callable[[], bytes | None] = field(repr=False, compare=False)

    @property
    def round(self) -> int:
        return self.announcement.round

    @cached_property
    def saved_update(self) -> bytes | None:
        """The update already sent for this round from the same global weights, if any
        (read from the state directory only when a guard asks)."""
        return self.load_saved_update()


Guard = Callable[[RoundFacts], bool]
Says = Callable[[RoundFacts], str]


@dataclass(frozen=True)
class Transition:
    name: str  # also the key that logs a HOLD or SKIP once per round
    guard: Guard
    target: Phase
    action: Action
    says: Says  # the log line (SKIP, HOLD) or the failure reason (FAIL)


def _missing(f: RoundFacts) -> str:
    return " and ".join(f.missing) or "the round's inputs"


TRANSITIONS: tuple[Transition, ...] = (
    Transition(
        "not selected",
        lambda f: not f.selected,
        Phase.DONE,
        Action.SKIP,
        lambda f: f"round {f.round}: this device is not selected",
    ),
    Transition(
        "announced again",  # a new attempt of the round this device sent: send it again
        lambda f: f.completed and f.saved_update is not None,
        Phase.DONE,
        Action.RESEND,
        lambda f: f"round {f.round} announced again: resent the update already computed",
    ),
    Transition(
        "already completed",
        lambda f: f.completed,
        Phase.DONE,
        Action.SKIP,
        lambda f: f"round {f.round}: already completed from these global weights",
    ),
    Transition(
        "job not running",
        lambda f: f.job_state != "running",
        Phase.PAUSED,
        Action.HOLD,
        lambda f: f"round {f.round}: not starting, the job is {f.job_state}",
    ),
    Transition(
        "deadline passed while waiting",
        lambda f: f.late and f.waited,
        Phase.DONE,
        Action.FAIL,
        lambda f: f"the deadline passed while waiting for {_missing(f)}",
    ),
    Transition(
        "late",
        lambda f: f.late,
        Phase.DONE,
        Action.SKIP,
        lambda f: f"round {f.round}: its deadline has passed",
    ),
    Transition(
        "model refused",
        lambda f: f.refused is not None,
        Phase.DONE,
        Action.FAIL,
        lambda f: f.refused or "",
    ),
    Transition(
        "data does not fit",
        lambda f: f.data_problem is not None,
        Phase.DONE,
        Action.FAIL,
        lambda f: f.data_problem or "",
    ),
    Transition(
        "inputs missing",
        lambda f: bool(f.missing),
        Phase.WAITING,
        Action.HOLD,
        lambda f: f"round {f.round}: waiting for {_missing(f)}",
    ),
    Transition("ready", lambda f: True, Phase.TRAINING, Action.TRAIN, lambda f: ""),
)


def next_transition(facts: RoundFacts) -> Transition:
    """The first row of :data:`TRANSITIONS` whose guard holds (the last one always does)."""
    return next(t for t in TRANSITIONS if t.guard(facts))


@dataclass
class RoundAttempt:
    """The announcement being handled and where the client is with it."""

    announcement: RoundAnnouncement
    connection: int  # the transport connection it arrived over (a new one: resend)
    phase: Phase = Phase.NEW


@dataclass
class RoundTracker:
    """The client's round state: the current attempt and the job's state (its progress is
    in the state directory)."""

    job_state: str = "running"  # from the job's control topic
    device: str = ""  # this device (its grant is the attempt in a buffered job)
    current: RoundAttempt | None = None
    finished: set[AttemptKey] = field(default_factory=set)  # attempt_key of DONE attempts
    waited: set[int] = field(default_factory=set)  # rounds that waited for their inputs
    _said: set[tuple[str, int]] = field(default_factory=set)  # (transition, round) logged

    def announce(self, ann: RoundAnnouncement, connection: int) -> RoundAttempt:
        """Make ``ann`` the current attempt (DONE at once if it was finished before)."""
        done = attempt_key(ann, self.device) in self.finished
        self.current = RoundAttempt(ann, connection, Phase.DONE if done else Phase.NEW)
        return self.current

    def enter(self, attempt: RoundAttempt, phase: Phase) -> None:
        attempt.phase = phase
        if phase is Phase.DONE:
            self.finished.add(attempt_key(attempt.announcement, self.device))
        elif phase is Phase.WAITING:
            self.waited.add(attempt.announcement.round)

    def first_time(self, what: str, round_: int) -> bool:
        """True once per (what, round): repeated HOLD and SKIP lines are logged once."""
        if (what, round_) in self._said:
            return False
        self._said.add((what, round_))
        return True
