"""``UpdateMeta``: the ``meta`` object of an ``update`` envelope (docs/protocol.md section 4).

Written by a board (:func:`edge_client.local_training.update_meta`), a site aggregator and
the load generator; read by the coordinator. Every field is optional and left out of the
JSON while None, in this order; keys it does not know are kept in ``extra`` and written
after the known ones, so a newer sender's additions survive a round trip.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from edge_client.errors import ProtocolError
from edge_client.protocol.validation import (
    check_float,
    check_int,
    check_json_dict,
    check_sha256,
    check_str,
)


@dataclass(frozen=True)
class UpdateMeta:
    """What a device says about its update besides the weights and the sample count."""

    base_sha256: str | None = None  # weights_sha256 of the global weights trained from
    loss: float | None = None  # local training loss (last epoch)
    duration_s: float | None = None  # local training time
    interpreter: str | None = None  # "ai-edge-litert", "tflite-runtime", "site-aggregator", ...
    interpreter_version: str | None = None
    epochs: int | None = None
    lr: float | None = None
    accuracy: float | None = None  # local accuracy after training, if evaluated
    site_devices: int | None = None  # a site aggregator's devices aggregated
    site_selected: int | None = None  # ... and selected
    grant: int | None = None  # buffered rounds: the grant this update answers (announcement)
    extra: dict[str, Any] = field(default_factory=dict)  # keys not listed above

    def __post_init__(self) -> None:
        if self.base_sha256 is not None:
            check_sha256(self.base_sha256, "meta.base_sha256")
        for name in ("loss", "duration_s", "lr", "accuracy"):
            if getattr(self, name) is not None:  # kept as given: an int lr stays 1, not 1.0
                check_float(getattr(self, name), f"meta.{name}")
        for name in ("interpreter", "interpreter_version"):
            if getattr(self, name) is not None:
                check_str(getattr(self, name), f"meta.{name}", max_len=256)
        for name in ("epochs", "site_devices", "site_selected", "grant"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), f"meta.{name}")
        object.__setattr__(self, "extra", check_json_dict(self.extra, "meta"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written as the envelope header's ``meta``."""
        known = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "extra" and getattr(self, f.name) is not None
        }
        return known | {k: v for k, v in self.extra.items() if k not in known}

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any]) -> UpdateMeta:
        """Parse an update's ``meta``; a wrongly typed field is a ProtocolError naming it."""
        if not isinstance(meta, Mapping):
            raise ProtocolError("update meta must be a JSON object")
        names = {f.name for f in fields(cls)} - {"extra"}
        known = {k: v for k, v in meta.items() if k in names and v is not None}
        return cls(**known, extra={k: v for k, v in meta.items() if k not in names})
