"""The client's round transition table, row by row (pure logic, no broker, no interpreter)."""

from __future__ import annotations

import time
from dataclasses import replace

import pytest

from edge_client.protocol import RoundAnnouncement
from edge_client.round_machine import (
    TRANSITIONS,
    Action,
    Phase,
    RoundFacts,
    RoundTracker,
    next_transition,
)

SHA = "ab" * 32


def facts(round_: int = 3, **changes: object) -> RoundFacts:
    ann = RoundAnnouncement("demo", round_, time.time() + 60, ("pi-01",), {}, SHA, SHA)
    base = RoundFacts(
        announcement=ann,
        selected=True,
        completed=False,
        job_state="running",
        late=False,
        waited=False,
        refused=None,
        data_problem=None,
        missing=(),
        load_saved_update=lambda: None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "name", "phase", "action"),
    [
        ({}, "ready", Phase.TRAINING, Action.TRAIN),
        ({"selected": False, "missing": ("model",)}, "not selected", Phase.DONE, Action.SKIP),
        (
            {"completed": True, "load_saved_update": lambda: b"u"},
            "announced again",
            Phase.DONE,
            Action.RESEND,
        ),
        ({"completed": True}, "already completed", Phase.DONE, Action.SKIP),
        (
            {"completed": True, "job_state": "paused"},
            "already completed",
            Phase.DONE,
            Action.SKIP,
        ),
        (
            {"job_state": "paused", "missing": ("model",)},
            "job not running",
            Phase.PAUSED,
            Action.HOLD,
        ),
        ({"late": True, "waited": True}, "deadline passed while waiting", Phase.DONE, Action.FAIL),
        ({"late": True}, "late", Phase.DONE, Action.SKIP),
        ({"refused": "model refused: bad"}, "model refused", Phase.DONE, Action.FAIL),
        ({"data_problem": "shape"}, "data does not fit", Phase.DONE, Action.FAIL),
        ({"missing": ("global weights",)}, "inputs missing", Phase.WAITING, Action.HOLD),
    ],
)
def test_the_first_row_whose_guard_holds_decides(changes, name, phase, action):
    t = next_transition(facts(**changes))
    assert (t.name, t.target, t.action) == (name, phase, action)


def test_every_row_is_reachable_and_the_last_always_holds():
    assert TRANSITIONS[-1].guard(facts(missing=("x",), late=True))
    assert len({t.name for t in TRANSITIONS}) == len(TRANSITIONS)


def test_the_saved_update_is_read_only_when_a_guard_needs_it():
    reads: list[int] = []
    f = facts(load_saved_update=lambda: reads.append(1) or b"u")
    assert next_transition(f).name == "ready" and reads == []
    f = facts(completed=True, load_saved_update=lambda: reads.append(1) or b"u")
    assert next_transition(f).action is Action.RESEND and f.saved_update == b"u" and reads == [1]


def test_a_finished_attempt_announced_again_stays_done_but_a_new_deadline_is_new():
    tracker = RoundTracker()
    ann = facts().announcement
    attempt = tracker.announce(ann, connection=1)
    tracker.enter(attempt, Phase.WAITING)
    tracker.enter(attempt, Phase.DONE)
    assert tracker.waited == {3}
    assert tracker.announce(ann, connection=1).phase is Phase.DONE
    assert tracker.announce(replace(ann, deadline=ann.deadline + 1), 1).phase is Phase.NEW
