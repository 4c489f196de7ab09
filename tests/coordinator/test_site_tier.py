"""Site aggregators behind Mosquitto bridges: two site brokers bridged to a central one, real
edge clients (threads, TrainableModel mlp) per site, the central coordinator unchanged. The
global weights of every round equal plain FedAvg over all devices' updates.

How equal, from float32 arithmetic (u = 2**-24, float32's unit roundoff): a site sums
n_i * w_i in float64 (each product of a float32 and an integer below 2**29 is exact; k
additions and the division add at most (k + 1) * 2**-53 relative to sum_i n_i |w_i| / N_s)
and rounds the average once to float32: m_s' = m_s (1 + d_s), |d_s| <= u. The central
coordinator does the same over the sites and rounds once: g' = g (1 + d), |d| <= u, where
g = sum_s N_s m_s' / N. So, element by element, with M = max_i |w_i| over the devices
(every average lies within [-M, M]):

    |g' - FedAvg| <= u * sum_s (N_s / N) |m_s| + u * |g| + float64 terms <= 2 u M (1 + u) + ...

The test allows 2**-23 * M + 2**-40 * M (the float64 terms are below 2**-48 * M for a few
devices) + 2**-149 (float32 rounding of a subnormal result is absolute, not relative).
Set EDGEFL_SITE_TIER_RECORD=PATH to write the measured figures as JSON
(bench/results/site_tier.json is such a record).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import JobConfig
from coordinator.run_dir import RunDir
from coordinator.server import Coordinator, ModelBundle
from coordinator.site import SiteAggregator, SiteConfig, bridge_config
from edge_client.client import EdgeClient
from edge_client.config import ClientConfig
from edge_client.data import load_dataset
from edge_client.manifest import Manifest
from edge_client.messaging import BinaryPublisher
from edge_client.protocol import (
    DeviceStatus,
    Reassembler,
    RoundAnnouncement,
    Topics,
    decode,
    encode_model,
    encode_weights,
)
from edge_client.trainable_model import TrainableModel
from edge_client.transport import BrokerConfig, MemoryBus, MemoryTransport, MqttTransport, Will
from tests.fixtures.brokers import mqtt_client, start_mosquitto

JOB, SITES, PER_SITE, SAMPLES = "tier", ("site-a", "site-b"), 2, 192
U = 2.0**-24  # float32 unit roundoff


def fedavg_bound(m: np.ndarray) -> np.ndarray:
    """Largest |two-tier FedAvg - plain FedAvg| float32 allows, element by element, given
    M = max_i |w_i| over the devices' updates."""
    return 2 * U * m + 2.0**-40 * m + 2.0**-149


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def wait_for_bridge(watcher, broker, site: str) -> None:  # noqa: ANN001
    """A status published on the site broker's upstream prefix reaches the central broker."""
    probe = DeviceStatus.last_will(site, time.time()).to_json()
    with mqtt_client(broker, f"probe-{site}") as client:

        def crossed() -> bool:
            client.publish(f"central/fl/v1/{JOB}/status/{site}", probe, qos=1)
            return bool(watcher.collector.matching(f"fl/v1/{JOB}/status/{site}"))

        wait_until(crossed, 10, f"the bridge of {site}")


def site_aggregator(broker, site: str) -> SiteAggregator:
    cfg = SiteConfig(site, JOB, upstream_prefix="central/fl/v1", margin_s=3)
    url = BrokerConfig("127.0.0.1", broker.port)
    will = Will(
        Topics(JOB, cfg.upstream_prefix).status(site), DeviceStatus.last_will(site, 0).to_json()
    )
    return SiteAggregator(
        cfg,
        MqttTransport(url, f"{site}-up", will=will),
        MqttTransport(url, f"{site}-down"),
    )


