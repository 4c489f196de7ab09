"""``fedcoord site``: aggregate one site's devices and send one partial sum upstream."""

from __future__ import annotations

import signal
import time

import click


@click.command()
@click.option(
    "--site-id", required=True, help="The site's id: its device id for the central coordinator."
)
@click.option("--job", default="demo", show_default=True, help="Job name (the same on both sides).")
@click.option(
    "--broker",
    default="mqtt://127.0.0.1:1883",
    show_default=True,
    help="The site broker, where the site's devices connect.",
)
@click.option(
    "--upstream",
    default=None,
    help="The central broker. Default: the site broker, bridged to the central one (see --bridge-config).",
)
@click.option(
    "--upstream-prefix",
    default=None,
    help="Topic prefix of the central job's topics as seen upstream. [default: central/fl/v1 through a bridge, fl/v1 with --upstream]",
)
@click.option(
    "--prefix", default="fl/v1", show_default=True, help="Topic prefix of the site's devices."
)
@click.option(
    "--fraction",
    default=1.0,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True),
    help="Share of the site's online devices selected per round.",
)
@click.option(
    "--clients-per-round",
    default=0,
    show_default=True,
    type=click.IntRange(0),
    help="K random site devices per round (0: use --fraction).",
)
@click.option(
    "--min-results",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Device updates needed to send a partial sum; fewer: the site reports a failed round.",
)
@click.option(
    "--margin",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Seconds between the site's deadline and the central one (at most a quarter of the round).",
)
@click.option(
    "--max-update-norm",
    default=10.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Reject a device update that changes the weights by more than this x the global norm (0: off).",
)
@click.option(
    "--bridge-config",
    "bridge_to",
    default=None,
    metavar="HOST:PORT",
    help="Print the Mosquitto bridge snippet for this site to the central broker at HOST:PORT, and exit.",
)
def site(
    site_id: str,
    job: str,
    broker: str,
    upstream: str | None,
    upstream_prefix: str | None,
    prefix: str,
    fraction: float,
    clients_per_round: int,
    min_results: int,
    margin: float,
    max_update_norm: float,
    bridge_to: str | None,
) -> None:
    """Aggregate one site's devices: relay each central round that selects this site to
    the site's devices (own selection, a deadline --margin seconds earlier), fold their
    updates into a streaming FedAvg and send one update upstream whose weights are the
    site's average and whose sample count is the site's total. FedAvg over sites then
    equals FedAvg over all devices. See docs/scaling.md.

    \b
    Example (site broker on this machine, bridged to central.example:1883):
      fedcoord site --site-id site-a --job demo --bridge-config central.example:1883 \\
          > /etc/mosquitto/conf.d/edgefl-bridge.conf
      fedcoord site --site-id site-a --job demo --broker mqtt://127.0.0.1:1883
    """
    from coordinator.site import SiteAggregator, SiteConfig, bridge_config
    from edge_client.protocol import DeviceStatus, Topics
    from edge_client.transport import BrokerConfig, MqttTransport, Will

    if bridge_to:
        click.echo(bridge_config(site_id, job, bridge_to), nl=False)
        return
    cfg = SiteConfig(
        site_id=site_id,
        job=job,
        prefix=prefix,
        upstream_prefix=upstream_prefix or ("fl/v1" if upstream else "central/fl/v1"),
        fraction=fraction,
        clients_per_round=clients_per_round,
        min_results=min_results,
        margin_s=margin,
        max_update_norm=max_update_norm,
    )
    local = BrokerConfig.from_url(broker)
    central = BrokerConfig.from_url(upstream) if upstream else local
    status_topic = Topics(job, cfg.upstream_prefix).status(site_id)
    will = Will(status_topic, DeviceStatus.last_will(site_id, time.time()).to_json())
    aggregator = SiteAggregator(
        cfg,
        MqttTransport(central, f"site-{job}-{site_id}-up", will=will),
        MqttTransport(local, f"site-{job}-{site_id}-down"),
    )
    click.echo(f"site {site_id}: devices on {local.url}, central job {job} via {central.url}")
    signal.signal(signal.SIGTERM, lambda *_: aggregator.stop())  # systemd stop: leave cleanly
    aggregator.run()
    click.echo(f"done: {len(aggregator.sent)} rounds sent upstream")
