"""Classify an uploaded image with the job's CURRENT global model (TFLite, no TensorFlow).

The model comes from the retained model envelope (``.tflite`` body, manifest in ``meta``)
and the weights from the retained global weights envelope, both held by the JobView. The
interpreter is rebuilt only when the model changes and the weights are set only when the
global weights change.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
from typing import Any

import numpy as np

from coordinator.monitoring.view import JobView
from edge_client.data import Normalization
from edge_client.errors import DataError, EdgeFLError, ModelError
from edge_client.manifest import Manifest
from edge_client.trainable_model import TrainableModel

log = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000  # refuse larger images before decoding them (decompression bombs)
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


class PredictError(EdgeFLError):
    """A prediction request cannot be served; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def load_image(data: bytes, height: int, width: int, channels: int) -> np.ndarray:
    """Decode PNG/JPEG/... bytes to ``(height, width, channels)`` uint8, resized to fit."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise PredictError("classifying images needs Pillow: pip install pillow", 500) from None
    if channels not in (1, 3):
        raise PredictError(f"the model takes {channels}-channel inputs, not images", 409)
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in FORMATS:
                raise PredictError(
                    f"{im.format} images are not supported: upload a PNG or JPEG image"
                )
            if im.width * im.height > MAX_PIXELS:
                raise PredictError(
                    f"the image is {im.width}x{im.height} pixels, more than {MAX_PIXELS:,}"
                )
            im.seek(0)  # first frame of an animation
            converted = im.convert("L" if channels == 1 else "RGB")
            resized = converted.resize((width, height), Image.Resampling.LANCZOS)
    except UnidentifiedImageError:
        raise PredictError("the file is not an image: upload a PNG or JPEG image") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PredictError(f"the image cannot be decoded: {exc}") from None
    return np.asarray(resized, dtype=np.uint8).reshape(height, width, channels)


def preview_png(pixels: np.ndarray) -> str:
    """A ``data:`` URL of the model's input image (what the model actually sees)."""
    from PIL import Image

    img = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class Predictor:
    """Thread-safe: one interpreter, guarded by a lock (requests are rare and fast)."""

    def __init__(self, view: JobView, *, runtime: str | None = None, top: int = 10) -> None:
        self.view = view
        self.runtime = runtime
        self.top = top
        self._lock = threading.Lock()
        self._model: TrainableModel | None = None
        self._model_sha = ""
        self._weights_sha = ""

    def predict(self, data: bytes, *, invert: bool = False) -> dict[str, Any]:
        if not data:
            raise PredictError("the upload is empty: choose an image file")
        with self._lock:
            model, weights_from = self._current_model()
            shape = tuple(model.manifest.input_shape)
            if len(shape) == 2:
                shape = (*shape, 1)
            if len(shape) != 3:
                raise PredictError(f"the model's input shape {list(shape)} is not an image", 409)
            pixels = load_image(data, *shape)  # (H, W, C) uint8
            if invert:
                pixels = 255 - pixels
            norm = Normalization.from_dict(model.manifest.normalization)
            x = norm(pixels[None]).reshape(1, *model.manifest.input_shape)
            probs = np.asarray(model.predict(x)[0], dtype=np.float64)  # (classes,)
            model_sha = self._model_sha
        names = model.manifest.label_names
        order = np.argsort(-probs)[: self.top]
        best = int(order[0])
        return {
            "label": names[best],
            "index": best,
            "confidence": float(probs[best]),
            "probabilities": [
                {"index": int(i), "label": names[int(i)], "p": float(probs[int(i)])} for i in order
            ],
            "model_sha256": model_sha,
            "weights": weights_from,
            "input_shape": list(model.manifest.input_shape),
            "preview": preview_png(pixels),
        }

    def _current_model(self) -> tuple[TrainableModel, str]:
        """The model with the current global weights set; lock held."""
        payload = self.view.model_payload()
        if payload is None:
            raise PredictError(
                f"no model published for job {self.view.job!r} yet: is the job running?", 409
            )
        tflite, meta = payload
        try:
            if self._model is None or self._model_sha != meta.get("sha256"):
                manifest = Manifest.from_dict(meta)
                self._model = TrainableModel(tflite, manifest, runtime=self.runtime)
                self._model_sha, self._weights_sha = manifest.sha256, ""
                log.info("dashboard: loaded model %s for predictions", manifest.sha256[:12])
            env = self.view.global_envelope()
            if env is None:
                return self._model, "initial weights (no global weights published yet)"
            if env.sha256 != self._weights_sha:
                self._model.set_weights(env.weights())
                self._weights_sha = env.sha256
            return self._model, f"global weights of round {env.round}"
        except (ModelError, DataError) as exc:
            self._model, self._model_sha = None, ""
            raise PredictError(f"the job's model cannot be used: {exc}", 409) from None
        except EdgeFLError as exc:  # e.g. no TFLite runtime installed
            raise PredictError(str(exc), 500) from None
