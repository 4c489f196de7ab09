"""Issue 16 item 2: one board cannot wreck the model under the default strategy (FedAvg).

Four honest boards and one forged board train the mlp for real on a real Mosquitto. The
forged board is an ordinary EdgeClient whose transport tampers with its own update before
publishing it: the attacks that got through before (10^9 samples with all-zero weights, a
sign-flipped change x30, the global plus 50x its change). The default job options must
reject them with the reason and keep the model as good as the honest boards make it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.config import JobConfig
from coordinator.evaluation import Evaluator
from coordinator.influence import InfluenceBounds, capped_weights
from coordinator.rounds import RoundCollector
from coordinator.run_dir import RunDir
from coordinator.server import SENDER, Coordinator
from edge_client.client import EdgeClient, mqtt_transport
from edge_client.config import ClientConfig
from edge_client.data import load_dataset
from edge_client.protocol import (
    DeviceStatus,
    Topics,
    UpdateDeduper,
    decode,
    encode_weights,
    parse_chunk,
    split,
    weights_sha256,
)
from edge_client.transport import BrokerConfig, MqttTransport, Will
from tests.coordinator.test_broker_faults import Kit, kit  # noqa: F401 (fixture)

Weights = dict[str, np.ndarray]
Attack = Callable[[Weights, Weights, int], tuple[Weights, int]]  # (update, global, n)


def zeros_claiming_a_billion(w: Weights, g: Weights, n: int) -> tuple[Weights, int]:
    return {k: np.zeros_like(v) for k, v in w.items()}, 10**9


def sign_flipped_x30(w: Weights, g: Weights, n: int) -> tuple[Weights, int]:
    return {k: (g[k] - 30 * (w[k] - g[k])).astype(np.float32) for k in w}, n


def global_plus_50x(w: Weights, g: Weights, n: int) -> tuple[Weights, int]:
    return {k: (g[k] + 50 * (w[k] - g[k])).astype(np.float32) for k in w}, n


class Tampering:
    """The forged board's transport: rewrites its own update (one chunk) before sending."""

    def __init__(self, inner: MqttTransport, attack: Attack, current_global: Callable[[], Weights]):
        self.inner, self.attack, self.current_global = inner, attack, current_global
        self.sent = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        if "/update/" in topic and payload:
            env = decode(parse_chunk(payload).data)
            if env.kind == "update":
                weights, samples = self.attack(env.weights(), self.current_global(), env.samples)
                forged = encode_weights(
                    weights,
                    kind="update",
                    job=env.job,
                    round=env.round,
                    sender=env.sender,
                    samples=samples,
                    meta=env.meta,
                )
                (payload,) = split(forged)
                self.sent += 1
        self.inner.publish(topic, payload, qos=qos, retain=retain)


def board(url: str, job: str, device: str, kit: Kit, data, tmp: Path, wrap=None) -> EdgeClient:  # noqa: F811, ANN001
    cfg = ClientConfig(
        BrokerConfig.from_url(url),
        job,
        device,
        data_path="unused",
        state_dir=tmp / device,
        heartbeat_s=1.0,
        exit_on_stop=True,
        evaluate=False,
    )
    transport = mqtt_transport(cfg)
    return EdgeClient(cfg, wrap(transport) if wrap else transport, data=data, runtime=kit.runtime)


