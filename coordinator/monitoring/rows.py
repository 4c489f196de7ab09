"""The rows of ``JobView.snapshot``: plain JSON-ready dicts built from the typed messages.

One function per part of the snapshot (a device, the current round, a round of history, the
job's control state, the model, the global weights), plus ``DeviceState``, what the view
keeps per device between messages. The monitor (``render.py``) and the dashboard read these
dicts, so a key added here shows up in ``/api/state`` and can be rendered by both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_client.protocol import (
    DeviceStatus,
    Envelope,
    JobControl,
    RoundAnnouncement,
    RoundMetrics,
)

STALE_AFTER_HEARTBEATS = 3.0  # a heartbeating device missing this many is shown "stale"
_MANIFEST_KEYS = (
    "architecture",
    "input_shape",
    "classes",
    "label_names",
    "parameters",
    "optimizer",
    "batch_size",
    "hyperparameters",
)


@dataclass
class DeviceState:
    """Mutable per-device state; only the view's lock holder touches it."""

    device: str
    status: DeviceStatus | None = None
    seen_at: float = 0.0  # status time (retained) or arrival time (live)
    update_round: int | None = None  # round of its last update or failure
    failed: str = ""  # failure reason for update_round, "" if it sent weights
    loss: float | None = None  # local training loss of update_round
    accuracy: float | None = None
    samples: int = 0
    interpreter: str = ""
    bytes_up: int = 0


def device_row(d: DeviceState, ann: RoundAnnouncement | None, now: float) -> dict[str, Any]:
    """One device: presence (online, stale, offline, unknown), its part in round ``ann``."""
    s = d.status
    if s is None:
        presence = "unknown"
    elif s.state == "offline":
        presence = "offline"
    elif s.heartbeat_s > 0 and now - d.seen_at > STALE_AFTER_HEARTBEATS * s.heartbeat_s:
        presence = "stale"
    else:
        presence = "online"
    current = ann is not None and d.update_round == ann.round
    return {
        "device": d.device,
        "presence": presence,
        "state": s.state if s else "unknown",
        "detail": s.detail if s else "",
        "round": s.round if s else None,
        "selected": bool(ann and ann.is_selected(d.device)),
        "replied": ("failed" if d.failed else "update") if current else "",
        "last_round": d.update_round,
        "samples": d.samples,
        "loss": d.loss,
        "accuracy": d.accuracy,
        "failure": d.failed,
        "interpreter": d.interpreter,
        "version": s.version if s else "",
        "heartbeat_s": s.heartbeat_s if s else 0.0,
        "last_seen": d.seen_at or None,
        "bytes_up": d.bytes_up,
    }


# A secure round's stage, from the coordinator's stage message that opened it
_OPENS = {"key-list": "shares", "routed": "masked", "unmask": "unmask"}
SECURE_STAGES = ("keys", "shares", "masked", "unmask")  # what devices send, in order
_SENT = {"keys": "keys", "shares": "shares", "masked": "masked", "unmask-reply": "unmask"}


@dataclass
class SecureProgress:
    """Where the open secure round is (docs/protocol.md section 14), from the stage
    messages a monitor sees: the coordinator's open each stage, the devices' are counted."""

    round: int
    session: str
    stage: str = "keys"  # keys (training, then advertising), shares, masked, unmask
    sent: dict[str, set[str]] = field(default_factory=dict)  # stage -> devices that sent

    def take(self, env: Envelope, device: str | None) -> bool:
        """Fold a stage message in; True if it opened a new stage."""
        meta = env.meta
        if env.round != self.round or meta.get("session") != self.session:
            return False
        stage = str(meta.get("stage"))
        if stage in _OPENS and SECURE_STAGES.index(_OPENS[stage]) > SECURE_STAGES.index(self.stage):
            self.stage = _OPENS[stage]
            return True
        if stage in _SENT and device:
            self.sent.setdefault(_SENT[stage], set()).add(device)
        return False

    def to_dict(self, state: str) -> dict[str, Any]:
        return {
            "session": self.session,
            "stage": self.stage if state == "open" else state,
            "sent": {s: len(self.sent.get(s, ())) for s in SECURE_STAGES},
        }


def secure_progress(ann: RoundAnnouncement, before: SecureProgress | None) -> SecureProgress | None:
    """The progress to keep for ``ann``: the same while its session goes on, else a new one."""
    params = ann.secure
    if params is None:
        return None
    if before is not None and before.session == params.session:
        return before
    return SecureProgress(ann.round, params.session)


