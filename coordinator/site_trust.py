"""What a site aggregator believes from upstream: the central job's model, rounds and control.

A board started with ``fedge run --trust-key`` refuses any model, round announcement or
control message that the job's key did not sign. The site aggregator stands between the
central job and its boards, so it checks the same way with the same key (``fedcoord site
--trust-key``, or ``EDGEFL_TRUST_KEY``): in a signed job it relays and obeys only what
verifies, and refuses the rest with a one-line warning. This matters most for control (a
forged ``stopped`` would take the whole site out of the job) and for announcements (the site
announces rounds of its own to its boards, signed with its own key (coordinator/site_keys.py),
so its boards check the site, and the site must check the job). Central announcements must
carry the job's own signature: a site key, endorsed or not, never passes for the job's.

Without a key nothing is checked but the job name, and the site says so in its log when it
starts, and again if the job turns out to be signed.
"""

from __future__ import annotations

import logging

from coordinator.control_channel import control_problem
from edge_client.errors import ProtocolError
from edge_client.messaging import ModelReceived
from edge_client.protocol import JobControl, RoundAnnouncement
from edge_client.signing import Verifier

log = logging.getLogger(__name__)


class UpstreamTrust:
    """Checks upstream messages for one site of one job against the job's public key."""

    def __init__(self, site_id: str, job: str, verifier: Verifier | None) -> None:
        self.site_id, self.job, self.verifier = site_id, job, verifier
        self.refused = 0  # messages refused so far (for logs and tests)
        self._said_signed = False  # warned once that a signed job is relayed unchecked

    @classmethod
    def from_spec(cls, site_id: str, job: str, trust_key: str | None) -> UpstreamTrust:
        """``trust_key``: as ``fedge run --trust-key`` (a PEM or base64 file, or the base64)."""
        return cls(site_id, job, Verifier.from_spec(trust_key) if trust_key else None)

    def describe(self) -> str:
        """One line for the log at start."""
        if self.verifier is not None:
            return (
                f"site {self.site_id}: upstream model, rounds and control must be signed with "
                f"key {self.verifier.key_id}; anything else is refused"
            )
        return (
            f"site {self.site_id}: NO KEY to check upstream messages against (no --trust-key / "
            "EDGEFL_TRUST_KEY): any control message on the job's topic is obeyed and relayed "
            "(a forged 'stopped' takes the site out of the job), and rounds are re-announced "
            "to the site's boards unchecked. For a signed job, give the job's signing.pub"
        )

    def model(self, item: ModelReceived) -> bool:
        """Whether the model envelope may be used and relayed."""
        signature = item.value.meta.get("signature")
        if self.verifier is None:
            if isinstance(signature, dict) and not self._said_signed:
                self._said_signed = True
                log.warning(
                    "site %s: job %s is signed (key %s) but this site has no key to check "
                    "its control messages and rounds against: give --trust-key",
                    self.site_id,
                    self.job,
                    str(signature.get("key"))[:16],
                )
            return True
        try:
            self.verifier.model(item.raw)
        except ProtocolError as exc:
            return self._refuse("model", exc)
        return True

    def announcement(self, ann: RoundAnnouncement, raw: bytes) -> RoundAnnouncement | None:
        """The announcement to act on (parsed from the verified bytes), or None."""
        if self.verifier is not None:
            try:
                # the central job's rounds: its own key only, never a site's
                ann = self.verifier.announcement(raw, site_keys=False)
            except ProtocolError as exc:
                self._refuse("round announcement", exc)
                return None
        if ann.job != self.job:
            self._refuse("round announcement", f"for job {ann.job!r}")
            return None
        return ann

    def control(self, ctl: JobControl, raw: bytes) -> JobControl | None:
        """The control message to obey and relay (parsed from the verified bytes), or None:
        another job's, or in a signed job one not signed with its key (as the coordinator
        checks its own control topic)."""
        problem = control_problem(ctl, raw, self.job, self.verifier)  # the coordinator's check
        if problem is not None:
            self._refuse("control message", problem)
            return None
        return self.verifier.control(raw) if self.verifier is not None else ctl

    def _refuse(self, what: str, reason: object) -> bool:
        self.refused += 1
        log.warning("site %s: ignoring an upstream %s: %s", self.site_id, what, reason)
        return False
