"""``fedcoord simulate``: a whole job with N simulated boards on this machine."""

from __future__ import annotations

import sys
from typing import Any

import click

from coordinator import config as job_config
from coordinator.commands.job_options import job_flags, job_options
from coordinator.commands.start import format_round
from edge_client.data import dataset_names


@click.command()
@click.option(
    "--devices",
    default=5,
    show_default=True,
    type=int,
    help="Simulated boards (separate processes).",
)
@click.option(
    "--dataset",
    default="fashion-mnist",
    show_default=True,
    type=click.Choice(dataset_names()),
    help="Data set: each device trains on its partition of the training split; the "
    "coordinator evaluates on the test split.",
)
@click.option(
    "--partition",
    default="iid",
    show_default=True,
    metavar="SCHEME",
    help="How the training split is divided: iid, dirichlet:ALPHA (label skew), shards:K "
    "(K label shards per device) or sequential (contiguous blocks in file order, the "
    "Fashion-MNIST paper's 5 x 12,000 split).",
)
@click.option(
    "--partition-seed", default=0, show_default=True, type=int, help="Seed of the partition."
)
@click.option(
    "--client-python",
    default=sys.executable,
    show_default="this Python",
    help="Python that runs the devices, e.g. .venv-board/bin/python for tflite-runtime boards.",
)
@click.option(
    "--device-runtime",
    default=None,
    type=click.Choice(["ai-edge-litert", "tflite-runtime", "tensorflow"]),
    help="TFLite runtime the devices use. Default: the first one installed.",
)
@click.option(
    "--device-threads",
    default=1,
    show_default=True,
    type=int,
    help="Interpreter threads per device.",
)
@click.option(
    "--fleet",
    "fleet_file",
    default=None,
    metavar="FILE|PRESET",
    help="A simulated fleet (TOML, or a preset: mixed-pi, homogeneous): boards with their "
    "own speed, availability, dropouts and network link, instead of --devices identical "
    "ones. See docs/fleet-simulation.md.",
)
@click.option(
    "--fleet-seed",
    default=None,
    type=int,
    help="Override the fleet file's seed (availability sessions and dropouts).",
)
@click.option(
    "--allow-oversubscribed",
    is_flag=True,
    help="Run a --fleet whose estimated CPU demand exceeds this machine's limit anyway "
    "(its wall times then measure this machine, not the fleet).",
)
@click.option("--resume", is_flag=True, help="Continue the job in --run-dir after a crash.")
@job_options()
@click.pass_context
def simulate(
    ctx: click.Context,
    devices: int,
    dataset: str,
    partition: str,
    partition_seed: int,
    client_python: str,
    device_runtime: str | None,
    device_threads: int,
    fleet_file: str | None,
    fleet_seed: int | None,
    allow_oversubscribed: bool,
    resume: bool,
    job_file: str | None,
    **kwargs: Any,
) -> None:
    """Run a federated job end to end on this machine: an embedded broker (unless --broker),
    the coordinator, and --devices edge clients as separate processes, each with its own
    partition of --dataset. The global model is evaluated on the test split every round.

    \b
    Example (the README's job):
      fedcoord simulate --devices 5 --rounds 20 --dataset fashion-mnist \\
          --partition sequential --run-dir runs/fashion-mnist

    \b
    A mixed fleet of slow, flaky Raspberry Pis behind throttled links:
      fedcoord simulate --fleet mixed-pi --rounds 20 --round-timeout 120
    """
    from coordinator.job_keys import with_signing_key
    from coordinator.simulation import FleetConfig
    from coordinator.simulation import simulate as run
    from edge_client.data import parse_scheme

    parse_scheme(partition)  # fail before starting anything
    flags = job_flags(kwargs)
    if flags.get("listen") is None and flags.get("broker") is None:
        flags["listen"] = "127.0.0.1:0"  # a free port: simulations never clash with a real broker
    if flags.get("job") is None:
        flags["job"] = dataset.replace("-", "")
    cfg = job_config.resolve(flags, job_file)
    fleet = FleetConfig(
        devices, dataset, partition, partition_seed, client_python, device_runtime, device_threads
    )
    cfg = with_signing_key(cfg)
    if fleet_file is not None:
        if ctx.get_parameter_source("devices") != click.core.ParameterSource.DEFAULT:
            raise click.UsageError("give either --devices or --fleet (the fleet sets the boards)")
        _simulate_fleet(cfg, fleet, fleet_file, fleet_seed, allow_oversubscribed, resume)
        return
    click.echo(
        f"simulating {devices} devices on {dataset} ({partition}), {cfg.rounds} {'versions (buffered)' if cfg.buffered else 'rounds'}, "
        f"strategy {cfg.strategy}; run directory {cfg.run_path}; "
        + ("UNSIGNED (--unsigned)" if cfg.unsigned else f"signed with {cfg.signing_key}")
    )
    state = run(
        cfg, fleet, resume=resume, on_round=lambda m: click.echo(format_round(m, cfg.rounds))
    )
    acc = state.history[-1].accuracy if state.history else None
    click.echo(
        f"done: {state.round} {'versions' if cfg.buffered else 'rounds'}"
        + (f", final accuracy {100 * acc:.2f} %" if acc is not None else "")
        + f"; metrics in {cfg.run_path / 'metrics.jsonl'}"
    )


def _simulate_fleet(
    cfg: job_config.JobConfig,
    fleet: Any,
    fleet_file: str,
    seed: int | None,
    allow_oversubscribed: bool,
    resume: bool,
) -> None:
    from coordinator.fleet.runner import simulate_fleet
    from coordinator.fleet.spec import load_fleet

    spec = load_fleet(fleet_file, seed=seed)
    click.echo(
        f"simulating {spec.describe()} on {fleet.dataset} ({fleet.partition}), "
        f"{cfg.rounds} {'versions (buffered)' if cfg.buffered else 'rounds'}, strategy {cfg.strategy}; run directory {cfg.run_path}"
    )

    def on_estimate(cal: Any, demand: Any) -> None:
        click.echo(
            f"calibration: {1000 * cal.train_step_s:.2f} ms per train step of {cal.batch_size} "
            f"on one core here; {demand.describe()}"
        )

    state, summary = simulate_fleet(
        cfg,
        fleet,
        spec,
        allow_oversubscribed=allow_oversubscribed,
        resume=resume,
        on_round=lambda m: click.echo(format_round(m, cfg.rounds)),
        on_estimate=on_estimate,
    )
    m = summary["measured"]
    acc = state.history[-1].accuracy if state.history else None
    click.echo(
        f"done: {state.round} {'versions' if cfg.buffered else 'rounds'}"
        + (f", final accuracy {100 * acc:.2f} %" if acc is not None else "")
        + f"; ran at {100 * m['utilisation']:.0f} % of {summary['cores']} cores "
        f"(estimated {100 * summary['estimate']['utilisation']:.0f} %); "
        f"fleet record in {cfg.run_path / 'fleet'}"
    )
