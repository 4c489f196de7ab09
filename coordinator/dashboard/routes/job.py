"""The command center's page and the job's live view as JSON."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, render_template, session

from coordinator.dashboard.context import dashboard, role

bp = Blueprint("job", __name__)


@bp.get("/")
def index() -> Any:
    board = dashboard()
    cfg = board.config
    return render_template(
        "index.html",
        job=board.view.job,
        role=role(),
        csrf=session.get("csrf", ""),
        refresh_ms=int(cfg.refresh_s * 1000),
        max_upload_mb=f"{cfg.max_upload_bytes / 1e6:g}",
        max_upload_bytes=cfg.max_upload_bytes,
    )


@bp.get("/api/state")
def state() -> Any:
    snap = dashboard().view.snapshot()
    snap.pop("config", None)  # served by /api/config
    snap["role"] = role()
    return jsonify(snap)


@bp.get("/api/config")
def job_config() -> Any:
    view = dashboard().view
    payload = view.model_payload()
    snap = view.snapshot()
    r = snap["round"] or {}
    return jsonify(
        {
            "job": view.job,
            "prefix": view.prefix,
            "broker": view.broker,
            "settings": snap["config"],
            "manifest": _manifest_summary(payload[1]) if payload else None,
            "round_hyperparams": r.get("hyperparams"),
            "encoding": r.get("encoding"),
        }
    )


def _manifest_summary(meta: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "architecture",
        "input_shape",
        "classes",
        "label_names",
        "parameters",
        "batch_size",
        "optimizer",
        "hyperparameters",
        "normalization",
        "sha256",
        "tflite_bytes",
    )
    return {k: meta.get(k) for k in keys if k in meta}