def test_two_bridged_sites_give_plain_fedavg_over_all_devices(export_dir, tmp_path):
    # Prepare: brokers, the sites' updates seen on their own brokers, devices, sites
    central = start_mosquitto(tmp_path / "central")
    brokers = {
        s: start_mosquitto(tmp_path / s, bridge_config(s, JOB, f"127.0.0.1:{central.port}"))
        for s in SITES
    }
    model_dir = export_dir("mlp")
    train = load_dataset("fashion-mnist", "train")
    updates: dict[int, dict[str, tuple]] = defaultdict(dict)  # round -> device -> (w, n)
    threads, stoppers, spies = [], [], ExitStack()
    try:
        watcher = spies.enter_context(mqtt_client(central, "watcher"))
        watcher.subscribe_wait(f"fl/v1/{JOB}/status/+", 1)
        for s, broker in brokers.items():
            wait_for_bridge(watcher, broker, s)
        for s, broker in brokers.items():
            spy = spies.enter_context(mqtt_client(broker, f"spy-{s}"))
            reassembler = Reassembler()

            def record(client, userdata, msg, reassembler=reassembler) -> None:  # noqa: ANN001
                base = msg.topic.rsplit("/", 1)[0]
                whole = reassembler.feed(base, msg.payload)
                if whole is not None:
                    env = decode(whole)
                    updates[env.round][env.sender] = (env.weights(), env.samples)

            spy.on_message = record
            spy.subscribe_wait(f"fl/v1/{JOB}/update/+/#", 1)
        for k, (s, broker) in enumerate(brokers.items()):
            for d in range(PER_SITE):
                index = k * PER_SITE + d
                config = ClientConfig(
                    broker=BrokerConfig("127.0.0.1", broker.port),
                    job=JOB,
                    device_id=f"{s}-dev{d}",
                    dataset="fashion-mnist",
                    state_dir=tmp_path / f"state-{s}-{d}",
                    evaluate=False,
                    heartbeat_s=0,
                )
                part = train.subset(np.arange(index * 256, index * 256 + SAMPLES + 32 * d))
                client = EdgeClient(
                    config, MqttTransport(config.broker, config.device_id), data=part
                )
                threads.append(threading.Thread(target=client.run, daemon=True))
                stoppers.append(client.stop)
        aggregators = [site_aggregator(b, s) for s, b in brokers.items()]
        for a in aggregators:
            threads.append(threading.Thread(target=a.run, daemon=True))
            stoppers.append(a.stop)
        for t in threads:
            t.start()
        wait_until(
            lambda: all(len(a.devices) == PER_SITE for a in aggregators), 20, "devices online"
        )
        run_dir = RunDir(tmp_path / "run")
        run_dir.create({}, resume=False)
        initial = TrainableModel.from_dir(model_dir).get_weights()
        bundle = ModelBundle(
            (model_dir / "model.tflite").read_bytes(),
            Manifest.load(model_dir / "manifest.json"),
            initial,
        )
        cfg = JobConfig(
            job=JOB, rounds=2, epochs=1, lr=0.05, min_devices=2, min_results=2,
            round_timeout=40, wait_timeout=20, max_retries=0,
        )  # fmt: skip
        transport = MqttTransport(BrokerConfig("127.0.0.1", central.port), "central")
        transport.connect()
        stoppers.append(transport.close)
        # Execute
        state = Coordinator(cfg, transport, bundle, run_dir).run()
        # Assert: each round's global = FedAvg over the four devices' own updates
        previous, worst, worst_ratio, per_round = initial, 0.0, 0.0, []
        for h in state.history:
            r = h["round"]
            assert h["participants"] == list(SITES)
            sent = updates[r]
            assert sorted(sent) == [f"{s}-dev{d}" for s in SITES for d in range(PER_SITE)]
            total = sum(n for _, n in sent.values())
            assert h["samples"] == total
            with np.load(tmp_path / f"run/checkpoints/round-{r:04d}.npz") as ckpt:
                got = {k[2:]: ckpt[k] for k in ckpt.files if k.startswith("w/")}
            round_worst, elements = 0.0, 0
            for name, w0 in previous.items():
                direct = sum(w[name].astype(np.float64) * n for w, n in sent.values()) / total
                diff = np.abs(got[name].astype(np.float64) - direct)
                m = np.max(np.abs(np.stack([w[name] for w, _ in sent.values()])), axis=0)
                m = m.astype(np.float64)
                bound = fedavg_bound(m)
                assert np.all(diff <= bound), (name, float((diff / bound).max()))
                round_worst = max(round_worst, float(diff.max()))
                in_u = np.divide(diff, U * m, out=np.zeros_like(diff), where=m > 0)
                worst_ratio = max(worst_ratio, float(in_u.max()))
                elements += diff.size
                assert not np.allclose(got[name], w0)  # the devices really trained
            worst = max(worst, round_worst)
            per_round.append({"round": r, "max_abs_difference": round_worst, "elements": elements})
            previous = got
        print(
            f"largest difference from plain FedAvg over all devices: {worst:.2e} "
            f"({worst_ratio:.2f} u M at worst; float32 allows 2 u M)"
        )
        if os.environ.get("EDGEFL_SITE_TIER_RECORD"):
            _record(Path(os.environ["EDGEFL_SITE_TIER_RECORD"]), per_round, worst, worst_ratio)
        for a in aggregators:
            assert [x.round for x in a.sent] == [1, 2]
            assert all(len(x.devices) == PER_SITE and not x.failed for x in a.sent)
    finally:
        for stop in reversed(stoppers):
            stop()
        for t in threads:
            t.join(10)
        spies.close()
        for broker in [*brokers.values(), central]:
            broker.stop()


