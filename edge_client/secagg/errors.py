"""Errors of secure aggregation (all ``ProtocolError``: they come from what others sent)."""

from __future__ import annotations

from typing import Any

from edge_client.errors import ConfigError, ProtocolError


class SecAggError(ProtocolError):
    """A secure-aggregation step cannot go on: bad shares, ciphertexts or masked vectors."""


class TooFewSurvivorsError(SecAggError):
    """Fewer than the threshold t of a device's neighbours are left to reconstruct its secret."""


def available() -> bool:
    """Whether this Python can run secure aggregation (the ``cryptography`` package)."""
    import importlib.util

    return importlib.util.find_spec("cryptography") is not None


def crypto(module: str) -> Any:
    """Import ``cryptography.hazmat.primitives.<module>``, or say clearly how to get it.

    Like ``edge_client.signing``: ``cryptography`` is optional on boards, imported only when
    secure aggregation is used.
    """
    import importlib

    try:
        return importlib.import_module(f"cryptography.hazmat.primitives.{module}")
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "secure aggregation needs the 'cryptography' package: pip install cryptography "
            "(or the edgefl[board] / edgefl[coordinator] extra)"
        ) from exc
