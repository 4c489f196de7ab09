"""``fedcoord loadgen``: thousands of virtual devices against a running job."""

from __future__ import annotations

import click


@click.command()
@click.option("--broker", required=True, help="mqtt://HOST:PORT of the job's broker.")
@click.option("--job", default="demo", show_default=True, help="Job name.")
@click.option(
    "--devices", default=100, show_default=True, type=click.IntRange(1), help="Virtual devices."
)
@click.option(
    "--processes",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Processes to spread the devices over (one asyncio loop each).",
)
@click.option("--prefix", default="fl/v1", show_default=True, help="Topic prefix.")
@click.option(
    "--name", default="vd", show_default=True, help="Device ids are NAME-00000, NAME-00001, ..."
)
@click.option(
    "--first",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="Index of the first device.",
)
@click.option(
    "--samples",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Base sample count (device i claims SAMPLES + 10 * (i % 5)).",
)
@click.option(
    "--variants",
    default=4,
    show_default=True,
    type=click.IntRange(1),
    help="Distinct update bodies per round.",
)
@click.option(
    "--delay",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Each device waits uniform(0, DELAY) s before sending (simulated training).",
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