def _record(path: Path, per_round: list, worst: float, worst_ratio: float) -> None:
    record = {
        "command": "EDGEFL_SITE_TIER_RECORD=bench/results/site_tier.json .venv/bin/python -m "
        "pytest -q -p no:cacheprovider tests/coordinator/test_site_tier.py -k two_bridged",
        "what": "two site brokers bridged to a central Mosquitto, 2 real edge clients per site "
        f"training mlp on {SAMPLES} and {SAMPLES + 32} Fashion-MNIST images, 2 rounds: central "
        "global weights vs plain FedAvg (float64) over the four devices' own updates",
        "unit_roundoff_u": U,
        "max_abs_difference": worst,
        "max_difference_in_u_times_M": worst_ratio,
        "allowed_in_u_times_M": 2.0,
        "M": "element-wise max |w_i| over the devices' updates of that round",
        "rounds": per_round,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")


def test_a_site_without_devices_reports_a_failure_upstream(tmp_path):
    # Prepare: one in-memory bus, the central topics under "up/fl/v1", a site with no device
    bus = MemoryBus()
    site = SiteAggregator(
        SiteConfig("site-z", JOB, upstream_prefix="up/fl/v1"),
        MemoryTransport(bus, "up"),
        MemoryTransport(bus, "down"),
    )
    central = Topics(JOB, "up/fl/v1")
    watcher = MemoryTransport(bus, "watcher")
    watcher.connect()
    watcher.subscribe(f"{central.update('site-z')}/#")
    site.start()
    weights = {"dense/kernel": np.ones((2, 2), np.float32)}
    manifest = {
        "format_version": 1, "architecture": "mlp", "input_shape": [2], "classes": 2,
        "label_names": ["a", "b"], "batch_size": 1, "optimizer": "sgd", "hyperparameters": {},
        "weights": [{"name": "dense/kernel", "shape": [2, 2]}], "sha256": "0" * 64,
        "tflite_bytes": 4, "ops": [],
    }  # fmt: skip
    publisher = BinaryPublisher(MemoryTransport(bus, "central"))
    model = encode_model(b"TFL3", manifest, job=JOB, sender="coordinator")
    publisher.publish(central.model, model, retain=True)
    payload = encode_weights(weights, kind="global", job=JOB, round=1, sender="coordinator")
    publisher.publish(central.global_weights, payload, retain=True)
    announcement = RoundAnnouncement(
        job=JOB, round=1, deadline=time.time() + 30, selected=("site-z",), hyperparams={},
        model_sha256=decode(model).sha256, global_sha256=decode(payload).weights_sha256(),
    )  # fmt: skip
    bus.publish(central.round, announcement.to_json(), retain=True)
    # Execute
    for _ in range(20):
        site.step(0)
    # Assert
    message = watcher.get(1)
    assert message is not None
    env = decode(message.payload[104:])
    assert env.kind == "failure" and env.sender == "site-z" and "no device online" in env.reason
    assert [r.failed for r in site.sent] == ["site site-z has no device online"]


def test_a_site_refuses_a_buffered_central_job_with_a_clear_error():
    # Prepare: a buffered (FedBuff) announcement on the central topics
    bus = MemoryBus()
    site = SiteAggregator(
        SiteConfig("site-z", JOB, upstream_prefix="up/fl/v1"),
        MemoryTransport(bus, "up"),
        MemoryTransport(bus, "down"),
    )
    site.start()
    announcement = RoundAnnouncement(
        job=JOB, round=3, deadline=time.time() + 30, selected=("pi-01",), hyperparams={},
        model_sha256="0" * 64, global_sha256="1" * 64, mode="buffered", grants={"pi-01": 1},
        max_staleness=10,
    )  # fmt: skip
    bus.publish(Topics(JOB, "up/fl/v1").round, announcement.to_json(), retain=True)
    # Execute: run() returns by itself
    worker = threading.Thread(target=site.run, daemon=True)
    worker.start()
    worker.join(10)
    # Assert
    assert not worker.is_alive() and site.stopped
    assert site.refused is not None and "site aggregators work with synchronous" in site.refused
    assert "--mode sync" in site.refused and site.sent == []


@pytest.mark.parametrize("site", ["site-a"])
def test_bridge_config_maps_the_central_topics_down_and_the_site_topics_up(site):
    conf = bridge_config(site, "demo", "central:1883")
    assert "address central:1883" in conf
    assert "topic round in 1 central/fl/v1/demo/ fl/v1/demo/" in conf
    assert f"topic update/{site}/# out 1 central/fl/v1/demo/ fl/v1/demo/" in conf
    assert "update/+" not in conf  # a site forwards only its own update topic
