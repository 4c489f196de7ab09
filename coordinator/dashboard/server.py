"""Serve the dashboard: a threaded WSGI server (werkzeug) in the foreground or a thread.

``open_dashboard`` wires the whole thing for one job: a JobView, a JobFollower on its own
MQTT connection, the Flask app and the HTTP server. Both ``fedcoord dashboard`` and
``fedcoord start --dashboard`` use it.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from coordinator.dashboard.app import AppConfig, create_app
from coordinator.dashboard.auth import AuthConfig
from coordinator.dashboard.routes.control import dashboard_control
from coordinator.monitoring.follower import JobFollower
from coordinator.monitoring.view import JobView
from edge_client.errors import ConfigError
from edge_client.protocol import DEFAULT_PREFIX
from edge_client.signing import Signer
from edge_client.transport import BrokerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DashboardSettings:
    """Where the dashboard listens and who may use it."""

    host: str
    port: int
    auth: AuthConfig = field(repr=False)
    app: AppConfig = field(default_factory=AppConfig)
    run_dir: str | None = None  # seeds configuration and round history (metrics.jsonl)
    signing_key: str | None = None  # the job's Ed25519 key: signs admins' control messages


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to our logger at DEBUG (the page polls every few seconds)."""

    def log(self, type: str, message: str, *args: Any) -> None:  # noqa: A002 - werkzeug's name
        log.debug("%s %s", self.address_string(), message % args)


class DashboardServer:
    """The HTTP server of a Flask app, run by :meth:`serve_forever` or :meth:`start`."""

    def __init__(self, app: Any, host: str, port: int, view: JobView | None = None) -> None:
        self.view = view  # the job being shown, when known
        # Bind here, not in werkzeug: it prints to stderr and exits on a port in use.
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            raise ConfigError(f"the dashboard cannot listen on {host}:{port}: {exc}") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(64)
            self._server: BaseWSGIServer = make_server(
                host,
                sock.getsockname()[1],
                app,
                threaded=True,
                request_handler=_QuietHandler,
                fd=sock.fileno(),
            )
        except OSError as exc:
            raise ConfigError(
                f"the dashboard cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        finally:
            sock.close()  # werkzeug holds its own duplicate of the descriptor
        self.host = host
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def start(self) -> DashboardServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dashboard-http", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()  # returns once serve_forever has left its loop
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)


def read_run_dir(path: str | Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(config.json, metrics.jsonl rows) of a run directory; missing files give None / []."""
    p = Path(path)
    config: dict[str, Any] | None = None
    history: list[dict[str, Any]] = []
    try:
        loaded = json.loads((p / "config.json").read_text())
        config = loaded if isinstance(loaded, dict) else None
    except (OSError, ValueError):
        pass
    try:
        for line in (p / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line) if line.strip() else None
            if isinstance(row, dict):
                history.append(row)
    except (OSError, ValueError):
        pass
    return config, history


@contextmanager
def open_dashboard(
    settings: DashboardSettings,
    broker: BrokerConfig,
    job: str,
    *,
    prefix: str = DEFAULT_PREFIX,
    config: Mapping[str, Any] | None = None,
) -> Iterator[DashboardServer]:
    """Follow ``job`` on ``broker`` and serve its dashboard until the block ends."""
    view = JobView(job, prefix=prefix, broker=broker.url)
    if settings.run_dir:
        saved, history = read_run_dir(settings.run_dir)
        view.seed_history(history)
        config = config if config is not None else saved
    view.set_config(_public(config))
    signer = Signer.from_file(settings.signing_key) if settings.signing_key else None
    follower = JobFollower(view, broker, client_id=_client_id(job), signer=signer).start()
    try:
        control = dashboard_control(follower)
        app = create_app(view, settings.auth, control=control, config=settings.app)
        server = DashboardServer(app, settings.host, settings.port, view).start()
        try:
            log.info("dashboard of job %s on %s", job, server.url)
            yield server
        finally:
            server.stop()
    finally:
        follower.stop()


def _client_id(job: str) -> str:
    import secrets

    return f"dashboard-{job}-{secrets.token_hex(4)}"[:64]


def _public(config: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The job settings worth showing (a password file's path is not a secret, but no need)."""
    if config is None:
        return None
    return {k: v for k, v in config.items() if k not in ("password_file",)}
