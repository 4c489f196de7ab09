"""The one root exception of the toolkit and its few families.

Every expected failure (bad input, missing file, wrong flag, malformed message)
raises a subclass of :class:`EdgeFLError`. The command lines turn it into a
one-line message and exit code 1; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgeFLError(Exception):
    """Root of every error the toolkit raises on purpose."""


class RuntimeUnavailableError(EdgeFLError):
    """No TFLite interpreter package can be imported."""


class ModelError(EdgeFLError):
    """A model file, manifest or signature call is invalid."""


class DataError(EdgeFLError):
    """Local training or test data is missing, unreadable or inconsistent."""


class ProtocolError(EdgeFLError):
    """An MQTT payload or topic does not follow the wire protocol."""


class ConfigError(EdgeFLError):
    """A configuration value, flag or file is invalid."""
