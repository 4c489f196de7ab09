"""TensorFlow, imported once with its C++ start-up chatter (oneDNN and CUDA notices)
silenced; set EDGEFL_TF_LOGS=1 to see it. Every model_export module that needs TensorFlow
imports ``tf`` from here, so ``model_export.registry`` stays importable without it."""

from __future__ import annotations

import os
import sys


def _import_tensorflow_quietly() -> None:
    if "tensorflow" in sys.modules or os.environ.get("EDGEFL_TF_LOGS"):
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no usable stderr descriptor: import normally
        return
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass  # the import below raises it for the importing module
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()

import tensorflow as tf  # noqa: E402

__all__ = ["tf"]
