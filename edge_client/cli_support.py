"""What both command lines (``fedge`` and ``fedcoord``) share."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import click

from edge_client.errors import EdgeFLError


class ErrorHandlingGroup(click.Group):
    """Turns toolkit errors into one-line messages (exit 1) instead of tracebacks."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgeFLError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@dataclass(frozen=True)
class ConnectionOption:
    """A broker credential or TLS option, the same in ``fedge run`` and ``fedcoord``."""

    flag: str
    envvar: str  # read by fedge run (fedcoord reads EDGEFL_<FIELD>, as for every job option)
    help: str
    kind: str = "text"  # "text", "file" or "flag"

    @property
    def field(self) -> str:
        return self.flag[2:].replace("-", "_")


# Passwords come from a file or EDGEFL_MQTT_PASSWORD, never from a flag.
CONNECTION_OPTIONS = (
    ConnectionOption("--username", "EDGEFL_MQTT_USERNAME", "Broker user name."),
    ConnectionOption(
        "--password-file",
        "EDGEFL_MQTT_PASSWORD_FILE",
        "File holding the broker password (or set EDGEFL_MQTT_PASSWORD). Never given as a flag.",
        "file",
    ),
    ConnectionOption(
        "--ca-file", "EDGEFL_CA_FILE", "CA bundle for mqtts:// [default: system CAs].", "file"
    ),
    ConnectionOption(
        "--cert-file", "EDGEFL_CERT_FILE", "Client certificate for mutual TLS.", "file"
    ),
    ConnectionOption("--key-file", "EDGEFL_KEY_FILE", "Private key of --cert-file.", "file"),
    ConnectionOption(
        "--insecure",
        "EDGEFL_INSECURE",
        "Do not check the broker's host name against its certificate (test setups only).",
        "flag",
    ),
)
