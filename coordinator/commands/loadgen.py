"""``fedcoord loadgen``: thousands of virtual devices against a running job."""

from __future__ import annotations

import click

from coordinator.commands.job_options import D, at_least, option


@click.command()
@option(
    "broker",
    required=True,
    help="mqtt://HOST:PORT of the job's broker (plain MQTT: the virtual devices use no TLS "
    "or credentials).",
)
@option("job", default=D.job)
@at_least("--devices", 100, 1, "Virtual devices.")
@at_least("--processes", 1, 1, "Processes to spread the devices over (one asyncio loop each).")
@option("prefix", default=D.prefix)
@click.option(
    "--name", default="vd", show_default=True, help="Device ids are NAME-00000, NAME-00001, ..."
)
@at_least("--first", 0, 0, "Index of the first device.")
@at_least("--samples", 100, 1, "Base sample count (device i claims SAMPLES + 10 * (i % 5)).")
@at_least("--variants", 4, 1, "Distinct update bodies per round.")
@at_least(
    "--delay", 0.0, 0, "Each device waits uniform(0, DELAY) s before sending (simulated training)."
)
@click.option(
    "--no-status", is_flag=True, help="Do not publish training/idle statuses around rounds."
)
def loadgen(
    broker: str,
    job: str,
    devices: int,
    processes: int,
    prefix: str,
    name: str,
    first: int,
    samples: int,
    variants: int,
    delay: float,
    no_status: bool,
) -> None:
    """Connect DEVICES virtual devices (one MQTT connection each, with a Last Will and a
    retained status) that answer every round they are selected for with a valid,
    precomputed update, until the job stops (or Ctrl-C).

    Nothing is trained: device i sends the global weights + (i % VARIANTS + 1) * 0.001 with
    its own id and sample count, so the coordinator's validation, aggregation and memory are
    exercised at fleet scale. Raise the broker's limits first (docs/benchmarks.md, "Scale").

    \b
    Example:
      fedcoord start --broker mqtt://127.0.0.1:1883 --job scale --model-dir m --min-devices 1000 &
      fedcoord loadgen --broker mqtt://127.0.0.1:1883 --job scale --devices 1000 --processes 2
    """
    from coordinator.loadgen import LoadConfig, Plan, run_load
    from edge_client.transport import BrokerConfig

    where = BrokerConfig.from_url(broker)
    cfg = LoadConfig(
        host=where.host,
        port=where.port,
        job=job,
        devices=devices,
        first=first,
        prefix=prefix,
        plan=Plan(name=name, samples=samples, variants=variants),
        delay_s=delay,
        status=not no_status,
    )
    click.echo(f"{devices} virtual devices for job {job} on {where.url} ({processes} processes)")
    stats = run_load(cfg, processes)
    click.echo(
        f"done: {stats.connected} devices connected, {stats.updates} updates sent "
        f"({stats.bytes_up / 1e6:.1f} MB) over rounds {sorted(stats.rounds)}"
    )
