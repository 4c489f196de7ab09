"""``fedcoord baseline``: the centralized counterpart of a federated run."""

from __future__ import annotations

import click


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the data order.")
def baseline(run_dir: str, seed: int) -> None:
    """Train the run's model centrally on the pooled training data, through the same TFLite
    interpreter, for the same number of sample passes as each federated round; write
    RUN_DIR/baseline.json (used by `fedcoord report`)."""
    from coordinator.baseline import centralized_baseline

    out = centralized_baseline(run_dir, seed=seed)
    click.echo(
        f"centralized baseline: {100 * out['accuracy'][-1]:.2f} % after {out['samples'][-1]:,} sample passes"
    )
