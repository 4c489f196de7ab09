"""The job's model: an exported directory, or an export made on the fly into the run dir."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from coordinator.config import JobConfig
from coordinator.run_dir import RunDir
from coordinator.server import ModelBundle
from edge_client.data import DATASETS
from edge_client.errors import ConfigError
from edge_client.manifest import Manifest
from edge_client.trainable_model import TrainableModel

log = logging.getLogger(__name__)


def dataset_spec(name: str | None):  # noqa: ANN201 - DatasetSpec | None
    if not name:
        return None
    return DATASETS.get(name.replace("_", "-").lower())


def prepare_model(cfg: JobConfig, run_dir: RunDir) -> ModelBundle:
    """Load RUN_DIR/model if present (resume), else copy --model-dir there or export one."""
    target = run_dir.model_dir
    if not (target / "manifest.json").exists():
        if cfg.model_dir:
            src = Path(cfg.model_dir)
            if not (src / "model.tflite").exists() or not (src / "manifest.json").exists():
                raise ConfigError(
                    f"--model-dir {src} must hold model.tflite and manifest.json (fedcoord export --out)"
                )
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / "model.tflite", target / "model.tflite")
            shutil.copy(src / "manifest.json", target / "manifest.json")
        else:
            _export(cfg, target)
    model = TrainableModel.from_dir(target)
    tflite = (target / "model.tflite").read_bytes()
    if cfg.model_dir is None and model.manifest.batch_size != cfg.batch_size:
        log.warning(
            "the run directory's model has batch size %d (not %d): using it",
            model.manifest.batch_size,
            cfg.batch_size,
        )
    return ModelBundle(tflite, Manifest.load(target / "manifest.json"), model.get_weights())


def _export(cfg: JobConfig, target: Path) -> None:
    try:
        from model_export.export import ExportConfig, export_model
        from model_export.optimizers import OptimizerConfig
    except ImportError as exc:
        raise ConfigError(
            "exporting a model needs TensorFlow (pip install 'edgefl[coordinator]'), "
            "or pass --model-dir with a model exported elsewhere"
        ) from exc
    spec = dataset_spec(cfg.test_data)
    shape = spec.sample_shape if spec else None
    names = spec.label_names if spec else None
    model = cfg.model
    if model == "cnn" and shape is not None and shape[2] == 3:
        log.info("cnn is for 28x28x1 images: using cifar_cnn for %s", spec.name)
        model = "cifar_cnn"
    log.info(
        "exporting %s (%s, lr %g, batch %d) into %s",
        model,
        cfg.optimizer,
        cfg.lr,
        cfg.batch_size,
        target,
    )
    export_model(
        ExportConfig(
            architecture=model,
            input_shape=shape,
            classes=len(names) if names else 10,
            batch_size=cfg.batch_size,
            optimizer=OptimizerConfig(
                cfg.optimizer, cfg.lr, momentum=cfg.momentum, prox_mu=cfg.prox_mu
            ),
            label_names=names,
            seed=cfg.seed,
        ),
        target,
    )
