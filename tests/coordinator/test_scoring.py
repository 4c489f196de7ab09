"""Global models scored on the side (coordinator/scoring.py): the next round does not wait
for the test set, metrics still come out complete and in round order, a failed score does
not stop the job, and a score a kill lost is taken again on --resume."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from coordinator.evaluation import Evaluator
from coordinator.scoring import ScoredMetrics, Scorer
from edge_client.data import load_dataset
from edge_client.protocol import RoundMetrics, Topics
from edge_client.trainable_model import TrainableModel
from edge_client.transport import MemoryBus, MemoryTransport
from tests.coordinator.test_coordinator import bundle, make_coordinator, start_devices

__all__ = ["bundle"]  # the fixture, imported for this module's tests


@pytest.fixture
def evaluator(export_dir) -> Evaluator:
    test = load_dataset("fashion-mnist", "test")
    return Evaluator(TrainableModel.from_dir(export_dir("mlp")), test.subset(np.arange(500)))


def shifted(bundle, by: float) -> dict[str, np.ndarray]:
    return {k: v + by for k, v in bundle.initial_weights.items()}


def metrics(round_: int) -> RoundMetrics:
    return RoundMetrics(job="t", round=round_, participants=("dev0",), samples=10)


def test_scores_are_the_inline_ones_and_metrics_leave_in_round_order(bundle, evaluator):
    # Prepare: rounds 1-5, scored every second round (and never round 5, not "the last" here)
    released: list[RoundMetrics] = []
    twin = evaluator.twin(TrainableModel(bundle.tflite, bundle.manifest))
    scores = ScoredMetrics(Scorer(twin), lambda r: r % 2 == 0, released.append)
    # Execute: round 2 is submitted, then round 3 (not due) arrives before its score
    for r in range(1, 6):
        scores.add(metrics(r), shifted(bundle, 0.01 * r))
        assert [m.round for m in released] == list(range(1, len(released) + 1))
    scores.finish()
    # Assert: every round out once, in order; the due ones scored exactly as inline
    assert [m.round for m in released] == [1, 2, 3, 4, 5]
    assert [m.accuracy is not None for m in released] == [False, True, False, True, False]
    for m in released:
        if m.accuracy is not None:
            expected = evaluator.evaluate(shifted(bundle, 0.01 * m.round))  # inline
            assert (m.accuracy, m.loss) == (expected.accuracy, expected.loss)
    assert scores.pending == 0


def test_a_score_that_fails_leaves_its_round_unscored_and_the_rest_going(bundle, evaluator, caplog):
    # Prepare: round 2's weights do not fit the model
    released: list[RoundMetrics] = []
    twin = evaluator.twin(TrainableModel(bundle.tflite, bundle.manifest))
    scores = ScoredMetrics(Scorer(twin), lambda r: True, released.append)
    bad = {k: np.zeros((3,), np.float32) for k in bundle.initial_weights}
    # Execute
    with caplog.at_level(logging.ERROR, logger="coordinator.scoring"):
        scores.add(metrics(1), shifted(bundle, 0.0))
        scores.add(metrics(2), bad)
        scores.add(metrics(3), shifted(bundle, 0.0))
        scores.finish()
    # Assert
    assert [(m.round, m.accuracy is None) for m in released] == [(1, False), (2, True), (3, False)]
    assert "scoring the global model of round 2 failed" in caplog.text


def test_the_next_round_is_announced_before_the_last_score_is_in(bundle, tmp_path):
    # Prepare: a test set slow enough to score (60,000 images) and an observer on the bus
    bus = MemoryBus()
    devices = start_devices(bus, "t", 3)
    train = load_dataset("fashion-mnist", "train")
    slow = Evaluator(TrainableModel(bundle.tflite, bundle.manifest), train)
    topics = Topics("t")
    seen: list[tuple[str, int]] = []
    observer = MemoryTransport(bus, "observer")
    observer.connect()
    observer.subscribe(topics.metrics, 1)
    observer.subscribe(topics.round, 1)
    coord = make_coordinator(bus, bundle, tmp_path, slow, rounds=3)
    # Execute
    state = coord.run()
    while (msg := observer.get(0.1)) is not None:
        doc = json.loads(msg.payload)
        kind = "metrics" if msg.topic == topics.metrics else doc.get("state", "")
        if kind in ("metrics", "open"):
            seen.append((kind, doc["round"]))
    # Assert: round 2 opened before round 1's metrics (its score) came out, and every round
    # was scored in the end
    assert seen.index(("open", 2)) < seen.index(("metrics", 1)), seen
    assert [m.round for m in state.history] == [1, 2, 3]
    assert all(m.accuracy is not None for m in state.history)
    lines = (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["accuracy"] is not None for line in lines)
    for d in devices:
        d.stop()


def test_a_score_lost_to_a_kill_is_taken_again_on_resume(bundle, evaluator, tmp_path):
    # Prepare: two rounds, then round 2's score blanked as a kill -9 during scoring leaves it
    bus = MemoryBus()
    devices = start_devices(bus, "t", 3)
    make_coordinator(bus, bundle, tmp_path, evaluator, rounds=2).run()
    path = tmp_path / "run/metrics.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    lines[-1]["accuracy"] = lines[-1]["loss"] = None
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    # Execute: a third round on --resume (the first run's devices left with its job)
    bus = MemoryBus()
    devices += start_devices(bus, "t", 3)
    make_coordinator(bus, bundle, tmp_path, evaluator, rounds=3).run(resume=True)
    # Assert
    after = [json.loads(x) for x in path.read_text().splitlines()]
    assert [m["round"] for m in after] == [1, 2, 3]
    assert all(m["accuracy"] is not None for m in after), after
    assert after[1]["accuracy"] == evaluator.evaluate(state_weights_of_round_2(tmp_path)).accuracy
    for d in devices:
        d.stop()


def state_weights_of_round_2(tmp_path) -> dict[str, np.ndarray]:
    with np.load(tmp_path / "run/checkpoints/round-0002.npz") as data:
        return {k[2:]: data[k] for k in data.files if k.startswith("w/")}
