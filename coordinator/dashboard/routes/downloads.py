"""Downloads: the job's .tflite model, its manifest and the current global weights (.npz)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from flask import Blueprint, Response, jsonify

from coordinator.dashboard.context import dashboard, error

bp = Blueprint("downloads", __name__)


def _no_model() -> tuple[Response, int]:
    job = dashboard().view.job
    return error(f"no model published for job {job!r} yet: is the job running?", 404)


def _attachment(data: bytes, name: str) -> Response:
    return Response(
        data,
        mimetype="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@bp.get("/api/model")
def model() -> Any:
    view = dashboard().view
    payload = view.model_payload()
    if payload is None:
        return _no_model()
    tflite, meta = payload
    return _attachment(tflite, f"{view.job}-{str(meta.get('sha256', ''))[:12]}.tflite")


@bp.get("/api/manifest")
def manifest() -> Any:
    payload = dashboard().view.model_payload()
    return jsonify(payload[1]) if payload else _no_model()


@bp.get("/api/weights")
def weights() -> Any:
    view = dashboard().view
    env = view.global_envelope()
    if env is None:
        return error(f"no global weights published for job {view.job!r} yet", 404)
    arrays: dict[str, Any] = env.weights()  # name -> array (Any: numpy's savez stub)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return _attachment(buf.getvalue(), f"{view.job}-global-round-{env.round}.npz")
