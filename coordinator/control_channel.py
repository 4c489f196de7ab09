"""The job's control topic: the operator's pause, resume and stop, and the job's own state.

The coordinator publishes its state retained on ``control`` (signed in a signed job) and obeys
an operator's message only if it names this job and, in a signed job, carries the job's
signature. A pause ends by itself after ``--max-pause``. The coordinator owns one
``ControlChannel`` and hands it every ``ControlReceived`` its inbox pump sees.
"""

from __future__ import annotations

import logging
import time

from coordinator.config import JobConfig
from coordinator.round_mode import SENDER
from edge_client.errors import ProtocolError
from edge_client.protocol import JobControl, Topics
from edge_client.signing import Signer, Verifier
from edge_client.transport import Transport

log = logging.getLogger(__name__)


class ControlChannel:
    def __init__(
        self, config: JobConfig, transport: Transport, topics: Topics, signer: Signer | None
    ) -> None:
        self.cfg = config
        self.transport = transport
        self.topics = topics
        self.signer = signer
        # a signing coordinator obeys only control messages signed with its own key
        self.verifier = signer.verifier() if signer else None
        self.started = time.time()  # control messages older than this are a previous run's
        self.state = "running"
        self.last = JobControl(config.job, "running", self.started)  # last published
        self.pause_deadline: float | None = None  # time.monotonic() when a pause ends

    def on_control(self, ctl: JobControl, raw: bytes) -> None:
        """An operator's decision: obeyed only if it names this job and, in a signed job,
        is signed with the job's key; anything else is refused and the job's own state is
        published again (a forged retained message must not stay on the broker)."""
        problem = control_problem(ctl, raw, self.cfg.job, self.verifier)
        if problem is not None:
            log.warning("ignoring a control message %s", problem)
            self.republish()
            return
        if ctl.time <= self.started or ctl.state == self.state:
            return  # a previous run's, or our own echo
        log.warning(
            "operator set the job %s%s%s",
            ctl.state,
            f" by {ctl.by}" if ctl.by else "",
            f" ({ctl.detail})" if ctl.detail else "",
        )
        self.pause_deadline, until = None, None
        if ctl.state == "paused" and self.cfg.max_pause > 0:
            self.pause_deadline = time.monotonic() + self.cfg.max_pause
            until = time.time() + self.cfg.max_pause
        # the decision becomes the job's published state (with a pause's end, so the
        # dashboard shows who paused, when, and until when)
        self.publish(ctl.state, ctl.detail, by=ctl.by, at=ctl.time, until=until)

    def end_pause_after_limit(self) -> None:
        if self.pause_deadline is None or time.monotonic() < self.pause_deadline:
            return
        self.pause_deadline = None
        if self.state != "paused":
            return
        who = self.last.by or "an operator"
        log.warning(
            "resuming the job: paused by %s for longer than --max-pause %.0f s",
            who,
            self.cfg.max_pause,
        )
        detail = f"resumed after the pause by {who} reached max-pause ({self.cfg.max_pause:g} s)"
        self.publish("running", detail[:4096], by=SENDER)

    def publish(
        self,
        state: str,
        detail: str = "",
        *,
        by: str | None = None,
        at: float | None = None,
        until: float | None = None,
    ) -> None:
        """Publish the job's state, retained (signed in a signed job); ``by`` None: ours."""
        at = time.time() if at is None else at
        signed = self.signer is not None  # says whether boards can authenticate the job
        self.last = JobControl(self.cfg.job, state, at, detail, by, until, signed=signed)
        self.state = state
        self.republish()

    def republish(self) -> None:
        msg = self.last
        data = self.signer.control(msg) if self.signer else msg.to_json()
        self.transport.publish(self.topics.control, data, retain=True)


def control_problem(ctl: JobControl, raw: bytes, job: str, verifier: Verifier | None) -> str | None:
    """Why a control message must not steer ``job`` (None: it may)."""
    if ctl.job != job:
        return f"for job {ctl.job!r} on the control topic of job {job!r}"
    if verifier is not None:
        try:
            verifier.control(raw)
        except ProtocolError as exc:  # SignatureError: unsigned, another key, tampered
            return f"in signed job {job!r}: {exc}"
    return None
