"""On-device training is real training: the interpreter scores like Keras fit.

Smaller budget than the recorded figure (bench/accuracy_vs_keras.py --seeds 0,1,2: 12,000
images, 10,000 test images, gap 0.12 points on average over 3 seeds, at most 0.19).
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_client.data import load_dataset
from edge_client.manifest import Manifest
from model_export.compare import compare_with_keras
from model_export.export import ExportResult

pytestmark = pytest.mark.slow  # over ~5 s: left out of the fast loop (pytest -m "not slow")


def test_cnn_one_epoch_on_fashion_mnist_matches_keras_fit(export_dir):
    # Prepare
    d = export_dir("cnn")
    result = ExportResult((d / "model.tflite").read_bytes(), Manifest.load(d / "manifest.json"))
    train = load_dataset("fashion-mnist", "train").subset(np.arange(4000))
    test = load_dataset("fashion-mnist", "test").subset(np.arange(3000))
    # Execute
    c = compare_with_keras(result, train, test)
    # Assert: trained well beyond chance (10 %), and like Keras
    assert c.interpreter_accuracy > 0.6
    assert c.gap_points < 1.5, c
