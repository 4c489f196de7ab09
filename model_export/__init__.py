"""Coordinator side: build, convert and check trainable TFLite models (needs TensorFlow).

Importing this package imports TensorFlow with its C++ start-up chatter (oneDNN and
CUDA notices) silenced; set EDGEFL_TF_LOGS=1 to see it.
"""

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
        pass  # the importing module raises a clear error itself
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()
