"""Classify an uploaded image with the current global model."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from coordinator.dashboard.context import dashboard, error
from coordinator.dashboard.predict import PredictError

bp = Blueprint("predict", __name__)


@bp.post("/api/predict")
def predict() -> Any:
    upload = request.files.get("image")
    if upload is None or not upload.filename:
        return error("no file: send the image as multipart field 'image'", 400)
    invert = request.form.get("invert", "").lower() in ("1", "true", "on", "yes")
    try:
        return jsonify(dashboard().predictor.predict(upload.read(), invert=invert))
    except PredictError as exc:
        return error(str(exc), exc.status)
