"""Build, convert, check and write a trainable model: ``model.tflite`` + ``manifest.json``."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_client import __version__
from edge_client.errors import ConfigError
from edge_client.manifest import Manifest, WeightSpec
from model_export import architectures, checks, registry
from model_export.convert import convert, list_ops
from model_export.module import TrainableModule
from model_export.optimizers import OptimizerConfig
from model_export.transfer import load_base

log = logging.getLogger(__name__)

DEFAULT_NORMALIZATION: dict[str, Any] = {"scale": 1 / 255, "mean": [0.0], "std": [1.0]}


@dataclass(frozen=True)
class ExportConfig:
    architecture: str = "cnn"
    input_shape: tuple[int, ...] | None = None  # None: the architecture's default
    classes: int = 10
    batch_size: int = 32  # static batch of the train signature
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    label_names: tuple[str, ...] | None = None  # None: "0", "1", ...
    normalization: dict[str, Any] | None = None  # None: pixels / 255
    seed: int = 0  # initial weights
    base_model: str | None = None  # transfer: .keras/.h5 model file, or "mobilenet_v2"
    base_weights: str | None = None  # transfer with mobilenet_v2: weights file
    head_units: int = 0  # transfer: hidden units of the head (0: logits only)
    grad_tolerance: float = 1e-4  # relative max error vs TensorFlow autodiff

    def __post_init__(self) -> None:
        if self.architecture != "transfer":
            architectures.get_spec(self.architecture)
        elif not self.base_model:
            raise ConfigError(
                "the transfer architecture needs --base-model (a .keras file or mobilenet_v2)"
            )
        if self.classes < 2:
            raise ConfigError(f"--classes must be at least 2, got {self.classes}")
        if not 1 <= self.batch_size <= 4096:
            raise ConfigError(f"--batch-size must be in 1..4096, got {self.batch_size}")
        if self.input_shape is not None and (not self.input_shape or min(self.input_shape) < 1):
            raise ConfigError(f"invalid input shape {self.input_shape}")
        if self.label_names is not None and len(self.label_names) != self.classes:
            raise ConfigError(
                f"{len(self.label_names)} label names given for {self.classes} classes"
            )


@dataclass(frozen=True)
class ExportResult:
    tflite: bytes
    manifest: Manifest
    model_path: Path | None = None
    manifest_path: Path | None = None

    def summary(self) -> str:
        m = self.manifest
        c = m.checks
        return "\n".join(
            [
                f"model      {m.architecture}: input {tuple(m.input_shape)}, {m.classes} classes, "
                f"train batch {m.batch_size}, {m.optimizer} {m.hyperparameters}",
                f"parameters {m.parameters:,} in {len(m.weights)} tensors",
                f"bytes      {m.tflite_bytes:,} (.tflite), sha256 {m.sha256[:16]}...",
                f"ops        {len(m.ops)} builtin: {', '.join(m.ops)}",
                f"checks     passed: builtin ops only; gradients vs TF autodiff max rel. error "
                f"{c['gradient_max_rel_error']:.1e}; interpreter loss {c['loss_before']:.4f} -> "
                f"{c['loss_after']:.4f} in {checks.TRAIN_CHECK_STEPS} steps",
            ]
        )


def build_module(cfg: ExportConfig) -> tuple[TrainableModule, tuple[int, ...], str]:
    """The TF module, its input shape and the architecture label for the manifest."""
    base = None
    if cfg.architecture == "transfer":
        base, input_shape, features = load_base(
            cfg.base_model or "", cfg.base_weights, cfg.input_shape
        )
        hidden: tuple[architectures.Layer, ...] = (architectures.Flatten(),)
        if cfg.head_units:
            hidden += (architectures.Dense(cfg.head_units),)
        shapes = architectures.param_shapes(architectures.full_spec(hidden, cfg.classes), features)
    else:
        input_shape = tuple(
            cfg.input_shape or registry.get_architecture(cfg.architecture).input_shape
        )
        hidden = architectures.get_spec(cfg.architecture)
        shapes = architectures.param_shapes(
            architectures.full_spec(hidden, cfg.classes), input_shape
        )
    params = architectures.init_params(shapes, cfg.seed)
    module = TrainableModule(
        hidden, input_shape, cfg.classes, cfg.batch_size, cfg.optimizer, params, base
    )
    return module, input_shape, cfg.architecture


def export_model(cfg: ExportConfig, out_dir: str | Path | None = None) -> ExportResult:
    """Build and check the model; write ``out_dir/model.tflite`` and ``manifest.json``."""
    module, input_shape, arch = build_module(cfg)
    log.info("checking gradients against TensorFlow autodiff")
    grad_error = checks.check_gradients(module, cfg.grad_tolerance, cfg.seed)
    log.info("converting to TFLite (builtin ops only)")
    tflite = convert(module, module.signatures())
    norm = cfg.normalization or _default_normalization(cfg)
    manifest = Manifest(
        architecture=arch,
        input_shape=tuple(input_shape),
        classes=cfg.classes,
        label_names=cfg.label_names or tuple(str(i) for i in range(cfg.classes)),
        batch_size=cfg.batch_size,
        optimizer=cfg.optimizer.name,
        hyperparameters=cfg.optimizer.hyperparameters(),
        weights=tuple(WeightSpec(k, tuple(v.shape)) for k, v in module.weights.items()),
        sha256=hashlib.sha256(tflite).hexdigest(),
        tflite_bytes=len(tflite),
        ops=tuple(list_ops(tflite)),
        normalization=norm,
        extra={
            "seed": cfg.seed,
            "base_model": cfg.base_model,
            "base_weights": cfg.base_weights,
            "head_units": cfg.head_units,
            "exported_by": f"edgefl {__version__}",
        },
    )
    log.info("checking training in the TFLite interpreter")
    loss_error, before, after = checks.check_interpreter(
        module, tflite, manifest, cfg.optimizer.lr, cfg.seed
    )
    report = checks.CheckReport(grad_error, loss_error, before, after)
    manifest = Manifest(**{**manifest.__dict__, "checks": report.to_dict()})
    result = ExportResult(tflite, manifest)
    if out_dir is not None:
        result = write_export(result, Path(out_dir))
    return result


def _default_normalization(cfg: ExportConfig) -> dict[str, Any]:
    if cfg.base_model == "mobilenet_v2":  # MobileNetV2 expects pixels in [-1, 1]
        return {"scale": 1 / 255, "mean": [0.5], "std": [0.5]}
    return dict(DEFAULT_NORMALIZATION)


def write_export(result: ExportResult, out_dir: Path) -> ExportResult:
    """Write both files atomically (a reader never sees a half-written model)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model_path, manifest_path = out_dir / "model.tflite", out_dir / "manifest.json"
    for path, data in (
        (model_path, result.tflite),
        (manifest_path, result.manifest.to_json().encode()),
    ):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return ExportResult(result.tflite, result.manifest, model_path, manifest_path)
