"""The real edge client against the real coordinator, in memory: the two sides agree."""

from __future__ import annotations

import threading

import numpy as np
from test_client_support import ModelFiles, random_dataset

from coordinator.config import JobConfig
from coordinator.run_dir import RunDir
from coordinator.server import Coordinator, ModelBundle
from edge_client.client import EdgeClient
from edge_client.config import ClientConfig
from edge_client.runtime import load_runtime
from edge_client.transport import BrokerConfig, MemoryBus, MemoryTransport


def test_three_edge_clients_complete_a_coordinator_job(export_dir, tmp_path):
    # Prepare
    files = ModelFiles.load(export_dir("mlp"))
    bus = MemoryBus()
    runtime = load_runtime("ai-edge-litert")
    clients = []
    for i in range(3):
        cfg = ClientConfig(
            BrokerConfig(),
            "t",
            f"edge{i}",
            data_path="unused",
            state_dir=tmp_path / f"edge{i}",
            heartbeat_s=1.0,
            exit_on_stop=True,
        )
        data = random_dataset(files.manifest, n=100 + 50 * i, seed=i)
        clients.append(
            EdgeClient(cfg, MemoryTransport(bus, f"edge{i}"), data=data, runtime=runtime)
        )
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    config = JobConfig(
        job="t", rounds=2, min_devices=3, min_results=3, round_timeout=30, wait_timeout=30,
        epochs=1, lr=0.05,
    )  # fmt: skip
    run_dir = RunDir(tmp_path / "run")
    run_dir.create({}, resume=True)
    transport = MemoryTransport(bus, "coordinator")
    transport.connect()
    bundle = ModelBundle(files.tflite, files.manifest, files.initial)
    # Execute
    state = Coordinator(config, transport, bundle, run_dir).run()
    for t in threads:
        t.join(15)
    # Assert: both rounds aggregated all three devices, and the devices exited on "stopped"
    assert (
        state.finished
        and [h["participants"] for h in state.history] == [["edge0", "edge1", "edge2"]] * 2
    )
    devices = state.history[-1]["devices"]
    assert [devices[f"edge{i}"]["samples"] for i in range(3)] == [100, 150, 200]
    assert not any(t.is_alive() for t in threads)
    weights, _ = run_dir.load_weights(state)
    assert any(not np.array_equal(weights[k], v) for k, v in files.initial.items())
