"""``fedcoord dashboard``: the web command center of a job, standalone."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

import click

from coordinator.commands.watch_options import (
    auth_options,
    broker_config,
    broker_options,
    dashboard_settings,
)

SILENT_NOTE_S = 5.0  # warn when the job sent nothing this long after connecting


@click.command()
@broker_options()
@click.option(
    "--listen",
    default="127.0.0.1:8080",
    show_default=True,
    metavar="HOST:PORT",
    help="Where the dashboard listens; 0.0.0.0:8080 serves the LAN (put TLS in front).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="The job's run directory, if readable here: shows its configuration and all rounds.",
)
@click.option(
    "--signing-key",
    type=click.Path(dir_okay=False),
    default=None,
    help="The job's Ed25519 private key: needed to pause, resume or stop a signed job "
    "(its coordinator obeys only control messages signed with it). [default: the job's own "
    "key, if this machine has it ($EDGEFL_KEYS_DIR/JOB/signing.key)]",
)
@auth_options()
def dashboard(listen: str, run_dir: str | None, signing_key: str | None, **opts: Any) -> None:
    """Serve the web command center of a running job: accuracy and loss charts, a live
    device table, image classification with the current global model, model download,
    the job's configuration, and (admins) pause / resume / stop.

    Needs an admin token (--admin-token-file or EDGEFL_DASHBOARD_ADMIN_TOKEN); a viewer
    token gives read-only access. Ctrl-C stops the dashboard, not the job.

    \b
    Example:
      EDGEFL_DASHBOARD_ADMIN_TOKEN=$(cat ~/.edgefl-admin) \\
        fedcoord dashboard --broker mqtt://pi-hub:1883 --job demo --listen 0.0.0.0:8080
    """
    from coordinator.dashboard.server import open_dashboard

    if signing_key is None:  # the job's own key, when the dashboard runs beside the coordinator
        from coordinator.job_keys import job_key_dir
        from coordinator.pki import SIGNING_KEY

        own = job_key_dir(opts["job"]) / SIGNING_KEY
        signing_key = str(own) if own.is_file() else None
    settings = replace(dashboard_settings(opts, listen, run_dir), signing_key=signing_key)
    broker = broker_config(opts)
    stop = threading.Event()
    with open_dashboard(settings, broker, opts["job"], prefix=opts["prefix"]) as server:
        click.echo(f"dashboard of job {opts['job']} on {server.url} (Ctrl-C to stop)")
        view = server.view
        started = time.monotonic()
        try:
            while not stop.wait(0.5):
                if (
                    view is not None
                    and not view.seen
                    and time.monotonic() - started > SILENT_NOTE_S
                ):
                    click.echo(
                        f"note: no message from job {opts['job']!r} on {broker.url} yet: "
                        "is the job running, and are --job and --prefix right?",
                        err=True,
                    )
                    view = None  # say it once
        except KeyboardInterrupt:
            click.echo("dashboard stopped")
