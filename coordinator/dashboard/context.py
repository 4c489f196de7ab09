"""What every route of the dashboard reads: the job's view, the tokens, the settings.

``create_app`` stores one :class:`Dashboard` in the Flask app; a route reaches it with
:func:`dashboard`, answers errors with :func:`error` and reads the caller's role with
:func:`role` (set by the login check in ``routes/auth.py`` before any route runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flask import Response, current_app, jsonify, request

from coordinator.dashboard.auth import AuthConfig, LoginThrottle
from coordinator.dashboard.predict import Predictor
from coordinator.monitoring.view import JobView
from edge_client.protocol import JobControl

EXTENSION = "edgefl.dashboard"  # key in app.extensions
ROLE_KEY = "edgefl.role"  # key in request.environ

ControlFn = Callable[[str, str], JobControl]
"""``control(state, detail)`` publishes a JobControl for the job and returns it."""


@dataclass(frozen=True)
class AppConfig:
    max_upload_bytes: int = 4_000_000  # images for a 28x28 or 32x32 model are tiny
    refresh_s: float = 2.0  # how often the page polls /api/state
    secret_key: bytes | None = field(default=None, repr=False)  # None: random per process


@dataclass(frozen=True)
class Dashboard:
    """One dashboard's collaborators (``control`` None: read-only, no broker to publish on)."""

    view: JobView
    auth: AuthConfig
    config: AppConfig
    predictor: Predictor
    control: ControlFn | None
    throttle: LoginThrottle


def dashboard() -> Dashboard:
    """The Dashboard of the app serving the current request."""
    found: Dashboard = current_app.extensions[EXTENSION]
    return found


def error(message: str, status: int) -> tuple[Response, int]:
    """A JSON error body ``{"error": message}`` with ``status``."""
    return jsonify({"error": message}), status


def role() -> str:
    """``admin`` or ``viewer``: the role the login check found for this request."""
    return str(request.environ[ROLE_KEY])
