"""``fedcoord keys`` and ``fedcoord certs``: key material for signed models and TLS."""

from __future__ import annotations

import click

from coordinator.commands.job_options import option


@click.group()
def keys() -> None:
    """Ed25519 keys that sign the model and every round announcement."""


@keys.command("generate")
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False),
    help="Directory for signing.key (private, mode 0600) and signing.pub (public).",
)
@option(
    "job",
    help="Instead of --out: the job's own key, which fedcoord start uses by default "
    "($EDGEFL_KEYS_DIR/JOB/, ~/.config/edgefl/keys/JOB/); kept if it exists.",
)
@click.option("--force", is_flag=True, help="Overwrite existing key files.")
def keys_generate(out: str | None, job: str | None, force: bool) -> None:
    """Make a signing key pair.

    fedcoord start signs with the job's own key by default (made on its first run; make it
    beforehand with --job to install the public key on boards first). Keep signing.key on
    the coordinator; copy signing.pub to every board (fedge run --trust-key signing.pub, or
    give the base64 key printed here).
    """
    from coordinator.job_keys import job_key_dir, job_signing_key
    from coordinator.pki import generate_signing_key

    if (out is None) == (job is None):
        raise click.UsageError("give exactly one of --out DIR or --job NAME")
    if job is not None and not force:
        made, new = job_signing_key(job)
        click.echo(f"{'new' if new else 'existing'} key of job {job}")
    else:
        made = generate_signing_key(out or job_key_dir(job or ""), force=force)
    click.echo(f"private key  {made.private}  (keep it on the coordinator only)")
    click.echo(f"public key   {made.public}")
    click.echo(f"key id       {made.key_id}")
    click.echo(f"base64       {made.public_b64}")
    if job is None:
        click.echo(f"coordinator: fedcoord start --signing-key {made.private} ...")
    click.echo(f"boards:      fedge run --trust-key {made.public_b64} ...")


@keys.command("site")
@option("job", required=True, help="The job whose rounds the site announces.")
@click.option("--site", "site", required=True, help="The site aggregator's id (--site-id).")
@click.option(
    "--out",
    default=None,
    type=click.Path(file_okay=False),
    help="Directory for the site's key, its endorsement and job.pub. "
    "[default: $EDGEFL_KEYS_DIR/JOB/sites/SITE]",
)
@click.option(
    "--signing-key",
    default=None,
    type=click.Path(dir_okay=False),
    help="The job's private key (as fedcoord start --signing-key). Default: the job's own key.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing site key.")
def keys_site(job: str, site: str, out: str | None, signing_key: str | None, force: bool) -> None:
    """Make a site aggregator's key, endorsed by the job's key.

    A site aggregator announces rounds of its own to its boards; it signs them with this
    key and sends the job key's endorsement with them, so boards that trust the job's key
    (fedge run --trust-key) accept them. Run it where the job's private key is, then copy
    the directory to the site's machine: fedcoord site --site-key DIR.
    """
    from coordinator.job_keys import job_signing_key
    from coordinator.site_keys import make_site_key, site_key_dir
    from edge_client.signing import Signer

    if signing_key:
        job_signer = Signer.from_file(signing_key)
    else:
        made, _ = job_signing_key(job)
        job_signer = Signer.from_file(made.private)
    directory = out or site_key_dir(job, site)
    key = make_site_key(job_signer, job, site, directory, force=force)
    click.echo(f"site key     {key.directory / 'signing.key'}  (keep it on the site only)")
    click.echo(f"key id       {key.signer.key_id}, endorsed by job key {key.endorsed_by}")
    click.echo(
        f"site:        fedcoord site --site-id {site} --job {job} --site-key {key.directory}"
    )
    click.echo(f"boards:      fedge run --trust-key {job_signer.public_b64} ... (the job's key)")


@click.group()
def certs() -> None:
    """A TLS certificate authority and certificates for the broker and clients."""


@certs.command("generate")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False),
    help="Directory for ca.crt/ca.key (reused if present), server.crt/.key, client-NAME.crt/.key.",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="The broker's address as clients dial it (IP or DNS name); repeat for several.",
)
@click.option(
    "--client",
    "clients",
    multiple=True,
    help="Also make a client certificate for mutual TLS (e.g. a device id); repeatable.",
)
@click.option("--days", default=825, show_default=True, type=int, help="Certificate validity.")
@click.option("--force", is_flag=True, help="Overwrite existing certificates (not the CA).")
def certs_generate(
    out: str, hosts: tuple[str, ...], clients: tuple[str, ...], days: int, force: bool
) -> None:
    """Make a CA and a broker certificate (and client certificates).

    \b
    Mosquitto:  listener 8883
                cafile DIR/ca.crt
                certfile DIR/server.crt
                keyfile DIR/server.key
    Clients:    fedge run --broker mqtts://HOST:8883 --ca-file DIR/ca.crt ...
                fedcoord start --broker mqtts://HOST:8883 --ca-file DIR/ca.crt ...
    """
    from coordinator.pki import generate_certs

    made = generate_certs(out, hosts=hosts, clients=clients, days=days, force=force)
    click.echo(f"CA           {made.ca}" + ("  (new)" if made.created_ca else "  (existing)"))
    for path in made.written:
        click.echo(f"wrote        {path}")
