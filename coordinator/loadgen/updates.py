"""The updates virtual devices send: a deterministic plan, built once per round.

Device ``i`` sends the global weights plus ``(variant + 1) * STEP`` on every floating
tensor, ``variant = i % variants``, claiming ``samples(i)`` training samples. So the FedAvg
of any set of virtual devices is known in advance (:func:`expected_average`), and each
round costs ``variants`` encodings, not one per device: a device's envelope is the shared
body of its variant behind its own header (sender, samples, ``meta``), written by the
protocol package's :func:`envelope_bytes` and :func:`split` like any other envelope.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_client.protocol import (
    DEFAULT_MAX_CHUNK,
    UpdateMeta,
    decode,
    encode_weights,
    envelope_bytes,
    split,
)

STEP = 1e-3  # added per variant: a change far below the coordinator's norm limit


@dataclass(frozen=True)
class Plan:
    """Who sends what: ids, sample counts and variants of the virtual devices."""

    name: str = "vd"  # device ids are f"{name}-{index:05d}"
    samples: int = 100  # device i claims samples + 10 * (i % 5)
    variants: int = 4

    def device_id(self, index: int) -> str:
        return f"{self.name}-{index:05d}"

    def samples_of(self, index: int) -> int:
        return self.samples + 10 * (index % 5)

    def variant_of(self, index: int) -> int:
        return index % self.variants

    def index_of(self, device: str) -> int:
        return int(device.rsplit("-", 1)[1])


def variant_weights(
    global_weights: Mapping[str, np.ndarray], variant: int
) -> dict[str, np.ndarray]:
    """Global weights + (variant + 1) * STEP on floating tensors; integer tensors unchanged."""
    shift = np.float32((variant + 1) * STEP)
    return {
        k: (v + shift).astype(v.dtype) if v.dtype.kind == "f" else v.copy()
        for k, v in global_weights.items()
    }


def expected_average(
    global_weights: Mapping[str, np.ndarray],
    plan: Plan,
    devices: Iterable[str],
    encoding: str = "float32",
) -> dict[str, np.ndarray]:
    """The FedAvg of what ``devices`` send for these global weights (float64 math).

    With a lossy ``encoding`` devices start from the decoded global weights and their
    updates are decoded too, exactly as on the wire."""
    base = _wire(global_weights, encoding)
    variants = [_wire(variant_weights(base, v), encoding) for v in range(plan.variants)]
    sums = {k: np.zeros(np.shape(v), np.float64) for k, v in base.items()}
    total = 0
    for device in devices:
        index = plan.index_of(device)
        n = plan.samples_of(index)
        total += n
        for k, v in variants[plan.variant_of(index)].items():
            sums[k] += n * v.astype(np.float64)
    return {k: (v / total).astype(np.asarray(base[k]).dtype) for k, v in sums.items()}


def _wire(weights: Mapping[str, np.ndarray], encoding: str) -> dict[str, np.ndarray]:
    """``weights`` as a receiver decodes them after encoding them with ``encoding``."""
    payload = encode_weights(
        weights, kind="global", job="loadgen", round=1, sender="loadgen", encoding=encoding
    )
    return decode(payload).weights()


class UpdateFactory:
    """Update envelopes of one round for any virtual device, from ``variants`` shared bodies."""

    def __init__(
        self,
        global_weights: Mapping[str, np.ndarray],
        plan: Plan,
        *,
        job: str,
        round_: int,
        base_sha256: str,
        encoding: str = "float32",
        max_chunk: int = DEFAULT_MAX_CHUNK,
    ) -> None:
        self.plan, self.base_sha256, self.max_chunk = plan, base_sha256, max_chunk
        self._meta = UpdateMeta(
            base_sha256=base_sha256, loss=1.0, duration_s=0.0, interpreter="loadgen", accuracy=0.5
        ).to_dict()
        self._templates: list[tuple[dict[str, Any], bytes]] = []
        for variant in range(plan.variants):
            payload = encode_weights(
                variant_weights(global_weights, variant),
                kind="update",
                job=job,
                round=round_,
                sender=plan.device_id(0),
                meta=self._meta,
                encoding=encoding,
            )
            envelope = decode(payload)  # validated once; devices differ only in the header
            self._templates.append((envelope.header(), envelope.body))

    def envelope(self, index: int) -> bytes:
        """Device ``index``'s update envelope, as it would encode it itself."""
        header, body = self._templates[self.plan.variant_of(index)]
        own = {
            **header,
            "sender": self.plan.device_id(index),
            "samples": self.plan.samples_of(index),
        }
        return envelope_bytes(own, body)

    def chunks(self, index: int) -> list[bytes]:
        """The chunks of device ``index``'s envelope."""
        return split(self.envelope(index), self.max_chunk)
