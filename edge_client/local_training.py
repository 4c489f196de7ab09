"""Local data and local training: what a device does with a round, without any MQTT.

The data stays raw uint8 in memory; each batch is normalised right before it is fed to the
interpreter, so a board holds one float32 batch at a time. The client and the RSS benchmark
both train through :func:`train_local`.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_client.config import ClientConfig
from edge_client.data import (
    Dataset,
    Normalization,
    check_labels,
    load_dataset,
    load_path,
    partition,
    train_batches,
)
from edge_client.errors import DataError, EdgeFLError, ModelError
from edge_client.manifest import Manifest
from edge_client.pacing import Pacer
from edge_client.protocol import RoundAnnouncement, UpdateMeta
from edge_client.runtime import Runtime
from edge_client.trainable_model import TrainableModel

log = logging.getLogger(__name__)

EVAL_CHUNK = 1024  # samples normalised at once for the accuracy pass
MAX_EPOCHS = 1000  # an announcement asking for more is rejected as a mistake

BetweenBatches = Callable[[int, int, int], None]
"""Called as ``(epoch, batch, batches_per_epoch)`` after each batch; may raise to abort."""


class TrainingAborted(EdgeFLError):
    """Local training stopped before the end (deadline, divergence, shutdown)."""


class RoundClosed(TrainingAborted):
    """The coordinator closed the round being trained (it had the updates it needed)."""


class StartedOver(TrainingAborted):
    """Buffered rounds: a training from the job's initial weights heard of a newer version
    early on (``newer``, its announcement) and starts over from it, under the same grant
    (nothing is sent)."""

    def __init__(self, message: str, newer: RoundAnnouncement) -> None:
        super().__init__(message)
        self.newer = newer  # the RoundAnnouncement to train from instead


class SlotGivenBack(RoundClosed):
    """Buffered rounds: the global version moved too far for this training's update to be
    taken (beyond the announced max_staleness); the device tells the coordinator so."""


@dataclass(frozen=True)
class RoundSettings:
    epochs: int
    lr: float


@dataclass(frozen=True)
class TrainingResult:
    weights: dict[str, np.ndarray]
    loss: float  # mean train loss over the last epoch
    accuracy: float | None  # local train accuracy after training (None: not evaluated)
    samples: int
    epochs: int
    batches_per_epoch: int
    duration_s: float  # training and evaluation wall time


def load_local_data(config: ClientConfig) -> Dataset:
    """The device's data set (raw pixels), or a DataError naming what is wrong."""
    if config.data_path is not None:
        ds = load_path(config.data_path, config.split)
    else:
        ds = load_dataset(str(config.dataset), config.split)
    if config.partition is not None:
        parts = partition(ds.y, config.num_partitions, config.partition, config.partition_seed)
        ds = ds.subset(parts[config.partition_index])
    log.info(
        "local data: %d samples of shape %s, %d classes, from %s",
        len(ds),
        ds.sample_shape,
        len(np.unique(ds.y)),
        config.data_description,
    )
    return ds


def check_data_fits(data: Dataset, manifest: Manifest) -> Normalization:
    """Raise DataError unless the model can train on ``data``; its normalisation otherwise."""
    if tuple(data.sample_shape) != tuple(manifest.input_shape):
        raise DataError(
            f"local images have shape {data.sample_shape}, the model expects "
            f"{tuple(manifest.input_shape)}: this data set does not fit the {manifest.architecture} model"
        )
    check_labels(data, manifest.classes)
    return Normalization.from_dict(manifest.normalization)


def round_settings(hyperparams: Mapping[str, Any], manifest: Manifest) -> RoundSettings:
    """Epochs and learning rate of a round (defaults: 1 epoch, the manifest's lr)."""
    epochs = hyperparams.get("epochs", 1)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or not 1 <= epochs <= MAX_EPOCHS:
        raise ModelError(f"invalid hyperparameter epochs={epochs!r}: expected 1..{MAX_EPOCHS}")
    lr = hyperparams.get("lr", manifest.hyperparameters.get("lr"))
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ModelError(f"invalid hyperparameter lr={lr!r}: expected a positive number")
    batch = hyperparams.get("batch_size")
    if batch is not None and batch != manifest.batch_size:
        log.warning(
            "the round asks for batch size %s; the model was exported for %d and trains with it",
            batch,
            manifest.batch_size,
        )
    return RoundSettings(epochs, float(lr))


