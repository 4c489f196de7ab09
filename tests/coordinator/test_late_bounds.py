"""Late updates folded into the next round (``--late-updates fold``) pass that round's bounded
influence like its own updates: an outsized change is rejected at the close, and a late update
claiming most of the round's weight is capped at half of it.

A real Mosquitto, a coordinator in this process and three scripted devices that really train
the mlp: h0 and h1 answer in time; "late" holds its round 1 update until round 1 closed at its
over-selection target, sends it (tampered), and leaves, so round 2 folds it with weight
1/sqrt(2).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import JobConfig
from coordinator.influence import capped_claims, change_outliers, late_key
from coordinator.run_dir import RunDir
from coordinator.server import SENDER, Coordinator
from edge_client.messaging import BinaryPublisher
from edge_client.protocol import DeviceStatus, Topics, decode, encode_weights
from edge_client.transport import BrokerConfig, MqttTransport, Transport, Will
from tests.coordinator.fleet_support import TrainingDevice, scaled
from tests.coordinator.test_broker_faults import Kit, kit  # noqa: F401 (fixture)


class Late(TrainingDevice):
    """Holds its round 1 update until released, then sends it (claiming ``claim`` samples if
    given, also in its status) and stops."""

    def __init__(self, url: str, job: str, kit: Kit, claim: int | None, **kw: object) -> None:  # noqa: F811
        transport = MqttTransport(BrokerConfig.from_url(url), f"{job}-late")
        data = kit.parts[2].subset(np.arange(400))
        super().__init__(transport, job, "late", kit.model(), data, send=self._send, **kw)  # type: ignore[arg-type]
        self.claim = claim
        self.gate.clear()

    def online(self) -> None:
        samples = self.claim or len(self.data)
        status = DeviceStatus(self.device, "online", time.time(), samples=samples)
        self.transport.publish(self.topics.status(self.device), status.to_json(), retain=True)

    def _send(self, t: Transport, topic: str, payload: bytes) -> None:
        env = decode(payload)
        if self.claim is not None:
            payload = encode_weights(
                env.weights(), kind="update", job=env.job, round=env.round, sender=env.sender,
                samples=self.claim, meta=env.meta,
            )  # fmt: skip
        BinaryPublisher(t).publish(topic, payload)
        self.stop_event.set()  # one update, late; it answers no later round


def run(url: str, kit: Kit, tmp: Path, job: str, late: Late):  # noqa: ANN201, F811
    """Two rounds; (the rounds' metrics, the honest devices, the rounds' checkpoints)."""
    config = JobConfig(
        job=job, rounds=2, min_devices=3, min_results=2, clients_per_round=2, over_select=1.5,
        late_updates="fold", max_staleness=2, round_timeout=60, wait_timeout=30, epochs=1,
        lr=0.05,
    )  # fmt: skip
    will = Will(Topics(job).status(SENDER), DeviceStatus(SENDER, "offline", 0).to_json())
    transport = MqttTransport(BrokerConfig.from_url(url), f"coordinator-{job}", will=will)
    transport.connect()
    run_dir = RunDir(tmp / "run")
    run_dir.create({}, resume=False)
    honest = [
        TrainingDevice(
            MqttTransport(BrokerConfig.from_url(url), f"{job}-h{i}"),
            job,
            f"h{i}",
            kit.model(),
            kit.parts[i].subset(np.arange(300 + 50 * i)),
        )
        for i in range(2)
    ]

    def on_round(metrics) -> None:  # noqa: ANN001
        if metrics.round == 1:
            late.gate.set()  # sent now, handled when round 2 opens
            time.sleep(0.5)

    for d in [*honest, late]:
        d.start()
    try:
        state = Coordinator(config, transport, kit.bundle, run_dir, on_round=on_round).run()
    finally:
        for d in [*honest, late]:
            d.stop()
        transport.close()
    checkpoints = []
    for r in (1, 2):
        with np.load(tmp / f"run/checkpoints/round-{r:04d}.npz") as ckpt:
            checkpoints.append({k[2:]: ckpt[k] for k in ckpt.files if k.startswith("w/")})
    assert 1 in late.sent and not late.errors and not any(d.errors for d in honest)
    assert state.history[0].participants == ("h0", "h1") and state.history[0].cancelled == ("late",)
    return state.history, honest, checkpoints


@pytest.mark.slow
def test_a_late_update_with_an_outsized_change_is_rejected_when_its_round_closes(
    mosquitto_broker,
    kit,  # noqa: F811
    tmp_path,
):
    # Prepare: "late" sends the global weights plus 50x its change
    late = Late(mosquitto_broker.url, "latex50", kit, None, tamper=scaled(50))
    # Execute
    history, honest, checkpoints = run(mosquitto_broker.url, kit, tmp_path, "latex50", late)
    # Assert: round 2 rejected it with the reason and aggregated h0 and h1 only
    second = history[1]
    assert second.late_folded == {} and second.updates_aggregated == 2
    (rejection,) = [r for r in second.rejections if r.device == "late"]
    assert rejection.round == 1 and not rejection.counted
    assert rejection.reason.startswith("late update for round 1: outsized change")
    assert second.participants == ("h0", "h1") and "late" not in second.rejected
    sent = [decode(d.sent[2]) for d in honest]
    total = sum(e.samples for e in sent)
    for name, w in checkpoints[1].items():
        expected = sum(e.samples * e.weights()[name].astype(np.float64) for e in sent) / total
        np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_late_update_claiming_most_of_the_rounds_weight_is_capped_at_half(
    mosquitto_broker,
    kit,  # noqa: F811
    tmp_path,
):
    # Prepare: "late" claims 10^9 samples, in its status too (so the sample check passes)
    late = Late(mosquitto_broker.url, "late1e9", kit, 10**9)
    # Execute
    history, honest, checkpoints = run(mosquitto_broker.url, kit, tmp_path, "late1e9", late)
    # Assert: folded, with the weight of h0 and h1 together (a share of 0.5)
    second = history[1]
    assert second.late_folded == {"late": 1} and second.updates_aggregated == 3
    sent = [decode(d.sent[2]) for d in honest]
    trained = decode(late.sent[1]).weights()
    after = checkpoints[0]  # round 2 started here
    share = sum(e.samples for e in sent)
    for name, w in checkpoints[1].items():
        # re-based as a step toward its trained weights (--stale-changes toward-model)
        folded = after[name].astype(np.float64) + (
            trained[name].astype(np.float64) - after[name]
        ) / math.sqrt(2)
        folded = folded.astype(np.float32).astype(np.float64)  # as re-based, in float32
        expected = sum(e.samples * e.weights()[name].astype(np.float64) for e in sent)
        expected = (expected + share * folded) / (2 * share)
        np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)


def test_a_device_cannot_outweigh_the_others_with_its_own_and_a_late_update():
    # a device's own update and its late one share one cap; and neither is judged
    # against the other's change
    claims = {"a": 100, "b": 100, "c": 600, late_key("c", 3): 600}
    weights = capped_claims(claims, 0.5)
    assert weights["a"] == weights["b"] == 100
    assert weights["c"] + weights[late_key("c", 3)] == 200
    changes = {"a": 1.0, "b": 1.1, "c": 30.0, late_key("c", 3): 30.0}
    assert set(change_outliers(changes, 10)) == {"c", late_key("c", 3)}
