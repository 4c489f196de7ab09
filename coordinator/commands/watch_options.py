"""Options shared by the commands that watch a job: ``monitor``, ``dashboard``, ``start``.

Broker options are ``fedcoord start``'s (``job_options``; credentials from a file or the
environment, never a flag). Dashboard tokens: ``--admin-token-file`` / ``--viewer-token-file`` or the
``EDGEFL_DASHBOARD_ADMIN_TOKEN`` / ``EDGEFL_DASHBOARD_VIEWER_TOKEN`` environment variables;
``--admin-token`` / ``--viewer-token`` exist for quick tests (other users can read command
lines with ``ps``).
"""

from __future__ import annotations

from typing import Any

import click

from coordinator.commands.job_options import (
    Decorator,
    apply,
    broker_config,
    connection_options,
    option,
)
from edge_client.errors import ConfigError
from edge_client.protocol import DEFAULT_PREFIX

__all__ = ["auth_options", "broker_config", "broker_options", "dashboard_options"]

BROKER_OPTIONS = [
    connection_options(
        broker_help="mqtt://HOST:PORT or mqtts://HOST:PORT of the job's broker (or EDGEFL_BROKER).",
        broker_default="mqtt://127.0.0.1:1883",
        envvar="EDGEFL_BROKER",
    ),
    option("job", envvar="EDGEFL_JOB", required=True, help="Job name to watch (or EDGEFL_JOB)."),
    option("prefix", default=DEFAULT_PREFIX),
]

AUTH_OPTIONS = [
    click.option(
        "--admin-token-file",
        type=click.Path(dir_okay=False),
        default=None,
        help="File whose first line is the admin token (or EDGEFL_DASHBOARD_ADMIN_TOKEN).",
    ),
    click.option(
        "--viewer-token-file",
        type=click.Path(dir_okay=False),
        default=None,
        help="File whose first line is the read-only viewer token (or EDGEFL_DASHBOARD_VIEWER_TOKEN).",
    ),
    click.option(
        "--admin-token", default=None, help="Admin token (visible in `ps`: prefer the file)."
    ),
    click.option("--viewer-token", default=None, help="Viewer token (visible in `ps`)."),
    click.option(
        "--max-upload-mb",
        type=float,
        default=4.0,
        show_default=True,
        help="Largest image upload accepted by the dashboard.",
    ),
]
_AUTH_KEYS = ("admin_token_file", "viewer_token_file", "admin_token", "viewer_token")


def broker_options() -> Decorator:
    return apply(*BROKER_OPTIONS)


def auth_options() -> Decorator:
    return apply(*AUTH_OPTIONS)


def dashboard_options() -> Decorator:
    """``--dashboard HOST:PORT`` and the token options, for ``fedcoord start``."""
    listen = click.option(
        "--dashboard",
        "dashboard_listen",
        default=None,
        metavar="HOST:PORT",
        help="Serve the web dashboard of the job on HOST:PORT (e.g. 0.0.0.0:8080); "
        "needs an admin token.",
    )
    return apply(listen, *AUTH_OPTIONS)


def dashboard_settings(opts: dict[str, Any], listen: str | None, run_dir: str | None = None):  # noqa: ANN201
    """DashboardSettings from the options, or None without ``listen`` (no dashboard)."""
    if listen is None:
        if any(opts.get(k) for k in _AUTH_KEYS):
            raise ConfigError("dashboard tokens were given without --dashboard HOST:PORT")
        return None
    try:
        from coordinator.dashboard.app import AppConfig
        from coordinator.dashboard.auth import AuthConfig
        from coordinator.dashboard.server import DashboardSettings
    except ImportError as exc:
        raise ConfigError(
            f"the dashboard needs Flask ({exc.name} is missing): pip install 'edgefl[coordinator]'"
        ) from None
    host, _, port_text = listen.rpartition(":")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"invalid dashboard address {listen!r}: use HOST:PORT, e.g. 0.0.0.0:8080")
    host, port = host.strip("[]") or "127.0.0.1", int(port_text)  # [::1]:8080 -> ::1
    auth = AuthConfig.resolve(**{k: opts.get(k) for k in _AUTH_KEYS})
    max_mb = float(opts.get("max_upload_mb") or 4.0)
    if not 0 < max_mb <= 1024:
        raise ConfigError(f"--max-upload-mb must be in (0, 1024], got {max_mb:g}")
    return DashboardSettings(
        host, port, auth, AppConfig(max_upload_bytes=int(max_mb * 1e6)), run_dir=run_dir
    )
