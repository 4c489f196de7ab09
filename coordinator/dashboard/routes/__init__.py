"""The dashboard's routes, one blueprint per concern.

- ``auth``: the login check before every request (tokens, session cookie, CSRF), login, logout
- ``job``: the page and the job's live view (``/``, ``/api/state``, ``/api/config``)
- ``downloads``: the model, its manifest and the global weights
- ``predict``: classifying an uploaded image with the current global model
- ``control``: pause, resume and stop (admins only)
"""

from __future__ import annotations

from flask import Blueprint

from coordinator.dashboard.routes import auth, control, downloads, job, predict

BLUEPRINTS: tuple[Blueprint, ...] = (auth.bp, job.bp, downloads.bp, predict.bp, control.bp)
