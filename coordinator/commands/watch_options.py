"""Options shared by the commands that watch a job: ``monitor``, ``dashboard``, ``start``.

Broker options mirror ``fedcoord start``'s (credentials from a file or the environment,
never a flag). Dashboard tokens: ``--admin-token-file`` / ``--viewer-token-file`` or the
``EDGEFL_DASHBOARD_ADMIN_TOKEN`` / ``EDGEFL_DASHBOARD_VIEWER_TOKEN`` environment variables;
``--admin-token`` / ``--viewer-token`` exist for quick tests (other users can read command
lines with ``ps``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from edge_client.errors import ConfigError
from edge_client.protocol import DEFAULT_PREFIX
from edge_client.transport import BrokerConfig

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

BROKER_OPTIONS = [
    click.option(
        "--broker",
        envvar="EDGEFL_BROKER",
        default="mqtt://127.0.0.1:1883",
        show_default=True,
        help="mqtt://HOST:PORT or mqtts://HOST:PORT of the job's broker (or EDGEFL_BROKER).",
    ),
    click.option(
        "--job", envvar="EDGEFL_JOB", required=True, help="Job name to watch (or EDGEFL_JOB)."
    ),
    click.option("--prefix", default=DEFAULT_PREFIX, show_default=True, help="Topic prefix."),
    click.option("--username", default=None, help="MQTT user name (or EDGEFL_MQTT_USERNAME)."),
    click.option(
        "--password-file",
        type=click.Path(dir_okay=False),
        default=None,
        help="File holding the MQTT password (or EDGEFL_MQTT_PASSWORD).",
    ),
    click.option("--ca-file", default=None, help="CA certificate for mqtts:// brokers."),
    click.option("--cert-file", default=None, help="Client certificate (mutual TLS)."),
    click.option("--key-file", default=None, help="Key of the client certificate."),
    click.option("--insecure", is_flag=True, help="Skip TLS host name verification (tests only)."),
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


def _apply(options: list[Decorator]) -> Decorator:
    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            fn = option(fn)
        return fn

    return decorate


def broker_options() -> Decorator:
    return _apply(BROKER_OPTIONS)


def auth_options() -> Decorator:
    return _apply(AUTH_OPTIONS)


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
    return _apply([listen, *AUTH_OPTIONS])


def broker_config(opts: dict[str, Any]) -> BrokerConfig:
    return BrokerConfig.from_url(
        opts["broker"],
        username=opts.get("username"),
        password_file=opts.get("password_file"),
        ca_file=opts.get("ca_file"),
        cert_file=opts.get("cert_file"),
        key_file=opts.get("key_file"),
        insecure=bool(opts.get("insecure")),
    )


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