def round_dict(
    ann: RoundAnnouncement | None,
    devices: Mapping[str, DeviceState],
    now: float,
    secure: SecureProgress | None = None,
) -> dict[str, Any] | None:
    """The current round: its announcement and who replied to it so far (a secure round:
    its stage and how many devices sent each stage's message)."""
    if ann is None:
        return None
    answered = {k: d for k, d in devices.items() if d.update_round == ann.round}
    return {
        "round": ann.round,
        "state": ann.state,
        "deadline": ann.deadline,
        "remaining_s": max(0.0, ann.deadline - now) if ann.state == "open" else None,
        "selected": list(ann.selected),
        "replied": sorted(k for k, d in answered.items() if not d.failed),
        "failed": sorted(k for k, d in answered.items() if d.failed),
        "hyperparams": dict(ann.hyperparams),
        # buffered jobs (FedBuff): "round" is the global version, "selected" the devices
        # holding a training slot, "grants" their grant numbers
        "mode": ann.mode or "sync",
        "grants": dict(ann.grants or {}),
        "max_staleness": ann.max_staleness,
        "encoding": ann.encoding,
        "model_sha256": ann.model_sha256,
        "global_sha256": ann.global_sha256,
        "secagg": secure.to_dict(ann.state) if secure is not None else None,
    }


def history_entry(m: RoundMetrics) -> dict[str, Any]:
    """A round's row of the snapshot's ``history`` (what the monitor and the dashboard show)."""
    return {
        "round": m.round,
        "accuracy": m.accuracy,
        "loss": m.loss,
        "participants": list(m.participants),
        "bytes_up": m.bytes_up,
        "bytes_down": m.bytes_down,
        "duration_s": m.duration_s,
        "samples": m.samples,
        "failed": list(m.failed),
        "rejected": len(m.rejections),  # messages rejected this round (details: rejections)
        "rejected_counted": sum(r.counted for r in m.rejections),  # counted as a reply
        "bytes_rejected": m.bytes_rejected,
        "contested": list(m.contested),
        "dropped": list(m.dropped),  # known from metrics.jsonl only (not on the wire)
        # round mode (docs/round-modes.md): over-selection, late updates
        "target_updates": m.target_updates,
        "cancelled": list(m.cancelled),
        "wasted": m.wasted,
        "late_folded": len(m.late_folded),
        # buffered jobs: "round" is the global version; the staleness of its updates
        "mode": m.mode or "sync",
        "updates": len(m.buffer) or m.updates_aggregated,  # the wire carries the buffer
        "staleness_mean": None if m.staleness is None else round(m.staleness[0], 3),
        "staleness_max": None if m.staleness is None else m.staleness[1],
        # secure aggregation (docs/secure-aggregation.md): how the round's stages ended
        "secagg": _secure_summary(m.secagg) if m.secagg else None,
    }


def _secure_summary(s: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "stage": s.get("stage"),
        "graph": s.get("graph"),
        "threshold": s.get("threshold"),
        "survivors": len(s.get("survivors") or ()),
        "recovered": len(s.get("recovered") or ()),
        "failed": s.get("failed"),
        "attempts": len(s.get("attempts") or ()) or 1,
        "stages_s": {k: v.get("duration_s") for k, v in (s.get("stages") or {}).items()},
    }


def control_dict(ctl: JobControl | None) -> dict[str, Any] | None:
    """The job's state; ``by`` who decided, ``until`` when a pause ends by itself, ``signed``
    whether the job signs its model, rounds and control: the coordinator says so in its
    control messages (``false``: run with ``--unsigned``); a message that does not say (an
    operator tool's) is signed exactly when the job is, since a signed job obeys only signed
    control. ``unsigned_job``: the coordinator says it runs with ``--unsigned``."""
    if ctl is None:
        return None
    return {
        "state": ctl.state,
        "time": ctl.time,
        "detail": ctl.detail,
        "by": ctl.by,
        "until": ctl.until,
        "signed": ctl.signed if ctl.signed is not None else ctl.signature is not None,
        "unsigned_job": ctl.signed is False,
    }


def model_dict(env: Envelope | None) -> dict[str, Any] | None:
    """The published model: its hash, size and the manifest's descriptive keys."""
    if env is None:
        return None
    info = {k: env.meta.get(k) for k in _MANIFEST_KEYS}
    return {"sha256": env.sha256, "bytes": len(env.body), **info}


def global_dict(env: Envelope | None) -> dict[str, Any] | None:
    if env is None:
        return None
    return {"round": env.round, "encoding": env.encoding, "bytes": env.size, "sha256": env.sha256}
