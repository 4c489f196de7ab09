"""``fedcoord start``: run a federated job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from coordinator import config as job_config
from coordinator.commands.job_options import job_flags, job_options
from coordinator.commands.watch_options import dashboard_options, dashboard_settings
from edge_client.errors import ConfigError
from edge_client.protocol import RoundMetrics


def format_round(m: RoundMetrics, rounds: int) -> str:
    acc = f"{100 * m.accuracy:6.2f} %" if m.accuracy is not None else "     -  "
    loss = f"{m.loss:.4f}" if m.loss is not None else "   -  "
    if m.staleness is not None:  # a buffered job's global version
        mean, top = m.staleness
        return (
            f"version {m.round:3d}/{rounds}  updates {len(m.buffer)}  staleness {mean:.1f}/{top}"
            f"  accuracy {acc}  loss {loss}  up {m.bytes_up / 1e6:6.2f} MB"
            f"  down {m.bytes_down / 1e6:6.2f} MB  {m.duration_s:6.1f} s"
            + (f"  wasted {m.wasted}" if m.wasted else "")
        )
    return (
        f"round {m.round:3d}/{rounds}  devices {len(m.participants)}/{len(m.selected)}"
        f"  accuracy {acc}  loss {loss}  up {m.bytes_up / 1e6:6.2f} MB"
        f"  down {m.bytes_down / 1e6:6.2f} MB  {m.duration_s:6.1f} s"
        + (f"  failed: {', '.join(m.failed)}" if m.failed else "")
    )


@click.command()
@job_options()
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Continue the job in this run directory after a crash or stop (its config.json is reused).",
)
@dashboard_options()
def start(
    job_file: str | None, resume_dir: str | None, dashboard_listen: str | None, **kwargs: Any
) -> None:
    """Run a federated job: publish the model, then announce, collect, aggregate and
    evaluate rounds until --rounds are done.

    Without --broker an embedded MQTT broker runs inside the coordinator. Boards join with
    `fedge run --broker mqtt://THIS_HOST:1883 --job JOB ...`.

    \b
    Example:
      fedcoord start --job demo --rounds 20 --min-devices 5 --test-data fashion-mnist \\
          --listen 0.0.0.0:1883
    """
    from coordinator.job import run_job
    from coordinator.job_keys import with_signing_key

    flags = job_flags(kwargs)
    if resume_dir:
        saved = Path(resume_dir) / "config.json"
        if not saved.exists():
            raise ConfigError(
                f"cannot resume: {saved} not found (is {resume_dir} a run directory?)"
            )
        base = json.loads(saved.read_text())
        cfg = job_config.resolve(
            {**base, **{k: v for k, v in flags.items() if v is not None}, "run_dir": resume_dir},
            job_file,
        )
    else:
        cfg = job_config.resolve(flags, job_file)
    cfg = with_signing_key(cfg)
    click.echo(
        f"job {cfg.job}: {cfg.rounds} {'versions (buffered)' if cfg.buffered else 'rounds'}, strategy {cfg.strategy}, run directory {cfg.run_path}, "
        + ("UNSIGNED (--unsigned)" if cfg.unsigned else f"signed with {cfg.signing_key}")
    )
    state = run_job(
        cfg,
        resume=bool(resume_dir),
        on_round=lambda m: click.echo(format_round(m, cfg.rounds)),
        dashboard=dashboard_settings(kwargs, dashboard_listen),
    )
    acc = state.history[-1].accuracy if state.history else None
    click.echo(
        f"done: {state.round} {'versions' if cfg.buffered else 'rounds'}"
        + (f", accuracy {100 * acc:.2f} %" if acc is not None else "")
        + f"; metrics in {cfg.run_path / 'metrics.jsonl'}, final models in {cfg.run_path / 'final'}"
    )
