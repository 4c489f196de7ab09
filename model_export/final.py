"""Models of a finished job: the trainable model with its trained weights baked in, and
an inference-only model (weights as constants, ``infer`` only) for deployment."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge_client.manifest import Manifest
from model_export import architectures
from model_export._tf import tf
from model_export.convert import convert, list_ops
from model_export.export import ExportConfig, ExportResult, write_export
from model_export.module import TrainableModule
from model_export.optimizers import OptimizerConfig
from model_export.transfer import load_base


def _module(manifest: Manifest, weights: Mapping[str, np.ndarray]) -> TrainableModule:
    h = manifest.hyperparameters
    opt = OptimizerConfig(
        manifest.optimizer,
        lr=h["lr"],
        momentum=h.get("momentum", 0.0),
        beta1=h.get("beta1", 0.9),
        beta2=h.get("beta2", 0.999),
        epsilon=h.get("epsilon", 1e-7),
        prox_mu=h.get("prox_mu", 0.0),
    )
    base = None
    if manifest.architecture == "transfer":
        extra = manifest.extra
        base, _, _ = load_base(
            str(extra["base_model"]), extra.get("base_weights"), tuple(manifest.input_shape)
        )
        hidden: tuple[architectures.Layer, ...] = (architectures.Flatten(),)
        if extra.get("head_units"):
            hidden += (architectures.Dense(int(extra["head_units"])),)
    else:
        hidden = architectures.get_spec(manifest.architecture)
    params = {w.name: np.asarray(weights[w.name], np.float32) for w in manifest.weights}
    return TrainableModule(
        hidden,
        tuple(manifest.input_shape),
        manifest.classes,
        manifest.batch_size,
        opt,
        params,
        base,
    )


def export_trained(
    manifest: Manifest, weights: Mapping[str, np.ndarray], out_dir: str | Path
) -> dict[str, Path]:
    """Write ``model.tflite`` + ``manifest.json`` (trainable, trained weights as initial
    values), ``inference.tflite`` and ``weights.npz`` into ``out_dir``."""
    out = Path(out_dir)
    module = _module(manifest, weights)
    tflite = convert(module, module.signatures())
    trained = Manifest(
        **{
            **manifest.__dict__,
            "sha256": hashlib.sha256(tflite).hexdigest(),
            "tflite_bytes": len(tflite),
            "ops": tuple(list_ops(tflite)),
        }
    )
    write_export(ExportResult(tflite, trained), out)
    np.savez(out / "weights.npz", **{k: np.asarray(v) for k, v in weights.items()})
    inference = inference_model(module)
    (out / "inference.tflite").write_bytes(inference)
    return {
        "model": out / "model.tflite",
        "manifest": out / "manifest.json",
        "inference": out / "inference.tflite",
        "weights": out / "weights.npz",
    }


def inference_model(module: TrainableModule) -> bytes:
    """``infer`` only, weights folded in as constants (XNNPACK-accelerated, smallest file)."""
    consts = {k: tf.constant(v.numpy()) for k, v in module.weights.items()}
    spec = module.spec

    class Inference(tf.Module):
        @tf.function(
            input_signature=[tf.TensorSpec([None, *module.input_shape], tf.float32, name="x")]
        )
        def infer(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            feats = module.features(x)
            logits = architectures.forward(spec, consts, feats, reference=True)
            return {"probabilities": tf.nn.softmax(logits)}

    m = Inference()
    with tempfile.TemporaryDirectory(prefix="edgefl-infer-") as tmp:
        tf.saved_model.save(m, tmp, signatures={"infer": m.infer.get_concrete_function()})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        return bytes(converter.convert())


__all__ = ["export_trained", "inference_model", "ExportConfig"]
