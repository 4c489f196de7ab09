"""The seam between the job loop (``server.py: Coordinator.run``) and a round mode.

A round mode runs one round from the current global weights to the next ones and says what
happened: ``run_round(round_, weights) -> (new_weights, RoundMetrics)``. The synchronous and
semi-synchronous round is ``sync_rounds.py: SyncRounds``; another mode (buffered, secure
aggregation) is a class of the same shape in its own module, built with the ``Coordinator``
whose services it uses (presence, the inbox pump, retained publishing, the control state;
see the "round-mode services" section of ``Coordinator``).

Also here: what the job loop, its control channel and every round mode share.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np

from edge_client.errors import EdgeFLError
from edge_client.protocol import RoundMetrics

SENDER = "coordinator"  # the sender id of everything the coordinator publishes
POLL_S = 0.2  # inbox poll interval while waiting


class JobError(EdgeFLError):
    """The job cannot continue (too few devices or results, operator stop...)."""


class RoundMode(Protocol):
    def run_round(
        self, round_: int, weights: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], RoundMetrics]:
        """Run round ``round_`` from ``weights``; the new global weights and the round's
        metrics (saved and published by the job loop). Raise ``JobError`` when the round
        cannot complete (the job stops with that message)."""
        ...