@pytest.mark.slow
@pytest.mark.parametrize(
    "attack, reason",
    [
        (zeros_claiming_a_billion, "claims 1000000000 training samples, its status announced 500"),
        (sign_flipped_x30, "outsized change"),
        (global_plus_50x, "outsized change"),
    ],
    ids=["samples-1e9-zeros", "sign-flip-x30", "global-plus-50x"],
)
def test_one_forged_board_cannot_wreck_fedavg_by_default(
    mosquitto_broker,
    kit,  # noqa: F811
    tmp_path,
    attack,
    reason,
):
    # Prepare: 4 honest boards + 1 forged, 500 images each; the default job options
    url, job = mosquitto_broker.url, f"atk-{attack.__name__[:12]}".replace("_", "-")
    config = JobConfig(job=job, rounds=2, min_devices=5, min_results=4, epochs=1, lr=0.05)
    config = config.replace(round_timeout=60, wait_timeout=60)
    will = Will(Topics(job).status(SENDER), DeviceStatus(SENDER, "offline", 0).to_json())
    transport = MqttTransport(BrokerConfig.from_url(url), f"coordinator-{job}", will=will)
    transport.connect()
    run_dir = RunDir(tmp_path / "run")
    run_dir.create({}, resume=True)
    test = load_dataset("fashion-mnist", "test").subset(np.arange(1000))
    coord = Coordinator(config, transport, kit.bundle, run_dir, Evaluator(kit.model(), test))
    current = lambda: decode(coord._retained[coord.topics.global_weights]).weights()  # noqa: E731
    tampering: list[Tampering] = []

    def forge(t: MqttTransport) -> Tampering:
        tampering.append(Tampering(t, attack, current))
        return tampering[0]

    parts = [p.subset(np.arange(500)) for p in kit.parts] + [
        kit.parts[0].subset(np.arange(500, 1000))
    ]
    clients = [board(url, job, f"h{i}", kit, parts[i], tmp_path) for i in range(4)]
    clients.append(board(url, job, "forged", kit, parts[4], tmp_path, wrap=forge))
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    # Execute
    try:
        state = coord.run()
    finally:
        for t in threads:
            t.join(15)
        transport.close()
    # Assert: the forged update was sent, rejected with its reason, and the model learned
    assert tampering and tampering[0].sent == 2
    for m in state.history:
        assert m["participants"] == ["h0", "h1", "h2", "h3"]
        assert reason in m["rejected"]["forged"], m["rejected"]
        assert [r.device for r in m.rejections if r.counted] == ["forged"]
    assert state.history[-1]["accuracy"] > 0.5, state.history[-1]["accuracy"]


def test_the_weight_share_cap_lowers_only_what_exceeds_it():
    assert capped_weights([100] * 5, 0.5) == [100] * 5  # an honest 5-board IID round
    assert capped_weights([100, 150, 200], 0.5) == [100, 150, 200]
    capped = capped_weights([100, 100, 100, 100, 10**9], 0.5)
    assert capped == [100, 100, 100, 100, 400]  # the liar weighs as much as all the others
    assert capped_weights([100, 10**9], 0.5) == [100, 10**9]  # 2 updates: cannot hold, off


SHAPES = {"k": (4,)}
GLOBAL = {"k": np.ones(4, np.float32)}


def _offer(c: RoundCollector, device: str, change: float, samples: int = 10) -> bool:
    payload = encode_weights(
        {"k": GLOBAL["k"] + np.float32(change)},
        kind="update",
        job="j",
        round=1,
        sender=device,
        samples=samples,
        meta={"base_sha256": weights_sha256(GLOBAL)},
    )
    return c.offer(decode(payload), device, len(payload))


def test_updates_are_held_until_the_close_and_the_outliers_rejected_there():
    # Prepare: 20 devices, at most 4 updates held; one sends 30x the others' change
    from coordinator.aggregation import FedAvg

    strategy = FedAvg()
    strategy.begin(GLOBAL)
    devices = [f"d{i:02d}" for i in range(20)]
    c = RoundCollector(
        "j", 1, frozenset(devices), weights_sha256(GLOBAL), SHAPES, strategy, UpdateDeduper(),
        global_weights=GLOBAL, bounds=InfluenceBounds(max_held=4),
    )  # fmt: skip
    # Execute
    for d in devices[:-1]:
        assert _offer(c, d, 0.01)
    assert _offer(c, devices[-1], 0.3)  # accepted now, decided at the close
    held_before_close = len(c._held)
    c.close()
    # Assert: the outlier was held (never folded) and is rejected with the reason
    assert held_before_close == 4 and c.aggregated == 19 and c.bytes_rejected > 0
    assert "outsized change" in c.rejected["d19"] and "30.0x" in c.rejected["d19"]
    np.testing.assert_allclose(strategy.finish()["k"], GLOBAL["k"] + 0.01, rtol=1e-6)


