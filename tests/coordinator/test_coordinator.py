"""The round loop over an in-memory bus with scripted devices (no broker, no interpreter
on the device side): selection, deadlines, retries, resume, operator control."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from coordinator.config import JobConfig
from coordinator.evaluation import Evaluator
from coordinator.run_dir import RunDir
from coordinator.server import Coordinator, JobError, ModelBundle
from edge_client.data import load_dataset
from edge_client.errors import ConfigError
from edge_client.manifest import Manifest
from edge_client.messaging import (
    BinaryPublisher,
    ControlReceived,
    GlobalReceived,
    Inbox,
    RoundReceived,
)
from edge_client.protocol import (
    DeviceStatus,
    JobControl,
    RoundAnnouncement,
    Topics,
    encode_weights,
)
from edge_client.trainable_model import TrainableModel
from edge_client.transport import MemoryBus, MemoryTransport


class ScriptedDevice(threading.Thread):
    """Answers every round it is selected for with global + ``delta`` (or stays silent)."""

    def __init__(
        self,
        bus: MemoryBus,
        job: str,
        device: str,
        *,
        delta: float = 1.0,
        samples: int = 100,
        silent: bool = False,
    ) -> None:
        super().__init__(daemon=True)
        self.transport = MemoryTransport(bus, device)
        self.topics = Topics(job)
        self.device, self.delta, self.samples, self.silent = device, delta, samples, silent
        self.stop_event = threading.Event()
        self.trained: list[int] = []

    def run(self) -> None:
        t = self.transport
        t.connect()
        for topic, qos in self.topics.device_subscriptions():
            t.subscribe(topic, qos)
        t.publish(
            self.topics.status(self.device),
            DeviceStatus(self.device, "online", time.time()).to_json(),
            retain=True,
        )
        inbox, publisher = Inbox(t, self.topics), BinaryPublisher(t)
        global_env, announcement = None, None
        while not self.stop_event.is_set():
            item = inbox.get(0.05)
            if item is None:
                continue
            match item:
                case GlobalReceived(env):
                    global_env = env
                case RoundReceived(ann):
                    announcement = ann
                case ControlReceived(ctl) if ctl.state == "stopped":
                    return
            if (
                announcement
                and global_env
                and announcement.state == "open"
                and not self.silent
                and announcement.is_selected(self.device)
                and announcement.round not in self.trained
                and global_env.weights_sha256() == announcement.global_sha256
            ):
                w = {k: v + self.delta for k, v in global_env.weights().items()}
                payload = encode_weights(
                    w,
                    kind="update",
                    job=self.topics.job,
                    round=announcement.round,
                    sender=self.device,
                    samples=self.samples,
                    meta={"base_sha256": announcement.global_sha256, "loss": 1.0},
                )
                publisher.publish(self.topics.update(self.device), payload)
                self.trained.append(announcement.round)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


@pytest.fixture
def bundle(export_dir) -> ModelBundle:
    d = export_dir("mlp")
    model = TrainableModel.from_dir(d)
    return ModelBundle(
        (d / "model.tflite").read_bytes(), Manifest.load(d / "manifest.json"), model.get_weights()
    )


def start_devices(bus, job, n, name="dev", **kw):
    devices = [ScriptedDevice(bus, job, f"{name}{i}", **kw) for i in range(n)]
    for d in devices:
        d.start()
    return devices


def make_coordinator(bus, bundle, tmp_path, evaluator=None, **cfg):
    config = JobConfig(
        **{
            "job": "t",
            "rounds": 3,
            "min_devices": 3,
            "round_timeout": 10,
            "wait_timeout": 10,
            "max_update_norm": 0,  # scripted devices add 1.0 to every weight: an "absurd" norm
            **cfg,
        }
    )
    run_dir = RunDir(tmp_path / "run")
    run_dir.create({}, resume=True)
    transport = MemoryTransport(bus, "coordinator")
    transport.connect()
    return Coordinator(config, transport, bundle, run_dir, evaluator)


def test_fedavg_rounds_move_the_weights_and_write_metrics(bundle, tmp_path, export_dir):
    # Prepare
    bus = MemoryBus()
    devices = start_devices(bus, "t", 3)
    test = load_dataset("fashion-mnist", "test").subset(np.arange(300))
    evaluator = Evaluator(TrainableModel.from_dir(export_dir("mlp")), test)
    coord = make_coordinator(bus, bundle, tmp_path, evaluator)
    # Execute
    state = coord.run()
    # Assert: each round adds 1 to every weight
    weights, _ = coord.run_dir.load_weights(state)
    for name, w0 in bundle.initial_weights.items():
        np.testing.assert_allclose(weights[name], w0 + 3.0, rtol=1e-5, atol=1e-5)
    lines = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2, 3]
    for m in lines:
        assert {
            "round",
            "accuracy",
            "loss",
            "participants",
            "bytes_up",
            "bytes_down",
            "duration_s",
        } <= set(m)
        assert m["participants"] == ["dev0", "dev1", "dev2"]
        assert 0 <= m["accuracy"] <= 1 and m["bytes_up"] > 0 and m["bytes_down"] > 0
    assert state.finished
    for d in devices:
        d.stop()
        assert d.trained == [1, 2, 3]


def test_a_silent_device_is_left_behind_at_the_deadline(bundle, tmp_path):
    bus = MemoryBus()
    devices = start_devices(bus, "t", 2) + start_devices(bus, "t", 1, name="mute", silent=True)
    coord = make_coordinator(bus, bundle, tmp_path, rounds=1, round_timeout=1.5, min_results=2)
    t0 = time.time()
    state = coord.run()
    assert time.time() - t0 >= 1.4
    assert state.history[0]["participants"] == ["dev0", "dev1"]
    for d in devices:
        d.stop()


def test_too_few_results_retries_then_stops_with_a_clear_error(bundle, tmp_path):
    bus = MemoryBus()
    devices = start_devices(bus, "t", 2, silent=True)
    coord = make_coordinator(
        bus, bundle, tmp_path, rounds=1, min_devices=2, round_timeout=0.3, max_retries=1
    )
    with pytest.raises(JobError, match="round 1 got fewer than 1 updates in 2 attempts"):
        coord.run()
    for d in devices:
        d.stop()


def test_waiting_for_devices_times_out_with_a_clear_error(bundle, tmp_path):
    coord = make_coordinator(MemoryBus(), bundle, tmp_path, wait_timeout=0.3)
    with pytest.raises(JobError, match="only 0 of 3 devices online"):
        coord.run()


def test_resume_continues_after_the_last_checkpoint_without_recounting(bundle, tmp_path):
    bus = MemoryBus()
    devices = start_devices(bus, "t", 3)
    crashing = make_coordinator(bus, bundle, tmp_path, rounds=4)

    def crash_after_round_2(metrics):
        if metrics["round"] == 2:
            raise KeyboardInterrupt("simulated crash")

    crashing.on_round = crash_after_round_2
    with pytest.raises(KeyboardInterrupt):
        crashing.run()
    # a restarted coordinator continues at round 3
    state = make_coordinator(bus, bundle, tmp_path, rounds=4).run(resume=True)
    rounds = [
        json.loads(x)["round"] for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
    ]
    assert rounds == [1, 2, 3, 4]
    weights, _ = RunDir(tmp_path / "run").load_weights(state)
    name = next(iter(weights))
    np.testing.assert_allclose(
        weights[name], bundle.initial_weights[name] + 4.0, rtol=1e-5, atol=1e-5
    )
    with pytest.raises(JobError, match="use --resume"):
        RunDir(tmp_path / "run")._write_state(
            state.__class__("t", 2, state.checkpoint, state.history[:2])
        )
        make_coordinator(bus, bundle, tmp_path, rounds=4).run(resume=False)
    for d in devices:
        d.stop()


def test_every_announcement_carries_the_run_id_that_resume_keeps(bundle, tmp_path):
    # Prepare
    bus = MemoryBus()
    devices = start_devices(bus, "t", 3)
    observer = MemoryTransport(bus, "observer")
    observer.connect()
    observer.subscribe(Topics("t").round)
    # Execute
    make_coordinator(bus, bundle, tmp_path, rounds=2).run()
    for d in devices:
        d.stop()
    # Assert: open and closed, both rounds, the id of the run directory (which a resumed
    # coordinator reads back); another run directory has another id
    announced = []
    while (m := observer.get(0)) is not None:
        announced.append(RoundAnnouncement.from_json(m.payload))
    run_id = (tmp_path / "run/run_id").read_text().strip()
    assert [(a.round, a.state) for a in announced] == [
        (r, s) for r in (1, 2) for s in ("open", "closed")
    ]
    assert {a.run for a in announced} == {run_id} and len(run_id) == 16
    assert RunDir(tmp_path / "run").run_id() == run_id != RunDir(tmp_path / "other").run_id()
    (tmp_path / "run/run_id").write_text("not/an id\n")
    with pytest.raises(ConfigError, match="run_id is corrupt"):
        RunDir(tmp_path / "run").run_id()


def test_operator_stop_ends_the_job(bundle, tmp_path):
    bus = MemoryBus()
    devices = start_devices(bus, "t", 3, silent=True)
    coord = make_coordinator(bus, bundle, tmp_path, rounds=3, round_timeout=30)
    operator = MemoryTransport(bus, "operator")
    operator.connect()
    threading.Timer(
        0.5,
        lambda: operator.publish(
            Topics("t").control,
            JobControl("t", "stopped", time.time() + 1, "by test").to_json(),
            retain=True,
        ),
    ).start()
    t0 = time.time()
    with pytest.raises(JobError):
        coord.run()
    assert time.time() - t0 < 10
    for d in devices:
        d.stop()


def test_fedprox_needs_a_model_with_a_proximal_term(bundle, tmp_path):
    with pytest.raises(JobError, match="needs a model exported with --prox-mu"):
        make_coordinator(MemoryBus(), bundle, tmp_path, strategy="fedprox")
