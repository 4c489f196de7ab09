"""What both command lines (``fedge`` and ``fedcoord``) share."""

from __future__ import annotations

import sys
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
