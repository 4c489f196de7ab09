"""Run a job on a simulated fleet: links, boards, their schedule, and the utilisation check.

``simulate_fleet`` exports (or loads) the model, calibrates its train step on this machine,
refuses an oversubscribed fleet, then starts one throttled link and one ``fedge run``
process per board and the coordinator, and plays the schedule: offline sessions (link cut
or process killed, then restored or rebooted) and dropouts in the middle of local training
(decided when a board reports ``training``). Everything lands in ``RUN_DIR/fleet/``.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import logging
import math
import os
import resource
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coordinator.config import JobConfig
from coordinator.fleet.boards import BoardProcess, stop_all
from coordinator.fleet.budget import (
    Calibration,
    Demand,
    calibrate,
    estimate_demand,
    machine_cores,
    measured_utilisation,
    partition_sizes,
)
from coordinator.fleet.deadline import WallClockStop
from coordinator.fleet.link import LinkHub
from coordinator.fleet.schedule import Schedule
from coordinator.fleet.spec import FleetSpec
from coordinator.job import broker_for, run_job
from coordinator.model_source import prepare_model
from coordinator.run_dir import RunDir, RunState
from coordinator.server import JobError
from coordinator.simulation import ROOT, STOP_GRACE_S, FleetConfig, device_command, prepared
from edge_client.errors import ConfigError
from edge_client.pacing import ENV as SLOWDOWN_ENV
from edge_client.protocol import DeviceStatus, RoundMetrics, Topics
from edge_client.transport import BrokerConfig, MqttTransport

log = logging.getLogger(__name__)

ONLINE_HORIZON_S = 3600.0  # the CPU estimate counts each board's scheduled online share in it


class FleetRunner:
    """The boards of a fleet around a running job (a context manager)."""

    def __init__(
        self,
        spec: FleetSpec,
        schedule: Schedule,
        fleet: FleetConfig,
        job: JobConfig,
        broker: BrokerConfig,
        out_dir: Path,
        training_s: dict[str, float],  # expected local training time of each board (slowed)
    ) -> None:
        self.spec, self.schedule, self.fleet, self.job = spec, schedule, fleet, job
        self.broker, self.out_dir, self.training_s = broker, out_dir, training_s
        self.hub = LinkHub(broker.host, broker.port)
        self.boards: dict[str, BoardProcess] = {}
        self.away: dict[str, dict[str, set[str]]] = {
            b.device_id: {"power": set(), "network": set()} for b in spec.boards
        }
        self.trainings: dict[str, int] = dict.fromkeys(self.away, 0)
        self.events: list[dict[str, Any]] = []
        self._queue: list[tuple[float, int, str, str, Any]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._last: dict[str, tuple[str, int | None]] = {}
        self.t0 = 0.0
        self.started_at = 0.0  # unix time the boards were started
        self.first_training = threading.Event()  # a board started its first local training
        self.first_training_at: float | None = None  # unix time of that
        self.wall_s = 0.0

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> FleetRunner:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        dev_dir = self.job.run_path / "devices"
        dev_dir.mkdir(parents=True, exist_ok=True)
        self.hub.start((b.device_id, b.link) for b in self.spec.boards)
        base_env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
                os.pathsep
            ),
        }
        for i, b in enumerate(self.spec.boards):
            # the board's own port on the hub; mqtts:// stays mqtts:// (TLS passes through)
            link = dataclasses.replace(
                self.broker, host="127.0.0.1", port=self.hub.port(b.device_id)
            )
            cmd = device_command(
                self.fleet, self.job, link, i, dev_dir / b.device_id, device_id=b.device_id
            )
            env = {**base_env, SLOWDOWN_ENV: f"{b.slowdown:g}"}
            self.boards[b.device_id] = BoardProcess(
                b.device_id, cmd, env, dev_dir / f"{b.device_id}.log"
            )
        self.t0, self.started_at = time.monotonic(), time.time()
        for device, windows in self.schedule.windows.items():
            for n, w in enumerate(windows):
                self._push(w.start_s, "away", device, (w.mode, f"session-{n}"))
                self._push(w.end_s, "back", device, (w.mode, f"session-{n}"))
        self._apply_due()  # sessions that start at 0: those boards begin away
        for device, board in self.boards.items():
            if not self.away[device]["power"]:
                board.start()
        self._threads = [
            threading.Thread(target=self._play, daemon=True, name="fleet-schedule"),
            threading.Thread(target=self._watch, daemon=True, name="fleet-watch"),
        ]
        for t in self._threads:
            t.start()
        log.info("started %d simulated boards (logs in %s)", len(self.boards), dev_dir)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        for t in self._threads:
            t.join(5)
        for device in self.boards:  # boards off the network hear the job's "stopped" now
            self.hub.restore(device)
        stop_all(list(self.boards.values()), STOP_GRACE_S)
        self.wall_s = time.monotonic() - self.t0
        self.hub.stop()
        self._write_events()

    # -- the schedule ------------------------------------------------------------------
    def _push(self, t: float, action: str, device: str, arg: Any) -> None:
        with self._cond:
            heapq.heappush(self._queue, (t, next(self._seq), action, device, arg))
            self._cond.notify_all()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _play(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                wait = self._queue[0][0] - self.now() if self._queue else 1.0
                if wait > 0:
                    self._cond.wait(min(wait, 1.0))
                    continue
            self._apply_due()

    def _apply_due(self) -> None:
        while True:
            with self._cond:
                if not self._queue or self._queue[0][0] > self.now():
                    return
                _, _, action, device, arg = heapq.heappop(self._queue)
            try:
                self._apply(action, device, arg)
            except Exception:  # a failed action must not end the simulation
                log.exception("fleet: %s %s failed", action, device)

    def _apply(self, action: str, device: str, arg: Any) -> None:
        if action == "dropout":
            k, decision = arg
            state = self._last.get(device, ("unknown", None))[0]
            if any(self.away[device].values()):
                return  # already away: nothing to interrupt
            if state != "training" or self.trainings[device] != k + 1:
                # that training ended sooner than estimated (or failed): nothing to interrupt
                self._event("dropout-missed", device, training=k, state=state)
                return
            reason = f"dropout-{k}"
            self._event("dropout", device, mode=decision.mode, training=k, state=state)
            self._set(device, decision.mode, reason, away=True)
            self._push(self.now() + decision.downtime_s, "back", device, (decision.mode, reason))
        else:
            mode, reason = arg
            self._set(device, mode, reason, away=action == "away")

    def _set(self, device: str, mode: str, reason: str, *, away: bool) -> None:
        reasons = self.away[device][mode]
        was = bool(reasons)
        (reasons.add if away else reasons.discard)(reason)
        if was == bool(reasons):
            return
        self._event("offline" if reasons else "online", device, mode=mode, reason=reason)
        if mode == "network":
            (self.hub.cut if reasons else self.hub.restore)(device)
        else:  # before __enter__ starts the boards, killing one is a no-op
            board = self.boards[device]
            board.kill() if reasons else board.start()

    # -- dropouts: decided when a board starts local training --------------------------
    def _watch(self) -> None:
        topics = Topics(self.job.job, self.job.prefix)
        status_filter = topics.status("x").rsplit("/", 1)[0] + "/+"
        transport = MqttTransport(self.broker, f"fleet-watch-{self.job.job}")
        transport.subscribe(status_filter, 1)
        try:
            transport.connect()
        except Exception as exc:  # noqa: BLE001 - no dropouts, but the job goes on
            log.error("fleet: cannot watch device status (%s): no dropouts", exc)
            return
        try:
            while not self._stop.is_set():
                msg = transport.get(0.5)
                if msg is None:
                    continue
                try:
                    status = DeviceStatus.from_json(msg.payload)
                except Exception:  # noqa: BLE001 - not ours to judge
                    continue
                self._on_status(status)
        finally:
            transport.close()

    def _on_status(self, status: DeviceStatus) -> None:
        device = status.device
        if device not in self.trainings:
            return
        last = self._last.get(device)
        self._last[device] = (status.state, status.round)
        if status.state != "training" or last == ("training", status.round):
            return
        k = self.trainings[device]
        self.trainings[device] += 1
        self._event("training", device, round=status.round, training=k)
        if not self.first_training.is_set():
            self.first_training_at = time.time()
            self.first_training.set()
        decision = self.schedule.dropout(device, k)
        if decision is not None:
            at = self.now() + decision.at_fraction * self.training_s[device]
            self._push(at, "dropout", device, (k, decision))

    # -- records -----------------------------------------------------------------------
    def _event(self, kind: str, device: str, **extra: Any) -> None:
        event = {"t": round(self.now(), 3), "event": kind, "device": device, **extra}
        self.events.append(event)
        if kind != "training":
            log.info("fleet: %s", " ".join(f"{k}={v}" for k, v in event.items()))

    def _write_events(self) -> None:
        with open(self.out_dir / "events.jsonl", "w") as f:
            for e in self.events:
                f.write(json.dumps(e) + "\n")

    @property
    def device_cpu_s(self) -> float:
        return sum(b.cpu_s for b in self.boards.values())


def simulate_fleet(
    job: JobConfig,
    fleet: FleetConfig,
    spec: FleetSpec,
    *,
    allow_oversubscribed: bool = False,
    mode: str = "continuous",
    resume: bool = False,
    on_round: Callable[[RoundMetrics], None] | None = None,
    on_estimate: Callable[[Calibration, Demand], None] | None = None,
    stop_after_s: float | None = None,
) -> tuple[RunState, dict[str, Any]]:
    """Run ``job`` on the simulated ``spec`` fleet; returns the final state and the summary
    written to ``RUN_DIR/fleet/summary.json``. ``mode`` is the CPU estimate's model of how
    boards wait (budget.estimate_demand): "continuous" (the default, whatever the job's
    rounds: boards that train back to back, the most they can ask for; in a synchronous
    round they all train at the same time) or "sync" (averaged over rounds). ``mode="buffered"``
    runs the job in buffered rounds (FedBuff, ``JobConfig.mode``) with the continuous estimate.
    ``stop_after_s``: stop the job that many seconds after the first board started its
    first local training, as an operator would (coordinator/fleet/deadline.py); the run
    keeps its completed rounds."""
    if mode == "buffered" or job.buffered:  # boards that never wait: continuous demand
        if mode == "sync":
            raise ConfigError(
                "a buffered job's boards never wait for a round: use mode 'continuous'"
            )
        job, mode = job.replace(mode="buffered"), "continuous"
    fleet = dataclasses.replace(fleet, devices=len(spec.boards))
    schedule = Schedule(spec)
    ids = [b.device_id for b in spec.boards]
    # Round 1 waits for 80 % of the boards online at the start (some may be away by then).
    first = max(1, math.ceil(0.8 * len(schedule.online_at_start())))
    job, fleet = prepared(job, fleet, min_devices=first)
    run_dir = RunDir(job.run_path)
    run_dir.create(dataclasses.asdict(job), resume=resume)
    model = prepare_model(job, run_dir)
    cal = calibrate(model.tflite, model.manifest, runtime=fleet.runtime)
    samples = partition_sizes(fleet.dataset, fleet.partition, fleet.partition_seed, ids)
    online = {d: schedule.online_share(d, ONLINE_HORIZON_S) for d in ids}
    demand = estimate_demand(spec, cal, samples, epochs=job.epochs, mode=mode, online=online)
    if on_estimate is not None:
        on_estimate(cal, demand)
    log.info("%s; %s", spec.describe(), demand.describe())
    if demand.oversubscribed:
        if not allow_oversubscribed:
            raise ConfigError(
                f"the fleet is oversubscribed: {demand.describe()}. Boards would queue for "
                "this machine's CPU and the wall times would measure it, not the fleet: use "
                "fewer boards, fewer local epochs or samples, slower boards or links, or "
                "--allow-oversubscribed to run anyway"
            )
        for _ in range(3):
            log.warning("OVERSUBSCRIBED FLEET: %s; wall times are not faithful", demand.describe())
    load_before = os.getloadavg()[0]
    if load_before > 0.5 * demand.cores:
        log.warning(
            "this machine is busy with other work (load average %.1f on %d cores): boards "
            "wait for cores, and wall times will be slower than the fleet's",
            load_before,
            demand.cores,
        )
    out = job.run_path / "fleet"
    out.mkdir(parents=True, exist_ok=True)
    if spec.source and Path(spec.source).exists():
        shutil.copy(spec.source, out / "fleet.toml")
    (out / "schedule.json").write_text(json.dumps(schedule.to_json(), indent=1) + "\n")
    training_s = {b.device_id: d.compute_s * b.slowdown for b, d in zip(spec.boards, demand.boards)}
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    with broker_for(job) as broker:
        runner = FleetRunner(spec, schedule, fleet, job, broker, out, training_s)
        with runner, WallClockStop(job, broker, stop_after_s, runner.first_training) as deadline:
            try:
                state = run_job(job, resume=resume, on_round=on_round, broker=broker)
            except JobError:
                if not deadline.reached.is_set():
                    raise
                state = run_dir.load_state(job.job)  # stopped at the end of the budget
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    self_cpu = (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime)
    summary = _summary(spec, cal, demand, runner, self_cpu, allow_oversubscribed, mode)
    summary["measured"]["started_at"] = round(runner.started_at, 3)
    first_at = runner.first_training_at
    summary["measured"]["first_training_at"] = None if first_at is None else round(first_at, 3)
    summary["measured"]["stopped_after_s"] = stop_after_s if deadline.reached.is_set() else None
    summary["measured"]["load_average_before"] = round(load_before, 2)  # all work, not ours
    summary["measured"]["load_average_after"] = round(os.getloadavg()[0], 2)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return state, summary


def _summary(
    spec: FleetSpec,
    cal: Calibration,
    demand: Demand,
    runner: FleetRunner,
    self_cpu_s: float,
    allowed: bool,
    mode: str,
) -> dict[str, Any]:
    cores = machine_cores()
    counts: dict[str, int] = {}
    for e in runner.events:
        counts[e["event"]] = counts.get(e["event"], 0) + 1
    return {
        "fleet": spec.name,
        "source": spec.source,
        "seed": spec.seed,
        "mode": mode,
        "cores": cores,
        "calibration": dataclasses.asdict(cal),
        "estimate": {
            "demand_cores": round(demand.total, 4),
            "utilisation": round(demand.utilisation, 4),
            "max_utilisation": demand.max_utilisation,
            "oversubscribed": demand.oversubscribed,
            "allowed_anyway": allowed and demand.oversubscribed,
        },
        "measured": {
            "wall_s": round(runner.wall_s, 3),
            "device_cpu_s": round(runner.device_cpu_s, 3),
            "utilisation": round(
                measured_utilisation(runner.device_cpu_s, runner.wall_s, cores), 4
            ),
            "coordinator_process_cpu_s": round(self_cpu_s, 3),  # coordinator, broker, links
        },
        "events": counts,
        "boards": {
            b.device_id: {
                "profile": b.profile,
                "slowdown": b.slowdown,
                "link": dataclasses.asdict(b.link),
                "compute_s": round(d.compute_s, 4),
                "busy_s": round(d.busy_s, 4),
                "duty": round(d.duty, 4),
                "starts": runner.boards[b.device_id].starts,
                "trainings": runner.trainings[b.device_id],
                "cpu_s": round(runner.boards[b.device_id].cpu_s, 3),
                **runner.hub.traffic(b.device_id),
            }
            for b, d in zip(spec.boards, demand.boards)
        },
    }
