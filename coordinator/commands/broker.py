"""``fedcoord broker``: the embedded MQTT broker on its own."""

from __future__ import annotations

import asyncio

import click


@click.command()
@click.option(
    "--listen",
    default="127.0.0.1:1883",
    show_default=True,
    help="HOST:PORT to listen on; 0.0.0.0:1883 accepts boards on the LAN.",
)
def broker(listen: str) -> None:
    """Run the embedded MQTT 3.1.1 broker in the foreground (Ctrl-C stops it).

    For production fleets prefer Mosquitto or EMQX with TLS and ACLs."""
    from coordinator.broker import EmbeddedBroker
    from coordinator.job import parse_listen

    host, port = parse_listen(listen)
    b = EmbeddedBroker(host, port)
    click.echo(f"embedded broker on mqtt://{host}:{port} (Ctrl-C to stop)")
    asyncio.run(b.serve_forever())
