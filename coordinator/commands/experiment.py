"""``fedcoord experiment``: run an experiment file (experiments/*.toml)."""

from __future__ import annotations

import json

import click


@click.command()
@click.argument("experiment_file", type=click.Path(dir_okay=False, exists=True))
@click.option(
    "--out",
    "out_root",
    default="runs/experiments",
    show_default=True,
    help="Parent directory of the experiment's run directories.",
)
@click.option("--variant", default=None, help="Run only this variant of the file.")
def experiment(experiment_file: str, out_root: str, variant: str | None) -> None:
    """Run every variant of EXPERIMENT_FILE as a simulated federated job, its centralized
    baseline (when the file asks for one) and its report; write OUT/NAME/summary.json.
    A variant whose run directory exists is resumed."""
    from coordinator.commands.start import format_round
    from coordinator.experiments import run_experiment

    root = run_experiment(
        experiment_file,
        out_root,
        only=variant,
        on_round=lambda m: click.echo(format_round(m, 0).replace("/0 ", " ")),
    )
    summary = json.loads((root / "summary.json").read_text())
    for v in summary["variants"]:
        cen = v["centralized_accuracy"]
        click.echo(
            f"{v['variant']:>16s}: federated {100 * v['federated_accuracy']:.2f} %"
            + (f", centralized {100 * cen:.2f} %" if cen is not None else "")
            + f" ({v['federated_wall_time_s'] + v['baseline_wall_time_s']:.0f} s); {v['report']}"
        )
