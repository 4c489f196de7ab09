"""Retained chunks of an earlier run of the same job are cleared by the next run.

A run knows the chunk counts of its own retained messages only; without reading what the
broker holds at start-up, ``model/1 ..`` and ``global/1 ..`` of an earlier run with a
smaller chunk size would stay retained next to the new run's one-chunk messages.
"""

from __future__ import annotations

import time

import pytest

from coordinator.config import JobConfig
from coordinator.job import run_job
from coordinator.retained import retained_chunk_counts
from coordinator.simulation import FleetConfig, fleet_processes
from edge_client.manifest import Manifest
from edge_client.protocol import Reassembler, Topics, decode
from edge_client.transport import BrokerConfig, MemoryBus, MemoryTransport
from tests.fixtures.brokers import mqtt_client

SMALL_CHUNK = 50_000  # the mlp model and weights (~800 kB each) become ~17 chunks


def retained(broker, job: str) -> dict[str, list[bytes]]:  # noqa: ANN001
    """What a late subscriber receives retained, per base topic: chunk payloads by index."""
    with mqtt_client(broker, "late-subscriber") as late:
        late.subscribe_wait(f"fl/v1/{job}/#", qos=1)
        late.collector.wait_for(f"fl/v1/{job}/global/0", timeout=10)
        time.sleep(0.5)  # the rest of the retained messages
        messages = late.collector.matching(f"fl/v1/{job}/#")
    by_index: dict[str, dict[int, bytes]] = {}
    for m in messages:
        base, _, index = m.topic.rpartition("/")
        kind = base.rsplit("/", 1)[1]
        if kind in ("model", "global") and m.payload:
            by_index.setdefault(kind, {})[int(index)] = m.payload
    for kind, chunks in by_index.items():
        assert sorted(chunks) == list(range(len(chunks))), f"{kind}: chunks {sorted(chunks)}"
    return {kind: [chunks[i] for i in range(len(chunks))] for kind, chunks in by_index.items()}


def one_run(broker, tmp_path, export_dir, max_chunk: int) -> None:  # noqa: ANN001
    job = JobConfig(
        job="left",
        rounds=1,
        min_devices=1,
        model_dir=str(export_dir("mlp")),
        optimizer="sgd",
        lr=0.05,
        epochs=1,
        max_chunk=max_chunk,
        run_dir=str(tmp_path / "run"),
    )
    config = BrokerConfig.from_url(broker.url)
    with fleet_processes(FleetConfig(devices=1, partition="shards:1"), job, config, tmp_path):
        state = run_job(job, broker=config, final_models=False)
    assert state.finished


@pytest.mark.slow
def test_a_new_run_clears_the_longer_retained_messages_of_an_earlier_run(
    mosquitto_broker, tmp_path, export_dir
):
    # Prepare: an earlier run of job "left" with small chunks leaves many retained chunks
    one_run(mosquitto_broker, tmp_path / "earlier", export_dir, SMALL_CHUNK)
    before = retained(mosquitto_broker, "left")
    assert len(before["model"]) > 10 and len(before["global"]) > 10
    # Execute: a new run of the same job with the default chunk size (one chunk each)
    one_run(mosquitto_broker, tmp_path / "new", export_dir, 960_000)
    # Assert: a late subscriber sees the new run's messages only, one chunk each
    after = retained(mosquitto_broker, "left")
    assert len(after["model"]) == 1 and len(after["global"]) == 1
    reassembler = Reassembler()
    model = decode(reassembler.feed("m", after["model"][0]), expect_kind="model")
    final = decode(reassembler.feed("g", after["global"][0]), expect_kind="global")
    assert model.sha256 == Manifest.load(export_dir("mlp") / "manifest.json").sha256
    assert final.round == 2 and final.meta == {"final": True}  # rounds + 1, docs/protocol.md


def test_retained_chunk_counts_reads_the_highest_retained_index():
    # Prepare: a broker holding chunks 0-4 of the model, 0-1 of the global weights
    bus, topics = MemoryBus(), Topics("job")
    publisher = MemoryTransport(bus, "earlier")
    publisher.connect()
    for i in range(5):
        publisher.publish(f"{topics.model}/{i}", b"x", retain=True)
    for i in range(2):
        publisher.publish(f"{topics.global_weights}/{i}", b"x", retain=True)
    publisher.publish(f"{topics.global_weights}/7", b"", retain=True)  # cleared: not retained
    scanner = MemoryTransport(bus, "scanner")
    scanner.connect()
    # Execute
    counts = retained_chunk_counts(scanner, [topics.model, topics.global_weights], quiet_s=0.1)
    # Assert
    assert counts == {topics.model: 5, topics.global_weights: 2}
