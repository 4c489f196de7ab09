"""Typed wrapper over the signatures of an exported trainable .tflite model.

Everything on a board goes through this class: train on a batch, predict,
evaluate, and read or write the weights as numpy arrays keyed by name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_client.errors import ModelError
from edge_client.manifest import Manifest
from edge_client.runtime import Runtime, load_runtime

log = logging.getLogger(__name__)

EVAL_BATCH = 256  # fixed evaluation/inference batch, so the interpreter rarely resizes


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean cross-entropy
    accuracy: float
    samples: int


class TrainableModel:
    """One interpreter instance over one exported model."""

    def __init__(
        self,
        tflite: bytes,
        manifest: Manifest,
        *,
        runtime: Runtime | str | None = None,
        num_threads: int | None = None,
    ) -> None:
        manifest.verify_model_bytes(tflite)
        self.manifest = manifest
        self.runtime = runtime if isinstance(runtime, Runtime) else load_runtime(runtime)
        try:
            self._interpreter = self.runtime.make(tflite, num_threads=num_threads)
            signatures = self._interpreter.get_signature_list()
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"the .tflite model cannot be loaded ({exc}); re-export it") from exc
        missing = [s for s in manifest.signatures if s not in signatures]
        if missing:
            raise ModelError(
                f"the model lacks signatures {missing}: it was not exported by fedcoord export"
            )
        self._runners = {
            name: self._interpreter.get_signature_runner(name) for name in manifest.signatures
        }
        self._check_weights_match_manifest(signatures)
        self._input_shape = tuple(manifest.input_shape)

    @classmethod
    def from_dir(cls, directory: str | Path, **kwargs: Any) -> TrainableModel:
        """Load ``DIR/model.tflite`` and ``DIR/manifest.json``."""
        d = Path(directory)
        return cls.from_files(d / "model.tflite", d / "manifest.json", **kwargs)

    @classmethod
    def from_files(
        cls, model_path: str | Path, manifest_path: str | Path, **kwargs: Any
    ) -> TrainableModel:
        manifest = Manifest.load(manifest_path)
        try:
            tflite = Path(model_path).read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read model {model_path}: {exc.strerror or exc}") from exc
        return cls(tflite, manifest, **kwargs)

    # -- weights ----------------------------------------------------------------------
    @property
    def weight_names(self) -> list[str]:
        return [w.name for w in self.manifest.weights]

    def get_weights(self) -> dict[str, np.ndarray]:
        out = self._runners["get_weights"]()
        return {name: np.array(out[name], dtype=np.float32) for name in self.weight_names}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Set every weight (and the FedProx anchor; resets optimizer slots)."""
        expected = {w.name: w for w in self.manifest.weights}
        missing = sorted(set(expected) - set(weights))
        extra = sorted(set(weights) - set(expected))
        if missing or extra:
            raise ModelError(f"set_weights: missing weights {missing}, unexpected weights {extra}")
        feeds: dict[str, np.ndarray] = {}
        for name, spec in expected.items():
            arr = np.asarray(weights[name])
            if arr.shape != spec.shape:
                raise ModelError(
                    f"set_weights: {name} has shape {arr.shape}, the model expects {spec.shape}"
                )
            if not np.issubdtype(arr.dtype, np.floating):
                raise ModelError(f"set_weights: {name} has dtype {arr.dtype}, expected float32")
            feeds[name] = np.ascontiguousarray(arr, dtype=np.float32)
        self._runners["set_weights"](**feeds)

    # -- training and inference ---------------------------------------------------------
    def train_batch(self, x: np.ndarray, y: np.ndarray, lr: float) -> float:
        """One optimizer step on exactly ``manifest.batch_size`` samples; returns the loss."""
        b = self.manifest.batch_size
        x = self._check_x(x, "train")
        if x.shape[0] != b:
            raise ModelError(
                f"train: batch has {x.shape[0]} samples, the model was exported for {b}"
            )
        y = self._check_y(y, b, "train")
        out = self._runners["train"](x=x, y=y, lr=np.array([lr], np.float32))
        return float(np.asarray(out["loss"]).reshape(-1)[0])

    def predict(self, x: np.ndarray, batch_size: int = EVAL_BATCH) -> np.ndarray:
        """Class probabilities (N, classes) for normalised inputs x (N, *input_shape)."""
        x = self._check_x(x, "infer")
        parts = [
            np.asarray(self._runners["infer"](x=x[i : i + batch_size])["probabilities"])
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.manifest.classes), np.float32)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = EVAL_BATCH) -> EvalResult:
        """Mean loss and accuracy over the whole set, without TensorFlow."""
        x = self._check_x(x, "evaluate")
        y = self._check_y(y, len(x), "evaluate")
        if len(x) == 0:
            raise ModelError("evaluate: no samples")
        loss_sum, correct = 0.0, 0
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size], y[i : i + batch_size]
            out = self._runners["evaluate"](x=xb, y=yb)
            loss_sum += float(np.asarray(out["loss"]).reshape(-1)[0]) * len(xb)
            correct += int(np.asarray(out["correct"]).reshape(-1)[0])
        return EvalResult(loss_sum / len(x), correct / len(x), len(x))

    # -- validation -----------------------------------------------------------------------
    def _check_x(self, x: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != len(self._input_shape) + 1 or tuple(x.shape[1:]) != self._input_shape:
            raise ModelError(
                f"{what}: inputs have shape {x.shape}, expected (N, {', '.join(map(str, self._input_shape))})"
            )
        if not np.issubdtype(x.dtype, np.floating):
            raise ModelError(
                f"{what}: inputs have dtype {x.dtype}, expected float32 normalised as the manifest says "
                "(edge_client.data.normalize)"
            )
        return np.ascontiguousarray(x, dtype=np.float32)

    def _check_y(self, y: np.ndarray, n: int, what: str) -> np.ndarray:
        y = np.asarray(y)
        if y.shape != (n,):
            raise ModelError(f"{what}: labels have shape {y.shape}, expected ({n},)")
        if not np.issubdtype(y.dtype, np.integer):
            raise ModelError(f"{what}: labels have dtype {y.dtype}, expected integers")
        if n and (y.min() < 0 or y.max() >= self.manifest.classes):
            bad = int(y[(y < 0) | (y >= self.manifest.classes)][0])
            raise ModelError(f"{what}: label {bad} is out of range [0, {self.manifest.classes})")
        return np.ascontiguousarray(y, dtype=np.int32)

    def _check_weights_match_manifest(self, signatures: Mapping[str, Any]) -> None:
        names = set(signatures["get_weights"]["outputs"])
        if names != set(self.weight_names):
            raise ModelError(
                "the manifest does not match its model: weight names differ "
                f"(model has {sorted(names)[:4]}..., manifest {self.weight_names[:4]}...)"
            )
        weights = self.get_weights()
        for spec in self.manifest.weights:
            if weights[spec.name].shape != spec.shape:
                raise ModelError(
                    f"the manifest does not match its model: {spec.name} is {weights[spec.name].shape} "
                    f"in the model, {spec.shape} in the manifest"
                )

    def describe(self) -> str:
        return f"{self.runtime.name} {self.runtime.version}"
