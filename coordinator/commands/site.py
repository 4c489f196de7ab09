"""``fedcoord site``: aggregate one site's devices and send one partial sum upstream."""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import Any

import click

from coordinator.commands.job_options import (
    D,
    at_least,
    broker_config,
    connection_options,
    influence_bounds,
    influence_options,
    option,
)


@click.command()
@click.option(
    "--site-id", required=True, help="The site's id: its device id for the central coordinator."
)
@option("job", default=D.job, show_default=True, help="Job name (the same on both sides).")
@connection_options(
    broker_help="The site broker, where the site's devices connect (and, with the same "
    "credentials, the central broker given by --upstream).",
    broker_default="mqtt://127.0.0.1:1883",
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
@option(
    "prefix", default=D.prefix, help=f"Topic prefix of the site's devices. [default: {D.prefix}]"
)
@option(
    "fraction",
    default=D.fraction,
    help=f"Share of the site's online devices selected per round. [default: {D.fraction}]",
)
@option(
    "clients_per_round",
    default=D.clients_per_round,
    help="K random site devices per round (0: use --fraction). [default: 0]",
)
@option(
    "min_results",
    default=D.min_results,
    help="Device updates needed to send a partial sum; fewer: the site reports a failed round. "
    f"[default: {D.min_results}]",
)
@at_least(
    "--margin",
    5.0,
    0,
    "Seconds between the site's deadline and the central one (at most a quarter of the round).",
)
@option("max_update_norm", default=D.max_update_norm)
@influence_options()
@click.option(
    "--trust-key",
    envvar="EDGEFL_TRUST_KEY",
    default=None,
    metavar="PUBKEY",
    help="The job's Ed25519 public key, as fedge run --trust-key takes it (its signing.pub "
    "file, or the base64 fedcoord keys generate prints): obey and relay only the model, "
    "rounds and control messages signed with it. Default: job.pub of the site key.",
)
@click.option(
    "--site-key",
    envvar="EDGEFL_SITE_KEY",
    default=None,
    metavar="DIR",
    help="The site's key directory, made by fedcoord keys site where the job's key is: sign "
    "the rounds this site announces, so boards with --trust-key accept them. Default: "
    "$EDGEFL_KEYS_DIR/JOB/sites/SITE, made there if the job's key is on this machine.",
)
@click.option(
    "--unsigned",
    is_flag=True,
    help="An unsigned job (fedcoord start --unsigned): announce rounds unsigned and check "
    "nothing upstream. Boards behind the site must run without --trust-key. Logged.",
)
@option(
    "max_chunk",
    default=D.max_chunk,
    help=f"Largest MQTT payload on the site broker; the relayed model and weights are chunked "
    f"to it. [default: {D.max_chunk}]",
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
    upstream: str | None,
    upstream_prefix: str | None,
    prefix: str,
    fraction: float,
    clients_per_round: int,
    min_results: int,
    margin: float,
    max_update_norm: float,
    trust_key: str | None,
    site_key: str | None,
    unsigned: bool,
    max_chunk: int,
    bridge_to: str | None,
    **opts: Any,
) -> None:
    """Aggregate one site's devices: relay each central round that selects this site to
    the site's devices (own selection, a deadline --margin seconds earlier), fold their
    updates into a streaming FedAvg and send one update upstream whose weights are the
    site's average and whose sample count is the site's total. FedAvg over sites then
    equals FedAvg over all devices. The site bounds its devices' influence as fedcoord
    start does (same options). It obeys only what the job's key signed, and signs the rounds
    it announces with its own key, which the job's key endorsed (--site-key; made by
    fedcoord keys site), so the site's boards need only the job's key. See docs/scaling.md.

    \b
    Example (site broker on this machine, bridged to central.example:1883):
      fedcoord keys site --job demo --site site-a --out site-a-key   # where the job's key is
      fedcoord site --site-id site-a --job demo --bridge-config central.example:1883 \\
          > /etc/mosquitto/conf.d/edgefl-bridge.conf
      fedcoord site --site-id site-a --job demo --broker mqtt://127.0.0.1:1883 \\
          --site-key site-a-key
    """
    from coordinator.site import SiteAggregator, SiteConfig, bridge_config
    from edge_client.errors import ConfigError
    from edge_client.protocol import DeviceStatus, Topics
    from edge_client.transport import MqttTransport, Will

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
        bounds=influence_bounds(opts),
        trust_key=trust_key,
        max_chunk=max_chunk,
    )
    trust_key, key = _keys(job, site_id, site_key, trust_key, unsigned)
    cfg = dataclasses.replace(
        cfg, trust_key=trust_key, site_key=str(key.directory) if key else None
    )
    local = broker_config(opts)
    central = broker_config(opts, upstream) if upstream else local
    status_topic = Topics(job, cfg.upstream_prefix).status(site_id)
    will = Will(status_topic, DeviceStatus.last_will(site_id, time.time()).to_json())
    aggregator = SiteAggregator(
        cfg,
        MqttTransport(central, f"site-{job}-{site_id}-up", will=will),
        MqttTransport(local, f"site-{job}-{site_id}-down"),
        scanner=MqttTransport(local, f"site-{job}-{site_id}-retained"),
    )
    checked = (
        f"signed with key {aggregator.trust.verifier.key_id}"
        if aggregator.trust.verifier
        else "UNCHECKED (no --trust-key)"
    )
    signs = (
        f"signed with site key {key.signer.key_id} (endorsed by {key.endorsed_by})"
        if key
        else "UNSIGNED (--unsigned)"
    )
    click.echo(
        f"site {site_id}: devices on {local.url}, central job {job} via {central.url}, "
        f"upstream messages {checked}, its rounds {signs}"
    )
    signal.signal(signal.SIGTERM, lambda *_: aggregator.stop())  # systemd stop: leave cleanly
    aggregator.run()
    if aggregator.refused:
        raise ConfigError(aggregator.refused)
    click.echo(f"done: {len(aggregator.sent)} rounds sent upstream")


def _keys(
    job: str, site_id: str, site_key: str | None, trust_key: str | None, unsigned: bool
) -> tuple[str | None, Any]:
    """The job's key to check upstream against and the site's own key (SiteKey): given,
    the job's default, or none with --unsigned; a one-line error when there is none."""
    from coordinator.site_keys import resolve_site_key
    from edge_client.errors import ConfigError
    from edge_client.signing import Verifier

    if unsigned:
        if site_key or trust_key:
            raise click.UsageError("--unsigned contradicts --site-key and --trust-key")
        return None, None
    key = resolve_site_key(
        job, site_id, site_key, Verifier.from_spec(trust_key) if trust_key else None
    )
    if key is None:
        raise ConfigError(
            f"site {site_id} has no key to sign its rounds with: where job {job}'s key is, "
            f"run fedcoord keys site --job {job} --site {site_id} --out DIR and give DIR "
            "here (--site-key DIR), or run an unsigned job (--unsigned here too)"
        )
    return trust_key or (str(key.job_public) if key.job_public else None), key
