"""``fedcoord report``: turn a run directory into a Markdown report with plots."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to write report.md and the PNGs. [default: RUN_DIR/report]",
)
@click.option(
    "--baseline",
    type=click.Path(dir_okay=False),
    default=None,
    help="baseline.json of a centralized run (fedcoord baseline) to plot alongside.",
)
def report(run_dir: str, out_dir: str | None, baseline: str | None) -> None:
    """Write RUN_DIR/report/report.md with PNG plots: accuracy and loss per round,
    per-device accuracy, bytes per round, and a grid of test predictions (blue when
    correct, red when wrong)."""
    from coordinator.report.build import build_report

    base = Path(baseline) if baseline else Path(run_dir) / "baseline.json"
    result = build_report(run_dir, out_dir, base if base.exists() else None)
    click.echo(f"wrote {result.path} with {len(result.figures)} figures")
