"""Job control: admins pause, resume or stop the job (a JobControl message on the broker).

The coordinator obeys a control message only if it names the job and, in a signed job, is
signed with the job's key: a dashboard without that key refuses to control a signed job
rather than publish messages the coordinator would ignore.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Blueprint, jsonify, request

from coordinator.dashboard.auth import ADMIN
from coordinator.dashboard.context import dashboard, error, role
from edge_client.protocol import JobControl

if TYPE_CHECKING:
    from coordinator.monitoring.follower import JobFollower

log = logging.getLogger(__name__)

bp = Blueprint("control", __name__)

CONTROL_STATES = ("paused", "running", "stopped")


@bp.post("/api/control")
def job_control() -> Any:
    if role() != ADMIN:
        return error("viewers cannot control the job: log in with the admin token", 403)
    board = dashboard()
    view = board.view
    body = request.get_json(silent=True) or request.form
    wanted = str(body.get("state", ""))
    if wanted not in CONTROL_STATES:
        return error(f"state must be one of {', '.join(CONTROL_STATES)}", 400)
    current = view.control_state
    if not view.seen or current is None:
        return error(f"job {view.job!r} has not been seen on the broker: nothing to control", 409)
    if current == "stopped":
        return error(f"job {view.job!r} is stopped: start it again with fedcoord start", 409)
    if board.control is None:
        return error("this dashboard is read-only (no broker connection to publish on)", 503)
    if view.signed and not getattr(board.control, "signs", False):
        return error(
            f"job {view.job!r} is signed: the dashboard needs the job's signing key to "
            "control it (fedcoord dashboard --signing-key KEY, or fedcoord start --dashboard)",
            409,
        )
    detail = str(body.get("detail", "") or "from the dashboard")[:200]
    msg = board.control(wanted, detail)
    log.warning("dashboard: admin set job %s %s", view.job, wanted)
    return jsonify({"ok": True, "state": msg.state, "time": msg.time})


def requester() -> str:
    """Who is asking, for the control message's ``by`` (tokens carry no user names)."""
    return f"dashboard admin at {request.remote_addr or 'an unknown address'}"


@dataclass(frozen=True)
class DashboardControl:
    """The dashboard's ``control(state, detail)``: publishes through ``follower``, signed
    when the follower holds the job's key, naming the admin's address as ``by``."""

    follower: JobFollower

    @property
    def signs(self) -> bool:
        return self.follower.signer is not None

    def __call__(self, state: str, detail: str) -> JobControl:
        return self.follower.publish_control(state, detail, by=requester())


def dashboard_control(follower: JobFollower) -> DashboardControl:
    return DashboardControl(follower)
