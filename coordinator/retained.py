"""What a broker still holds retained for a job: chunks left behind by earlier runs.

A run remembers the chunk counts of its own retained messages, so a shorter republish
clears the extra chunks. A new run does not know what an earlier run of the same job left:
``model/2 .. model/15`` of a run with a smaller chunk size would stay retained next to
this run's shorter model. So at start-up the coordinator reads what is retained under its
binary base topics and clears the chunks its own messages do not overwrite; a site aggregator
does the same on its site broker, where it relays the model and global weights
(:func:`clear_leftovers`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from edge_client.messaging import BinaryPublisher
from edge_client.protocol import QOS
from edge_client.transport import Transport

log = logging.getLogger(__name__)

QUIET_S = 0.5  # a broker sends retained messages right after SUBACK: this much silence ends it
TIMEOUT_S = 15.0  # the longest a scan takes, however much keeps arriving


def retained_chunk_counts(
    transport: Transport,
    base_topics: Iterable[str],
    *,
    quiet_s: float = QUIET_S,
    timeout_s: float = TIMEOUT_S,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, int]:
    """For each base topic with retained chunks, highest retained index + 1.

    ``transport`` is connected and used for nothing else (its queue is drained)."""
    bases = set(base_topics)
    for base in sorted(bases):
        transport.subscribe(f"{base}/+", QOS)
    counts: dict[str, int] = {}
    start = last = clock()
    while clock() - last < quiet_s and clock() - start < timeout_s:
        message = transport.get(min(0.1, quiet_s))
        if message is None:
            continue
        last = clock()
        base, _, index = message.topic.rpartition("/")
        if base in bases and message.retain and message.payload and index.isdecimal():
            counts[base] = max(counts.get(base, 0), int(index) + 1)
    return counts


def clear_leftovers(
    scanner: Transport, publisher: BinaryPublisher, base_topics: Iterable[str], where: str
) -> dict[str, int]:
    """Scan what is retained under ``base_topics`` through ``scanner`` (connected if needed,
    closed after) and let ``publisher``'s next retained publish on each clear the chunks it
    does not overwrite. ``where`` names the broker in the log line."""
    if not scanner.connected:
        scanner.connect()
    try:
        counts = retained_chunk_counts(scanner, base_topics)
    finally:
        scanner.close()
    for base, count in counts.items():
        publisher.assume_retained(base, count)
    if counts:
        log.info(
            "retained on %s: %s; chunks the next publish does not overwrite will be cleared",
            where,
            ", ".join(f"{n} chunk(s) on {base}" for base, n in sorted(counts.items())),
        )
    return counts
