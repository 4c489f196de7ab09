"""The JSON manifest that travels beside every exported ``model.tflite``.

It tells a board everything it needs without TensorFlow: input shape and
normalisation, classes, the static train batch size, the optimizer, and the weight
tensors in signature order (exactly what goes over MQTT).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_client.errors import ModelError

FORMAT_VERSION = 1
SIGNATURES = ("train", "infer", "evaluate", "get_weights", "set_weights")


@dataclass(frozen=True)
class WeightSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Manifest:
    architecture: str
    input_shape: tuple[int, ...]
    classes: int
    label_names: tuple[str, ...]
    batch_size: int  # static batch size of the train signature
    optimizer: str
    hyperparameters: Mapping[str, float]
    weights: tuple[WeightSpec, ...]
    sha256: str  # of the .tflite file
    tflite_bytes: int
    ops: tuple[str, ...]
    normalization: Mapping[str, Any] = field(
        default_factory=lambda: {"scale": 1 / 255, "mean": [0.0], "std": [1.0]}
    )
    input_dtype: str = "float32"
    signatures: tuple[str, ...] = SIGNATURES
    format_version: int = FORMAT_VERSION
    checks: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)  # base model, seed, tool version

    @property
    def parameters(self) -> int:
        return sum(w.size for w in self.weights)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parameters"] = self.parameters
        d["weights"] = [
            {"name": w.name, "shape": list(w.shape), "dtype": w.dtype} for w in self.weights
        ]
        d["input_shape"] = list(self.input_shape)
        for key in ("label_names", "ops", "signatures"):
            d[key] = list(d[key])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        try:
            version = int(d["format_version"])
            if version != FORMAT_VERSION:
                raise ModelError(
                    f"manifest format version {version} is not supported (expected {FORMAT_VERSION}): "
                    "re-export the model with this version of the toolkit"
                )
            weights = tuple(
                WeightSpec(
                    str(w["name"]),
                    tuple(int(s) for s in w["shape"]),
                    str(w.get("dtype", "float32")),
                )
                for w in d["weights"]
            )
            m = cls(
                architecture=str(d["architecture"]),
                input_shape=tuple(int(s) for s in d["input_shape"]),
                classes=int(d["classes"]),
                label_names=tuple(str(s) for s in d["label_names"]),
                batch_size=int(d["batch_size"]),
                optimizer=str(d["optimizer"]),
                hyperparameters={str(k): float(v) for k, v in d["hyperparameters"].items()},
                weights=weights,
                sha256=str(d["sha256"]),
                tflite_bytes=int(d["tflite_bytes"]),
                ops=tuple(str(o) for o in d["ops"]),
                normalization=dict(
                    d.get("normalization", {"scale": 1 / 255, "mean": [0.0], "std": [1.0]})
                ),
                input_dtype=str(d.get("input_dtype", "float32")),
                signatures=tuple(str(s) for s in d.get("signatures", SIGNATURES)),
                format_version=version,
                checks=dict(d.get("checks", {})),
                extra=dict(d.get("extra", {})),
            )
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelError(f"invalid manifest: missing or malformed field ({exc!s})") from exc
        if len(m.label_names) != m.classes:
            raise ModelError(
                f"invalid manifest: {len(m.label_names)} label names for {m.classes} classes"
            )
        if m.batch_size < 1 or m.classes < 2 or not m.weights:
            raise ModelError("invalid manifest: batch_size, classes or weights out of range")
        return m

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError as exc:
            raise ModelError(
                f"manifest not found: {p} (export the model with `fedcoord export`)"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot read manifest {p}: {exc}") from exc
        if not isinstance(d, dict):
            raise ModelError(f"invalid manifest {p}: expected a JSON object")
        return cls.from_dict(d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    def verify_model_bytes(self, tflite: bytes) -> None:
        """Raise ModelError unless ``tflite`` is the file this manifest describes."""
        digest = hashlib.sha256(tflite).hexdigest()
        if digest != self.sha256:
            raise ModelError(
                f"model sha256 {digest[:12]}... does not match the manifest ({self.sha256[:12]}...): "
                "the .tflite file and manifest.json come from different exports or the file is corrupt"
            )
