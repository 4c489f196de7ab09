"""Job control: admins pause, resume or stop the job (a JobControl message on the broker)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, jsonify, request

from coordinator.dashboard.auth import ADMIN
from coordinator.dashboard.context import dashboard, error, role

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
    detail = str(body.get("detail", "") or "from the dashboard")[:200]
    msg = board.control(wanted, detail)
    log.warning("dashboard: admin set job %s %s", view.job, wanted)
    return jsonify({"ok": True, "state": msg.state, "time": msg.time})
