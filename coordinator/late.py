"""Updates that arrive after their round closed: discarded with a reason, or folded.

A round closes before every selected device answered when it reaches its over-selection
target (``--over-select``) or its deadline; a device still training then sends an update
for a closed round. By default (``--late-updates discard``) the update is discarded, its
reason recorded and counted as wasted in the open round's metrics. With ``fold`` it is
validated exactly as it would have been in time (against its own round: selection, base
weights, tensors, norm), and it is re-based on the open round's global weights (a step
toward its trained weights, or its own change added: ``--stale-changes``, :func:`stale_change`)
scaled by the staleness weight ``1 / sqrt(1 + s)`` (``s``: rounds behind; ``(1 + s) ** -a``
with ``--staleness-exponent a``), before it goes
through the job's strategy like any update (so clipping, robust strategies and DP see it
as one more update). Beyond ``--max-staleness`` rounds it is discarded.

A folded update also passes the open round's bounded influence (coordinator/influence.py)
like one of its own updates: it is held until the round closes, its change is judged
against the median change of the round's other updates, and its sample count falls under
the weight-share cap of its device (together with the device's own update for the round,
if it sent one). The change judged is that of its own training (``trained - base``, before
the staleness weight): the weight scales a change down, so judging the weighted change
would let a stale outlier be ``1 / weight`` times larger than a timely one. The sample
check against the device's status was made against its own round, when it arrived.

Closed rounds are kept in memory only: after a coordinator restart, a late update for a
round closed before the restart is discarded, so no update is ever counted twice.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np

from coordinator.rounds import RoundCollector
from edge_client.errors import ProtocolError
from edge_client.protocol import Envelope

log = logging.getLogger(__name__)


DEFAULT_STALENESS_EXPONENT = 0.5  # FedBuff's and FedAsync's polynomial: 1/sqrt(1+s)


def staleness_weight(staleness: int, exponent: float = DEFAULT_STALENESS_EXPONENT) -> float:
    """How much of a stale update's change is applied: ``(1 + s) ** -exponent``
    (``--staleness-exponent``; 0.5, the default, is 1/sqrt(1+s): FedBuff's polynomial)."""
    return 1.0 if staleness <= 0 else math.pow(1.0 + staleness, -exponent)


def stale_change(
    current: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray],
    trained: Mapping[str, np.ndarray],
    weight: float,
    mode: str = "from-base",
) -> dict[str, np.ndarray]:
    """A stale update re-based on today's weights (``--stale-changes``):

    - ``from-base`` (FedBuff's): ``current + weight * (trained - base)``, the change its
      training made, added to today's weights;
    - ``toward-model`` (FedAsync's mixing): ``current + weight * (trained - current)``, a
      step toward the weights it trained, which never goes past them: when many boards
      trained from the same old version (a fleet of equal boards that all finish together),
      their changes are not added again and again on top of each other.
    """
    origin = current if mode == "toward-model" else base
    return {
        k: (
            np.asarray(current[k], np.float64)
            + weight * (np.asarray(trained[k], np.float64) - np.asarray(origin[k], np.float64))
        ).astype(np.float32)
        for k in current
    }


class LateUpdates:
    """Remembers the last closed rounds and decides what happens to their late updates."""

    def __init__(
        self,
        mode: str,
        max_staleness: int,
        exponent: float = DEFAULT_STALENESS_EXPONENT,
        stale_changes: str = "from-base",
    ) -> None:
        self.mode = mode
        self.max_staleness = max_staleness
        self.exponent = exponent
        self.stale_changes = stale_changes
        self._closed: dict[int, RoundCollector] = {}

    def closed(self, collector: RoundCollector) -> None:
        """``collector``'s round closed (and was aggregated): remember it for late updates."""
        self._closed[collector.round] = collector
        keep = self.max_staleness + 1  # a round's late updates stay checkable this long
        for r in [r for r in self._closed if r <= collector.round - keep]:
            del self._closed[r]

    def offer(self, envelope: Envelope, device: str, size: int, open_: RoundCollector) -> None:
        """An update or failure for a round before ``open_``'s: discard it or fold it."""
        if envelope.kind != "update":
            log.info("failure report from %s for closed round %d ignored", device, envelope.round)
            return
        staleness = open_.round - envelope.round
        closed = self._closed.get(envelope.round)
        if closed is None:
            self._discard(
                open_,
                device,
                self._too_stale(envelope.round, staleness)
                if self.mode == "fold" and staleness > self.max_staleness
                else f"late update for round {envelope.round}: that round closed before this "
                "coordinator started (or is no longer kept)",
            )
            return
        try:
            _, trained, change = closed.check_late(envelope, device)
        except ProtocolError as exc:  # not a wasted training: an invalid or duplicate update
            open_.rejected[device] = f"late update for round {envelope.round}: {exc}"
            log.warning("rejected late update from %s: %s", device, exc)
            return
        if self.mode != "fold":
            self._discard(
                open_,
                device,
                f"late update for round {envelope.round}, which closed before it arrived "
                f"({staleness} round(s) behind): discarded (--late-updates discard)",
            )
            return
        if staleness > self.max_staleness:
            self._discard(open_, device, self._too_stale(envelope.round, staleness))
            return
        assert closed.global_weights is not None and open_.global_weights is not None
        weight = staleness_weight(staleness, self.exponent)
        folded = stale_change(
            open_.global_weights, closed.global_weights, trained, weight, self.stale_changes
        )
        open_.take_late(device, envelope.round, folded, envelope.samples, change, size)
        log.info(
            "folding %s's late update for round %d into round %d (staleness %d, weight %.3f)",
            device,
            envelope.round,
            open_.round,
            staleness,
            weight,
        )

    def _too_stale(self, late_round: int, staleness: int) -> str:
        return (
            f"late update for round {late_round} is {staleness} rounds stale, over "
            f"--max-staleness {self.max_staleness}: discarded"
        )

    @staticmethod
    def _discard(open_: RoundCollector, device: str, reason: str) -> None:
        open_.late_discarded[device] = reason
        open_.wasted += 1
        log.warning("%s from %s", reason, device)
