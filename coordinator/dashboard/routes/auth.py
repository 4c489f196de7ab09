"""Who may call what: bearer tokens or the login form's session cookie, CSRF on POSTs."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from flask import Blueprint, redirect, render_template, request, session, url_for

from coordinator.dashboard.context import ROLE_KEY, dashboard, error

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)

PUBLIC_ENDPOINTS = ("auth.login", "healthz", "static")  # everything else needs a role


def current_role() -> tuple[str | None, bool]:
    """(role, via_bearer); a wrong bearer token gives no role even with a cookie."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None, True
        return dashboard().auth.role_for(token.strip()), True
    role = session.get("role")
    return (role if role in ("admin", "viewer") else None), False


@bp.before_app_request
def require_login() -> Any:
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return None
    role, bearer = current_role()
    if role is None:
        if request.path.startswith("/api/") or bearer:
            message = "wrong token" if bearer else "log in first (or send a bearer token)"
            return error(message, 401)
        return redirect(url_for("auth.login"))
    if request.method == "POST" and not bearer:
        sent = str(request.headers.get("X-CSRF-Token") or request.form.get("csrf", ""))
        expected = str(session.get("csrf", ""))
        if not expected or not secrets.compare_digest(sent.encode(), expected.encode()):
            return error("missing or stale CSRF token: reload the page", 403)
    request.environ[ROLE_KEY] = role
    return None


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    board = dashboard()
    message, status = "", 200
    if request.method == "POST":
        client = request.remote_addr or "?"
        if board.throttle.blocked(client):
            message, status = "too many wrong tokens: wait a minute and try again", 429
        else:
            role = board.auth.role_for(request.form.get("token", "").strip())
            if role is not None:
                session.clear()
                session["role"], session["csrf"] = role, secrets.token_urlsafe(24)
                log.info("dashboard: %s logged in from %s", role, client)
                return redirect(url_for("job.index"))
            board.throttle.failed(client)
            log.warning("dashboard: wrong token from %s", client)
            message, status = "wrong token", 401
    return render_template("login.html", job=board.view.job, message=message), status


@bp.post("/logout")
def logout() -> Any:
    session.clear()
    return redirect(url_for("auth.login"))
