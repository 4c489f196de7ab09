"""``fedcoord monitor``: watch a job live from its MQTT topics, in a terminal or as JSON lines."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import threading
import time
from typing import Any, TextIO

import click

from coordinator.commands.watch_options import broker_config, broker_options
from edge_client.errors import EdgeFLError

REPLAY_QUIET_S = 0.5  # the retained replay is over when nothing arrived for this long
NO_JOB_NOTE_S = 5.0  # --json: say on stderr when the job stayed silent this long


class JsonLines:
    """Writes one JSON object per line, flushed, from the follower's thread."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.count = 0
        self.broken = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, record: dict[str, Any]) -> None:
        if self.broken.is_set():
            return
        line = json.dumps(record, separators=(",", ":"), default=str)
        with self._lock:
            try:
                self.out.write(line + "\n")
                self.out.flush()
                self.count += 1
            except (BrokenPipeError, ValueError):  # e.g. `| head -3` closed the pipe
                self.broken.set()


@click.command()
@broker_options()
@click.option("--json", "as_json", is_flag=True, help="Print every decoded message as a JSON line.")
@click.option(
    "--once",
    is_flag=True,
    help="Print the job's current (retained) state once and exit; exit 1 if the job is silent.",
)
@click.option(
    "--interval", type=float, default=1.0, show_default=True, help="Seconds between redraws."
)
@click.option(
    "--duration",
    type=float,
    default=0.0,
    show_default=True,
    help="Stop after this many seconds (0: until Ctrl-C).",
)
@click.option(
    "--wait",
    type=float,
    default=3.0,
    show_default=True,
    help="--once: seconds to wait for the retained state.",
)
def monitor(
    as_json: bool, once: bool, interval: float, duration: float, wait: float, **opts: Any
) -> None:
    """Watch a job live: round and deadline, devices (presence, selected, replied, samples,
    last loss and accuracy, interpreter), accuracy and loss per round, bytes per round.

    Joins a running job at any time: the broker replays the retained state (round, statuses,
    latest metrics, model, global weights). Ctrl-C quits.

    \b
    Examples:
      fedcoord monitor --broker mqtt://pi-hub:1883 --job demo
      fedcoord monitor --job demo --json | jq -c 'select(.kind == "metrics") | .message'
    """
    from coordinator.monitoring.follower import JobFollower
    from coordinator.monitoring.render import CLEAR, render
    from coordinator.monitoring.view import JobView

    if interval <= 0:
        raise click.BadParameter("must be positive", param_hint="--interval")
    root = logging.getLogger()
    if root.getEffectiveLevel() == logging.INFO:  # no -v: keep the screen (or stdout) clean
        root.setLevel(logging.WARNING)
    broker = broker_config(opts)
    view = JobView(opts["job"], prefix=opts["prefix"], broker=broker.url)
    printer = JsonLines(sys.stdout) if as_json else None
    follower = JobFollower(view, broker, on_message=printer)
    follower.start()
    try:
        if once:
            follower.wait_idle(REPLAY_QUIET_S, timeout=wait)
            if not view.seen:
                raise EdgeFLError(_silent(opts, broker.url, wait))
            if printer is None:
                click.echo(render(view.snapshot(), _width()), nl=False)
            return
        _loop(view, printer, interval, duration, render, CLEAR, opts, broker.url)
    except KeyboardInterrupt:
        pass
    finally:
        follower.stop()


def _loop(view, printer, interval, duration, render, clear, opts, url) -> None:  # noqa: ANN001
    """Redraw (terminal), print on change (pipe), or just let JSON lines flow."""
    tty = sys.stdout.isatty()
    end = time.monotonic() + duration if duration > 0 else float("inf")
    start, noted, shown = time.monotonic(), False, -1
    while time.monotonic() < end:
        if printer is not None:
            if printer.broken.is_set():
                return
            if not noted and not view.seen and time.monotonic() - start > NO_JOB_NOTE_S:
                click.echo(f"note: {_silent(opts, url, NO_JOB_NOTE_S)}", err=True)
                noted = True
        elif tty:
            sys.stdout.write(clear + render(view.snapshot(), _width()))
            sys.stdout.flush()
        elif view.version != shown:
            shown = view.version
            click.echo(render(view.snapshot(), _width()) + "-" * 40)
        time.sleep(min(interval, max(0.0, end - time.monotonic())))


def _silent(opts: dict[str, Any], url: str, seconds: float) -> str:
    return (
        f"no message from job {opts['job']!r} under {opts['prefix']}/{opts['job']}/ on {url} "
        f"within {seconds:g} s: is the job running, and are --job and --prefix right?"
    )


def _width() -> int:
    return max(60, shutil.get_terminal_size((120, 40)).columns)