# -- issue 16 item 6: queued statuses after a restart; whose update was rejected ------------


def _coordinator(url: str, kit: Kit, tmp: Path, **cfg: Any) -> Coordinator:  # noqa: F811
    config = JobConfig(**{"epochs": 1, "lr": 0.05, "round_timeout": 30, **cfg})
    will = Will(Topics(config.job).status(SENDER), DeviceStatus(SENDER, "offline", 0).to_json())
    transport = MqttTransport(
        BrokerConfig.from_url(url), f"coordinator-{config.job}", will=will, clean_session=False
    )
    transport.connect()
    run_dir = RunDir(tmp / "run")
    run_dir.create({}, resume=True)
    return Coordinator(config, transport, kit.bundle, run_dir)


@pytest.mark.slow
def test_old_queued_statuses_after_a_restart_never_open_a_round_with_no_device(
    mosquitto_broker,
    kit,  # noqa: F811
    tmp_path,
):
    # Prepare: the coordinator's persistent session holds, from while it was down, two
    # boards' "online" and then "offline" statuses; a real board comes up 3 s after it
    url, job = mosquitto_broker.url, "queued"
    first = _coordinator(url, kit, tmp_path, job=job)
    for topic, qos in first.topics.coordinator_subscriptions():
        first.transport.subscribe(topic, qos)
    first.transport.close()
    other = MqttTransport(BrokerConfig.from_url(url), "old-boards")
    other.connect()
    for state in ("online", "offline"):
        for device in ("gone0", "gone1"):
            status = DeviceStatus(device, state, 1.0, samples=500)
            other.publish(Topics(job).status(device), status.to_json(), qos=1, retain=True)
    assert other.wait_published(10)  # all four queued before the coordinator comes back
    other.close()
    coord = _coordinator(url, kit, tmp_path, job=job, rounds=1, max_retries=0, wait_timeout=60)
    late = board(url, job, "late", kit, kit.parts[1].subset(np.arange(300)), tmp_path)
    thread = threading.Timer(3.0, late.run)
    thread.start()
    # Execute
    try:
        state = coord.run()
    finally:
        thread.join(20)
        coord.transport.close()
    # Assert: round 1 waited for a device instead of opening with none and ending the job
    assert state.finished and state.history[0]["participants"] == ["late"]
    assert state.history[0]["selected"] == ["late"]


def test_replays_and_second_updates_under_a_name_do_not_blame_the_device():
    # Prepare: a's update is accepted, then someone replays round 0's and sends another
    from coordinator.aggregation import FedAvg

    strategy = FedAvg()
    strategy.begin(GLOBAL)
    c = RoundCollector(
        "j", 1, frozenset({"a", "b"}), weights_sha256(GLOBAL), SHAPES, strategy, UpdateDeduper(),
        global_weights=GLOBAL, bounds=InfluenceBounds(),
    )  # fmt: skip
    assert _offer(c, "a", 0.01)
    stale = encode_weights(
        GLOBAL, kind="update", job="j", round=0, sender="a", samples=10,
        meta={"base_sha256": weights_sha256(GLOBAL)},
    )  # fmt: skip
    # Execute
    assert not c.offer(decode(stale), "a", len(stale))
    assert not _offer(c, "a", 0.02)  # a second, different update under a's name
    c.close()
    # Assert: both recorded with topic and sender, neither counted as a's reply; a contested
    assert [(r.device, r.round, r.counted) for r in c.rejections] == [
        ("a", 0, False),
        ("a", 1, False),
    ]
    assert "replay" in c.rejections[0].reason and "was not its own" in c.rejections[1].reason
    assert c.contested == {"a"} and "a" not in c.invalid and c.bytes_rejected > 0


def test_turned_off_bounds_are_named_in_the_jobs_log_line():
    on = InfluenceBounds().describe()
    off = InfluenceBounds(max_weight_share=0, check_samples=False).describe()
    assert "OFF" not in on and "weight share <= 0.5" in on and "10x the round's median" in on
    assert "OFF by option" in off and "--max-weight-share 0" in off
    assert "sample counts checked against statuses" in off.split("OFF by option")[1]
