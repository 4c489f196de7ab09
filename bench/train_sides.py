"""The sides the training-throughput benchmark compares, each timing one pass the same way.

``KerasSide``: one Keras ``fit`` over the whole stream (the callback also times the inside of
the epoch, first batch begin to last batch end). ``InterpreterSide``: the exported model's
``train`` signature in ai-edge-litert or tf.lite, in this process. ``BoardSide``:
tflite-runtime 2.14 in the board environment, ``bench/train_pass.py`` as a worker
subprocess (it inherits this process's CPU pinning). Every ``run()`` returns one raw row:
samples, mean loss, wall and CPU seconds, involuntary context switches.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.train_pass import ROOT, interpreter_pass, measure
from edge_client.errors import EdgeFLError

IN_PROCESS = {"ai-edge-litert": "ai-edge-litert", "tf.lite": "tensorflow"}  # side: runtime


class KerasSide:
    name = "keras_fit"

    def __init__(self, result: Any, x: Any, y: Any) -> None:
        import tensorflow as tf

        from model_export.baseline import keras_twin

        self.model, self.x, self.y = keras_twin(result), x, y
        self.b = result.manifest.batch_size
        self.version = f"TensorFlow {tf.__version__}, Keras {tf.keras.__version__}"
        self.jit_compile = bool(self.model.jit_compile)

        class Window(tf.keras.callbacks.Callback):  # type: ignore[misc]
            def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
                if batch == 0:
                    self.start = _clocks()

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                self.end = _clocks()

        self.window = Window()

    def run(self) -> dict[str, Any]:
        hist, times = measure(
            lambda: self.model.fit(
                self.x,
                self.y,
                batch_size=self.b,
                epochs=1,
                shuffle=False,
                verbose=0,
                callbacks=[self.window],
            )
        )
        (w0, c0), (w1, c1) = self.window.start, self.window.end
        return {
            "samples": len(self.x),
            "mean_loss": float(hist.history["loss"][0]),
            **times,
            "in_epoch_wall_s": w1 - w0,
            "in_epoch_cpu_s": c1 - c0,
        }

    def close(self) -> None:
        pass


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class InterpreterSide:
    def __init__(self, name: str, model_dir: Path, x: Any, y: Any) -> None:
        from edge_client.trainable_model import TrainableModel

        self.name = name
        self.model = TrainableModel.from_dir(model_dir, runtime=IN_PROCESS[name], num_threads=1)
        self.version, self.x, self.y = self.model.describe(), x, y
        self.lr = float(self.model.manifest.hyperparameters["lr"])

    def run(self) -> dict[str, Any]:
        return interpreter_pass(self.model, self.x, self.y, self.lr)

    def close(self) -> None:
        pass


class BoardSide:
    """tflite-runtime in the board environment: ``bench/train_pass.py`` as a worker."""

    name = "tflite-runtime"

    def __init__(self, python: str, model_dir: Path, stream: Path) -> None:
        self.log = open(stream.with_suffix(".stderr"), "w+")  # noqa: SIM115 (closed in close)
        self.proc = subprocess.Popen(
            [
                python,
                str(ROOT / "bench/train_pass.py"),
                str(model_dir),
                str(stream),
                "tflite-runtime",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        ready = self._read()
        self.version, self.facts = ready["version"], ready

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.log.seek(0)
            tail = self.log.read().strip().splitlines()[-1:] or ["no output"]
            raise EdgeFLError(f"the board worker stopped: {tail[0]}")
        return dict(json.loads(line))

    def run(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("pass\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin is not None and self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.log.close()
