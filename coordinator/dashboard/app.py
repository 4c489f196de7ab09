"""The dashboard's Flask application: pages, JSON API, authentication, job control.

Pages: ``/`` (the command center), ``/login``. API (JSON unless noted; every route but
``/healthz`` and ``/login`` needs a viewer or admin):

    GET  /api/state      the JobView snapshot (+ your role)
    GET  /api/config     job configuration, model manifest, round hyperparameters
    GET  /api/model      the job's .tflite model (download)
    GET  /api/manifest   its manifest
    GET  /api/weights    the current global weights as .npz (download)
    POST /api/predict    multipart ``image`` (+ ``invert``): class probabilities
    POST /api/control    {"state": "paused"|"running"|"stopped"}: admin only

Clients authenticate with ``Authorization: Bearer TOKEN`` or the login form's signed
session cookie; cookie-authenticated POSTs also carry the page's CSRF token
(``X-CSRF-Token`` header or ``csrf`` form field).

This module assembles the app (settings, security headers, error pages); the routes live
in ``coordinator/dashboard/routes/``, one blueprint per concern, and reach the job's view
and the tokens through ``coordinator/dashboard/context.py``.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from coordinator.dashboard.auth import AuthConfig, LoginThrottle
from coordinator.dashboard.context import (
    EXTENSION,
    AppConfig,
    ControlFn,
    Dashboard,
    dashboard,
    error,
)
from coordinator.dashboard.predict import Predictor
from coordinator.dashboard.routes import BLUEPRINTS
from coordinator.dashboard.routes.control import CONTROL_STATES
from coordinator.monitoring.view import JobView

__all__ = ["CONTROL_STATES", "AppConfig", "create_app"]

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def create_app(
    view: JobView,
    auth: AuthConfig,
    *,
    control: ControlFn | None = None,
    predictor: Predictor | None = None,
    config: AppConfig | None = None,
) -> Flask:
    """The dashboard of ``view``'s job; ``control(state, detail)`` publishes JobControl."""
    cfg = config or AppConfig()
    app = Flask(
        __name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static")
    )
    app.config.update(
        SECRET_KEY=cfg.secret_key or secrets.token_bytes(32),
        MAX_CONTENT_LENGTH=cfg.max_upload_bytes,
        SESSION_COOKIE_NAME="edgefl_dashboard",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep the snapshot's field order
    app.extensions[EXTENSION] = Dashboard(
        view=view,
        auth=auth,
        config=cfg,
        predictor=predictor or Predictor(view),
        control=control,
        throttle=LoginThrottle(),
    )
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.after_request(_security_headers)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _crash)
    app.add_url_rule("/healthz", "healthz", _healthz)
    return app


def _healthz() -> Any:
    return {"ok": True}


def _security_headers(resp: Response) -> Response:
    resp.headers.setdefault("Content-Security-Policy", _CSP)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "no-referrer"
    if request.path.startswith("/api/") or request.path in ("/", "/login"):
        resp.headers["Cache-Control"] = "no-store"
    return resp


def _http_error(exc: HTTPException) -> Any:
    if exc.code == 413:
        limit = dashboard().config.max_upload_bytes / 1e6
        return error(f"the upload is too large: the limit is {limit:g} MB", 413)
    if request.path.startswith("/api/"):
        return error(exc.description or exc.name, exc.code or 500)
    return exc


def _crash(exc: Exception) -> Any:
    log.exception("dashboard: error while serving %s", request.path)
    return error("internal error: see the dashboard's log", 500)
