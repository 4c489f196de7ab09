"""Test-set scores of the global models, off the job's critical path.

Scoring a version on the test set takes the coordinator as long as a fast board's local
epoch (about 0.45 s for ``cnn`` on Fashion-MNIST's 10,000 test images here). Done inline,
every round's announcement and every FedBuff version waited for it: with a version every
2-3 s that was a sixth of the fleet's time. :class:`Scorer` scores on a worker thread with
its own interpreter, while the coordinator publishes the next version and collects
updates; :class:`ScoredMetrics` releases each round's metrics, in round order, once its
score is in (the run directory's metrics.jsonl, the retained metrics topic and
``on_round`` then carry the accuracy, as before).

A round's ``RoundMetrics.time`` stays the moment its weights were made, not the moment
they were scored. The worker lags at most :data:`MAX_BEHIND` versions behind: past that the
coordinator waits for it, so a test set slower than the fleet costs what it costs instead
of a growing queue. A coordinator killed before a score came back leaves that round's
accuracy empty in metrics.jsonl; ``--resume`` scores the checkpointed round again.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Mapping

import numpy as np

from coordinator.evaluation import Evaluator
from edge_client.protocol import RoundMetrics
from edge_client.trainable_model import EvalResult

log = logging.getLogger(__name__)

MAX_BEHIND = 4  # versions queued for scoring before the coordinator waits for the worker

Weights = Mapping[str, np.ndarray]


class Scorer:
    """Scores weights on the test set on one worker thread, in submission order."""

    def __init__(self, evaluator: Evaluator, max_behind: int = MAX_BEHIND) -> None:
        self._evaluator = evaluator  # used by the worker thread only
        self._todo: queue.Queue[tuple[int, dict[str, np.ndarray]] | None] = queue.Queue(max_behind)
        self._done: queue.Queue[tuple[int, EvalResult | None]] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="scorer", daemon=True)
        self._thread.start()

    def submit(self, round_: int, weights: Weights) -> None:
        """Queue ``weights`` (copied) for scoring; blocks while MAX_BEHIND are queued."""
        self._todo.put((round_, {k: np.array(v, copy=True) for k, v in weights.items()}))

    def results(self, timeout: float | None = 0.0) -> list[tuple[int, EvalResult | None]]:
        """Scores finished since the last call (None: scoring failed, logged); waits up to
        ``timeout`` for the first one (None: until one comes)."""
        out: list[tuple[int, EvalResult | None]] = []
        try:
            out.append(self._done.get(timeout=timeout) if timeout != 0 else self._done.get_nowait())
        except queue.Empty:
            return out
        while True:
            try:
                out.append(self._done.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        self._todo.put(None)
        self._thread.join(timeout=30)

    def _work(self) -> None:
        while (item := self._todo.get()) is not None:
            round_, weights = item
            try:
                result: EvalResult | None = self._evaluator.evaluate(weights)
            except Exception:  # a bad score must not end the job, nor leave the round waiting
                log.exception("scoring the global model of round %d failed", round_)
                result = None
            self._done.put((round_, result))


class ScoredMetrics:
    """Rounds' metrics held until their scores are in, then released in round order.

    ``release(metrics)`` is called once per round, in order, with the round's final metrics
    (accuracy and loss filled in when it was scored)."""

    def __init__(
        self,
        scorer: Scorer | None,
        due: Callable[[int], bool],
        release: Callable[[RoundMetrics], None],
    ) -> None:
        self.scorer = scorer
        self.due = due
        self._release = release
        self._held: collections.deque[RoundMetrics] = collections.deque()
        self._waiting: set[int] = set()  # rounds submitted, score not back yet

    def add(self, metrics: RoundMetrics, weights: Weights) -> None:
        """A closed round: score ``weights`` when it is due, release what is ready."""
        self._held.append(metrics)
        if self.scorer is not None and self.due(metrics.round):
            self._waiting.add(metrics.round)
            self.scorer.submit(metrics.round, weights)
        self.collect()

    def collect(self, timeout: float | None = 0.0) -> None:
        """Fill in the scores that came back; release every round at the front that is
        complete. ``timeout``: how long to wait for a score (0: not at all)."""
        if self.scorer is None or not self._waiting:
            self._flush()
            return
        for round_, result in self.scorer.results(timeout):
            self._waiting.discard(round_)
            if result is None:
                continue
            for i, m in enumerate(self._held):
                if m.round == round_:
                    self._held[i] = dataclasses.replace(
                        m, accuracy=result.accuracy, loss=result.loss
                    )
        self._flush()

    def finish(self) -> None:
        """Wait for every outstanding score and release everything held."""
        while self._waiting:
            before = len(self._waiting)
            self.collect(timeout=60.0)
            if len(self._waiting) == before:
                log.warning("no score came back in 60 s: rounds %s keep no accuracy", self._waiting)
                self._waiting.clear()
        self._flush()

    @property
    def pending(self) -> int:
        return len(self._held)

    def _flush(self) -> None:
        while self._held and self._held[0].round not in self._waiting:
            self._release(self._held.popleft())
