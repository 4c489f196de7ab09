"""Errors of the ``devices`` package, all one line and all :class:`EdgeFLError`."""

from __future__ import annotations

from edge_client.errors import ConfigError, EdgeFLError


class DeviceError(EdgeFLError):
    """Something about a board went wrong: unreachable, refused, failed install."""


class InventoryError(ConfigError):
    """The inventory file is missing, malformed or names an unknown profile."""


class SshError(DeviceError):
    """SSH could not reach or log into a board."""


class FlashError(DeviceError):
    """Installing the client on a board failed; the previous install is left as it was."""
