"""Find a TFLite interpreter: ai-edge-litert, else tflite-runtime, else tensorflow.lite.

Override with ``runtime=`` or the ``EDGEFL_RUNTIME`` environment variable
(``ai-edge-litert``, ``tflite-runtime`` or ``tensorflow``).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

from edge_client.errors import RuntimeUnavailableError

# (name, module holding Interpreter, distribution for the version)
_CANDIDATES: tuple[tuple[str, str, str], ...] = (
    ("ai-edge-litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow", "tensorflow.lite.python.interpreter", "tensorflow"),
)
RUNTIME_NAMES = tuple(name for name, _, _ in _CANDIDATES)
ENV_VAR = "EDGEFL_RUNTIME"


@dataclass(frozen=True)
class Runtime:
    name: str
    version: str
    interpreter_class: Any

    def make(self, model_content: bytes, num_threads: int | None = None) -> Any:
        return self.interpreter_class(model_content=model_content, num_threads=num_threads)


def _version(distribution: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def _try(name: str, module: str, distribution: str) -> Runtime | None:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return Runtime(name, _version(distribution), mod.Interpreter)


def load_runtime(preferred: str | None = None) -> Runtime:
    """The requested runtime, or the first one installed in preference order."""
    preferred = preferred or os.environ.get(ENV_VAR) or None
    if preferred is not None:
        for name, module, dist in _CANDIDATES:
            if name == preferred:
                found = _try(name, module, dist)
                if found is None:
                    raise RuntimeUnavailableError(
                        f"TFLite runtime {preferred!r} was requested but cannot be imported: "
                        f"pip install {dist}"
                    )
                return found
        raise RuntimeUnavailableError(
            f"unknown TFLite runtime {preferred!r}: choose one of {', '.join(RUNTIME_NAMES)}"
        )
    for candidate in _CANDIDATES:
        found = _try(*candidate)
        if found is not None:
            return found
    raise RuntimeUnavailableError(
        "no TFLite interpreter is installed: pip install ai-edge-litert "
        "(or tflite-runtime==2.14.0 with 'numpy<2' on 32-bit Raspberry Pi OS)"
    )


def available_runtimes() -> list[Runtime]:
    return [r for r in (_try(*c) for c in _CANDIDATES) if r is not None]
