"""``JobView``: what is known about one job, built from its decoded MQTT messages.

One thread (the follower) calls :meth:`JobView.apply` for every decoded message; any
number of others (the terminal view, the web dashboard's request threads) read
:meth:`JobView.snapshot`, a JSON-ready dict. Every message is a state, so applying one
twice (a QoS 1 duplicate, a retained copy after a reconnect) changes nothing.

Late joiners: the broker replays the retained ``control``, ``round``, ``metrics``,
``status/+``, ``model`` and ``global`` topics on subscribe, so a view started in the middle
of a job shows the current round, presence, the latest metrics and the current model at
once. Round history before the join is only known when seeded from the run directory
(:meth:`JobView.seed_history`), since ``metrics`` retains the latest round alone.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from coordinator.monitoring.rows import (
    DeviceState,
    SecureProgress,
    control_dict,
    device_row,
    global_dict,
    history_entry,
    model_dict,
    round_dict,
    secure_progress,
)
from edge_client.errors import ProtocolError
from edge_client.messaging import (
    ControlReceived,
    GlobalReceived,
    Incoming,
    MetricsReceived,
    ModelReceived,
    RoundReceived,
    SecAggReceived,
    StatusReceived,
    UpdateReceived,
)
from edge_client.protocol import (
    DEFAULT_PREFIX,
    DeviceMetrics,
    DeviceStatus,
    Envelope,
    JobControl,
    RoundAnnouncement,
    RoundMetrics,
    UpdateMeta,
)

COORDINATOR = "coordinator"  # the coordinator registers its Last Will as this "device"
MAX_EVENTS = 50  # recent events kept for display
MAX_REJECTIONS = 20  # recent rejected updates in the snapshot (from the rounds' metrics)


class JobView:
    """Thread-safe picture of one job: control state, round, devices, history, model."""

    def __init__(
        self,
        job: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        broker: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.job, self.prefix, self.broker, self.clock = job, prefix, broker, clock
        self._lock = threading.RLock()
        self._devices: dict[str, DeviceState] = {}
        self._control: JobControl | None = None
        self._round: RoundAnnouncement | None = None
        self._history: dict[int, dict[str, Any]] = {}
        self._rejections: dict[int, list[dict[str, Any]]] = {}  # round -> its rejections
        self._model: Envelope | None = None
        self._global: Envelope | None = None
        self._traffic: dict[str, int] = {}  # bytes seen per message kind
        self._counts: dict[str, int] = {}  # messages seen per kind
        self._events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self._config: dict[str, Any] | None = None
        self._connected = False
        self._coordinator_lost: float | None = None
        self._last_message: float | None = None
        self._rejected = 0
        self._secure: SecureProgress | None = None  # the open secure round's stages
        self.started = clock()
        self.version = 0  # bumped on every change; cheap "did anything happen" check

    # -- feeding --------------------------------------------------------------------------
    def apply(self, item: Incoming, *, retained: bool = False) -> None:
        """Fold one decoded message into the view (idempotent for repeated messages)."""
        handlers: dict[type[Incoming], Callable[[Any, Incoming, bool], None]] = {
            StatusReceived: self._on_status,
            RoundReceived: self._on_round,
            MetricsReceived: self._on_metrics,
            ControlReceived: self._on_control,
            ModelReceived: self._on_model,
            GlobalReceived: self._on_global,
            UpdateReceived: self._on_update,
            SecAggReceived: self._on_secagg,
        }
        handler = handlers.get(type(item))
        if handler is None:
            return
        with self._lock:
            now = self.clock()
            self._last_message = now
            self._counts[item.kind] = self._counts.get(item.kind, 0) + 1
            self._traffic[item.kind] = self._traffic.get(item.kind, 0) + item.size
            handler(item.value, item, retained)
            self.version += 1

    def seed_history(self, rounds: Iterable[RoundMetrics | Mapping[str, Any]]) -> None:
        """Add rounds known from elsewhere (the run directory's metrics.jsonl records)."""
        with self._lock:
            for m in rounds:
                try:
                    metrics = (
                        m if isinstance(m, RoundMetrics) else RoundMetrics.from_record(self.job, m)
                    )
                except ProtocolError:
                    continue  # a line this version cannot read: the live messages still count
                self._history.setdefault(metrics.round, history_entry(metrics))
                self._rejections.setdefault(
                    metrics.round, [r.to_dict() for r in metrics.rejections]
                )
            self.version += 1

    def set_config(self, config: Mapping[str, Any] | None) -> None:
        """The job's configuration (``fedcoord start`` settings), when known."""
        with self._lock:
            self._config = dict(config) if config is not None else None
            self.version += 1

    def set_connected(self, connected: bool) -> None:
        with self._lock:
            if connected != self._connected:
                self._connected = connected
                self._event(f"{'connected to' if connected else 'lost connection to'} the broker")
                self.version += 1

    def set_rejected(self, count: int) -> None:
        with self._lock:
            if count != self._rejected:
                self._rejected = count
                self.version += 1

    # -- reading --------------------------------------------------------------------------
    @property
    def seen(self) -> bool:
        """Whether any message of this job arrived (a job nobody publishes looks empty)."""
        with self._lock:
            return self._last_message is not None

    @property
    def control_state(self) -> str | None:
        with self._lock:
            return self._control.state if self._control else None

    @property
    def signed(self) -> bool:
        """Whether the job signs its control messages (the last one seen carries a signature):
        then only a dashboard holding the job's key can steer it."""
        with self._lock:
            return self._control is not None and self._control.signature is not None

    def model_payload(self) -> tuple[bytes, dict[str, Any]] | None:
        """The job's current ``.tflite`` bytes and manifest dict, if a model was published."""
        with self._lock:
            return (self._model.body, dict(self._model.meta)) if self._model else None

    def global_envelope(self) -> Envelope | None:
        """The current global weights (an immutable envelope), if published."""
        with self._lock:
            return self._global

    def snapshot(self) -> dict[str, Any]:
        """Everything shown by the monitor and the dashboard, as plain JSON-ready data."""
        with self._lock:
            now = self.clock()
            devices = [device_row(d, self._round, now) for _, d in sorted(self._devices.items())]
            history = [dict(self._history[r]) for r in sorted(self._history)]
            last = history[-1] if history else {}
            return {
                "job": self.job,
                "prefix": self.prefix,
                "broker": self.broker,
                "now": now,
                "started": self.started,
                "version": self.version,
                "connected": self._connected,
                "seen": self._last_message is not None,
                "last_message": self._last_message,
                "rejected": self._rejected,
                "coordinator_lost": self._coordinator_lost,
                "control": control_dict(self._control),
                "round": round_dict(self._round, self._devices, now, self._secure),
                "devices": devices,
                "history": history,
                "rejections": self._recent_rejections(),
                "summary": {
                    "devices": len(devices),
                    "online": sum(d["presence"] == "online" for d in devices),
                    "rounds_done": len(history),
                    "accuracy": last.get("accuracy"),
                    "loss": last.get("loss"),
                },
                "model": model_dict(self._model),
                "global": global_dict(self._global),
                "traffic": dict(self._traffic),
                "messages": dict(self._counts),
                "events": list(self._events),
                "config": dict(self._config) if self._config is not None else None,
            }

    # -- handlers (lock held) -----------------------------------------------------------------
    def _event(self, text: str) -> None:
        self._events.append({"time": self.clock(), "text": text})

    def _row(self, device: str) -> DeviceState:
        if device not in self._devices:
            self._devices[device] = DeviceState(device)
        return self._devices[device]

    def _on_status(self, status: DeviceStatus, item: Incoming, retained: bool) -> None:
        if status.device == COORDINATOR:  # the coordinator's Last Will
            if status.state == "offline" and not retained:
                self._coordinator_lost = self.clock()
                self._event("the coordinator lost its connection (Last Will)")
            return
        row = self._row(status.device)
        before = row.status
        row.status = status
        row.seen_at = status.time if retained else self.clock()
        row.samples = status.samples or row.samples
        row.interpreter = status.interpreter or row.interpreter
        was_offline = before is None or before.state == "offline"
        if was_offline != (status.state == "offline"):
            note = f" ({status.detail})" if status.state == "offline" and status.detail else ""
            self._event(
                f"{status.device} is {'offline' if status.state == 'offline' else 'online'}{note}"
            )
        if status.state == "failed" and (before is None or before.state != "failed"):
            self._event(f"{status.device} failed: {status.detail or 'no reason given'}")

    def _on_round(self, ann: RoundAnnouncement, item: Incoming, retained: bool) -> None:
        self._coordinator_lost = None
        if ann == self._round:
            return
        before, self._round = self._round, ann
        self._secure = secure_progress(ann, self._secure)
        for device in ann.selected:
            self._row(device)
        if ann.buffered:  # re-announced at every slot granted: an event per version
            if before is None or (before.round, before.state) != (ann.round, ann.state):
                self._event(f"version {ann.round} {ann.state}: {len(ann.selected)} training")
            return
        if ann.state == "open":
            self._event(f"round {ann.round} opened: {len(ann.selected)} device(s) selected")
        else:
            self._event(f"round {ann.round} {ann.state}")

    def _on_metrics(self, m: RoundMetrics, item: Incoming, retained: bool) -> None:
        self._coordinator_lost = None
        entry = history_entry(m)
        before = self._history.get(m.round)
        if before and not entry["dropped"]:  # the wire does not carry it; metrics.jsonl does
            entry["dropped"] = before["dropped"]
        known = before == entry  # a duplicate, or seeded from the run dir
        self._history[m.round] = entry
        self._rejections[m.round] = [r.to_dict() for r in m.rejections]
        for device in m.devices:
            self._device_result(device, m.round)
        if not known:
            acc = (
                f"accuracy {100 * m.accuracy:.2f} %" if m.accuracy is not None else "not evaluated"
            )
            rejected = f", {len(m.rejections)} rejected" if m.rejections else ""
            if m.staleness is not None:  # a buffered job's version
                mean, top = m.staleness
                self._event(
                    f"version {m.round} made: {acc}, {m.updates_aggregated} update(s), "
                    f"staleness mean {mean:.1f} max {top}{rejected}"
                )
                return
            self._event(f"round {m.round} done: {acc}, {len(m.participants)} update(s){rejected}")

    def _device_result(self, info: DeviceMetrics, round_: int) -> None:
        row = self._row(info.device)
        if row.update_round is not None and row.update_round > round_:
            return  # already know a newer round
        row.update_round = round_
        row.failed = info.failed
        row.loss, row.accuracy = info.loss, info.accuracy
        row.samples = info.samples or row.samples
        row.interpreter = info.interpreter or row.interpreter
        row.bytes_up = info.bytes_up or row.bytes_up

    def _on_control(self, ctl: JobControl, item: Incoming, retained: bool) -> None:
        if ctl == self._control or ctl.job != self.job:  # another job's: the coordinator
            return  # ignores it too (and publishes its own state again)
        changed = self._control is None or self._control.state != ctl.state
        self._control = ctl
        if changed:
            by = f" by {ctl.by}" if ctl.by else ""
            self._event(f"job {ctl.state}{by}" + (f" ({ctl.detail})" if ctl.detail else ""))

    def _on_model(self, env: Envelope, item: Incoming, retained: bool) -> None:
        if self._model is not None and self._model.sha256 == env.sha256:
            return
        self._model = env
        arch = env.meta.get("architecture", "model")
        self._event(f"model published: {arch}, {len(env.body):,} bytes")

    def _on_global(self, env: Envelope, item: Incoming, retained: bool) -> None:
        self._global = env

    def _on_update(self, env: Envelope, item: Incoming, retained: bool) -> None:
        device = item.device or env.sender
        if env.kind == "failure":
            info = DeviceMetrics(device, failed=env.reason or "failed")
            row = self._devices.get(device)
            if row is None or (row.update_round, row.failed) != (env.round, info.failed):
                self._event(f"{device} failed round {env.round}: {env.reason or 'no reason given'}")
        else:
            try:
                meta = env.update_meta()
            except ProtocolError:
                meta = UpdateMeta()  # the coordinator rejects it; the view still shows it arrived
            interpreter = f"{meta.interpreter or ''} {meta.interpreter_version or ''}"
            info = DeviceMetrics(
                device,
                samples=env.samples,
                loss=meta.loss,
                accuracy=meta.accuracy,
                interpreter=interpreter.strip()[:256],
                bytes_up=item.size,
            )
        self._device_result(info, env.round)

    def _on_secagg(self, env: Envelope, item: Incoming, retained: bool) -> None:
        if self._secure is not None and self._secure.take(env, item.device):
            stage = self._secure.stage
            if env.sender == COORDINATOR:
                self._event(f"secure round {env.round}: {stage} stage")

    def _recent_rejections(self) -> list[dict[str, Any]]:
        """The last :data:`MAX_REJECTIONS` rejected messages, oldest first (round order)."""
        recent = [r for n in sorted(self._rejections) for r in self._rejections[n]]
        return recent[-MAX_REJECTIONS:]