def batch_seed(device_id: str, round_: int, grant: int | None = None) -> list[int]:
    """A reproducible seed per device and round (different order every round; in a buffered
    job every grant, as a device may train twice from the same version)."""
    seed = [zlib.crc32(device_id.encode()), round_]
    return seed if grant is None else [*seed, grant]


def train_local(
    model: TrainableModel,
    data: Dataset,
    settings: RoundSettings,
    normalization: Normalization,
    *,
    rng: np.random.Generator | int | list[int] | None = None,
    evaluate: bool = True,
    between_batches: BetweenBatches | None = None,
) -> TrainingResult:
    """Train ``settings.epochs`` epochs from the model's current weights; read them back."""
    start = time.monotonic()
    pacer = Pacer()  # a simulated slower board waits after each step (edge_client/pacing.py)
    gen = np.random.default_rng(rng)
    b = model.manifest.batch_size
    n = len(data)
    per_epoch = -(-n // b)
    loss = math.nan
    for epoch in range(1, settings.epochs + 1):
        t0, total = time.monotonic(), 0.0
        for i, idx in enumerate(train_batches(n, b, gen), start=1):
            x = normalization(data.x[idx])  # (b, H, W, C) float32
            batch_loss = model.train_batch(x, data.y[idx], settings.lr)
            if not math.isfinite(batch_loss):
                raise TrainingAborted(
                    f"training diverged: loss is {batch_loss} at epoch {epoch}, batch {i} "
                    f"(lr {settings.lr:g} may be too high)"
                )
            total += batch_loss
            pacer.tick()
            if between_batches is not None:
                between_batches(epoch, i, per_epoch)
        loss = total / per_epoch
        log.info(
            "epoch %d/%d: loss %.4f (%d batches of %d, %.1f s)",
            epoch,
            settings.epochs,
            loss,
            per_epoch,
            b,
            time.monotonic() - t0,
        )
    weights = model.get_weights()
    bad = [name for name, w in weights.items() if not np.all(np.isfinite(w))]
    if bad:
        raise TrainingAborted(f"training diverged: weights {bad[:3]} hold NaN or infinity")
    accuracy = evaluate_local(model, data, normalization) if evaluate else None
    pacer.tick(flush=True)
    return TrainingResult(
        weights, loss, accuracy, n, settings.epochs, per_epoch, time.monotonic() - start
    )


def update_meta(
    result: TrainingResult,
    base_sha256: str,
    runtime: Runtime,
    lr: float,
    grant: int | None = None,
) -> UpdateMeta:
    """The ``meta`` of an update envelope (see docs/protocol.md, section 4); ``grant``: the
    buffered round's grant it answers."""
    return UpdateMeta(
        base_sha256=base_sha256,
        loss=result.loss,
        duration_s=round(result.duration_s, 3),
        interpreter=runtime.name,
        interpreter_version=runtime.version,
        epochs=result.epochs,
        lr=lr,
        accuracy=result.accuracy,
        grant=grant,
    )


def evaluate_local(model: TrainableModel, data: Dataset, normalization: Normalization) -> float:
    """Accuracy of the model on ``data``, normalising ``EVAL_CHUNK`` samples at a time."""
    correct = 0.0
    for start in range(0, len(data), EVAL_CHUNK):
        x = normalization(data.x[start : start + EVAL_CHUNK])
        # The train batch size keeps the interpreter's arena small (the default 256 would
        # need ~25 MB more for a small CNN on a board).
        result = model.evaluate(x, data.y[start : start + EVAL_CHUNK], model.manifest.batch_size)
        correct += result.accuracy * result.samples
    return correct / len(data)
