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
"""

from __future__ import annotations

import io
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, jsonify, redirect, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException

from coordinator.dashboard.auth import ADMIN, AuthConfig, LoginThrottle
from coordinator.dashboard.predict import PredictError, Predictor
from coordinator.monitoring.view import JobView
from edge_client.protocol import JobControl

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
CONTROL_STATES = ("paused", "running", "stopped")
_CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class AppConfig:
    max_upload_bytes: int = 4_000_000  # images for a 28x28 or 32x32 model are tiny
    refresh_s: float = 2.0  # how often the page polls /api/state
    secret_key: bytes | None = field(default=None, repr=False)  # None: random per process


def create_app(
    view: JobView,
    auth: AuthConfig,
    *,
    control: Callable[[str, str], JobControl] | None = None,
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
    app.json.sort_keys = False  # keep the snapshot's field order
    predictor = predictor or Predictor(view)
    throttle = LoginThrottle()

    def error(message: str, status: int) -> tuple[Response, int]:
        return jsonify({"error": message}), status

    def current_role() -> tuple[str | None, bool]:
        """(role, via_bearer); a wrong bearer token gives no role even with a cookie."""
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer":
                return None, True
            return auth.role_for(token.strip()), True
        role = session.get("role")
        return (role if role in ("admin", "viewer") else None), False

    @app.before_request
    def require_login() -> Any:
        if request.endpoint in ("login", "healthz", "static") or request.endpoint is None:
            return None
        role, bearer = current_role()
        if role is None:
            if request.path.startswith("/api/") or bearer:
                message = "wrong token" if bearer else "log in first (or send a bearer token)"
                return error(message, 401)
            return redirect(url_for("login"))
        if request.method == "POST" and not bearer:
            sent = str(request.headers.get("X-CSRF-Token") or request.form.get("csrf", ""))
            expected = str(session.get("csrf", ""))
            if not expected or not secrets.compare_digest(sent.encode(), expected.encode()):
                return error("missing or stale CSRF token: reload the page", 403)
        request.environ["edgefl.role"] = role
        return None

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers.setdefault("Content-Security-Policy", _CSP)
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["X-Frame-Options"] = "DENY"
        resp.headers["Referrer-Policy"] = "no-referrer"
        if request.path.startswith("/api/") or request.path in ("/", "/login"):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if exc.code == 413:
            limit = cfg.max_upload_bytes / 1e6
            return error(f"the upload is too large: the limit is {limit:g} MB", 413)
        if request.path.startswith("/api/"):
            return error(exc.description or exc.name, exc.code or 500)
        return exc

    @app.errorhandler(Exception)
    def crash(exc: Exception) -> Any:
        log.exception("dashboard: error while serving %s", request.path)
        return error("internal error: see the dashboard's log", 500)

    @app.get("/healthz")
    def healthz() -> Any:
        return {"ok": True}

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        message, status = "", 200
        if request.method == "POST":
            client = request.remote_addr or "?"
            if throttle.blocked(client):
                message, status = "too many wrong tokens: wait a minute and try again", 429
            else:
                role = auth.role_for(request.form.get("token", "").strip())
                if role is not None:
                    session.clear()
                    session["role"], session["csrf"] = role, secrets.token_urlsafe(24)
                    log.info("dashboard: %s logged in from %s", role, client)
                    return redirect(url_for("index"))
                throttle.failed(client)
                log.warning("dashboard: wrong token from %s", client)
                message, status = "wrong token", 401
        return render_template("login.html", job=view.job, message=message), status

    @app.post("/logout")
    def logout() -> Any:
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    def index() -> Any:
        return render_template(
            "index.html",
            job=view.job,
            role=request.environ["edgefl.role"],
            csrf=session.get("csrf", ""),
            refresh_ms=int(cfg.refresh_s * 1000),
            max_upload_mb=f"{cfg.max_upload_bytes / 1e6:g}",
            max_upload_bytes=cfg.max_upload_bytes,
        )

    @app.get("/api/state")
    def state() -> Any:
        snap = view.snapshot()
        snap.pop("config", None)  # served by /api/config
        snap["role"] = request.environ["edgefl.role"]
        return jsonify(snap)

    @app.get("/api/config")
    def job_config() -> Any:
        payload = view.model_payload()
        snap = view.snapshot()
        r = snap["round"] or {}
        return jsonify(
            {
                "job": view.job,
                "prefix": view.prefix,
                "broker": view.broker,
                "settings": snap["config"],
                "manifest": _manifest_summary(payload[1]) if payload else None,
                "round_hyperparams": r.get("hyperparams"),
                "encoding": r.get("encoding"),
            }
        )

    def no_model() -> tuple[Response, int]:
        return error(f"no model published for job {view.job!r} yet: is the job running?", 404)

    @app.get("/api/model")
    def model() -> Any:
        payload = view.model_payload()
        if payload is None:
            return no_model()
        tflite, meta = payload
        name = f"{view.job}-{str(meta.get('sha256', ''))[:12]}.tflite"
        return Response(
            tflite,
            mimetype="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/api/manifest")
    def manifest() -> Any:
        payload = view.model_payload()
        return jsonify(payload[1]) if payload else no_model()

    @app.get("/api/weights")
    def weights() -> Any:
        env = view.global_envelope()
        if env is None:
            return error(f"no global weights published for job {view.job!r} yet", 404)
        buf = io.BytesIO()
        np.savez(buf, **env.weights())
        name = f"{view.job}-global-round-{env.round}.npz"
        return Response(
            buf.getvalue(),
            mimetype="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.post("/api/predict")
    def predict() -> Any:
        upload = request.files.get("image")
        if upload is None or not upload.filename:
            return error("no file: send the image as multipart field 'image'", 400)
        invert = request.form.get("invert", "").lower() in ("1", "true", "on", "yes")
        try:
            return jsonify(predictor.predict(upload.read(), invert=invert))
        except PredictError as exc:
            return error(str(exc), exc.status)

    @app.post("/api/control")
    def job_control() -> Any:
        if request.environ["edgefl.role"] != ADMIN:
            return error("viewers cannot control the job: log in with the admin token", 403)
        body = request.get_json(silent=True) or request.form
        wanted = str(body.get("state", ""))
        if wanted not in CONTROL_STATES:
            return error(f"state must be one of {', '.join(CONTROL_STATES)}", 400)
        current = view.control_state
        if not view.seen or current is None:
            return error(
                f"job {view.job!r} has not been seen on the broker: nothing to control", 409
            )
        if current == "stopped":
            return error(f"job {view.job!r} is stopped: start it again with fedcoord start", 409)
        if control is None:
            return error("this dashboard is read-only (no broker connection to publish on)", 503)
        detail = str(body.get("detail", "") or "from the dashboard")[:200]
        msg = control(wanted, detail)
        log.warning("dashboard: admin set job %s %s", view.job, wanted)
        return jsonify({"ok": True, "state": msg.state, "time": msg.time})

    return app


def _manifest_summary(meta: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "architecture",
        "input_shape",
        "classes",
        "label_names",
        "parameters",
        "batch_size",
        "optimizer",
        "hyperparameters",
        "normalization",
        "sha256",
        "tflite_bytes",
    )
    return {k: meta.get(k) for k in keys if k in meta}
