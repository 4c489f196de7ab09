"""Export: builtin ops only, self-checks, manifest, and the errors users meet."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from edge_client.errors import ConfigError
from edge_client.manifest import Manifest
from model_export import checks, ops
from model_export.convert import NonBuiltinOpsError, convert, list_ops
from model_export.export import ExportConfig, build_module, export_model
from model_export.optimizers import OptimizerConfig

ARCHS = ["mlp", "cnn", "cifar_cnn"]


SLOW = pytest.mark.slow  # each of these exports takes 6-30 s


@pytest.mark.parametrize(
    "arch", [a if a != "cifar_cnn" else pytest.param(a, marks=SLOW) for a in ARCHS]
)
@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("adam", marks=SLOW)])
def test_every_architecture_exports_with_builtin_ops_only(export_dir, arch, optimizer):
    # Execute
    d = export_dir(arch, optimizer)
    manifest = Manifest.load(d / "manifest.json")
    tflite = (d / "model.tflite").read_bytes()
    # Assert
    ops_in_file = list_ops(tflite)
    assert ops_in_file == list(manifest.ops)
    assert not [o for o in ops_in_file if o.startswith("FLEX") or not o.isupper()]
    assert manifest.checks["gradient_max_rel_error"] < 1e-4
    assert manifest.checks["loss_after"] < manifest.checks["loss_before"]
    assert manifest.optimizer == optimizer
    manifest.verify_model_bytes(tflite)


def test_manifest_lists_everything_a_board_needs(export_dir):
    d = export_dir("cnn")
    raw = json.loads((d / "manifest.json").read_text())
    for key in (
        "format_version",
        "architecture",
        "input_shape",
        "input_dtype",
        "normalization",
        "classes",
        "label_names",
        "batch_size",
        "optimizer",
        "hyperparameters",
        "weights",
        "parameters",
        "sha256",
        "ops",
        "signatures",
    ):
        assert key in raw, key
    assert raw["input_shape"] == [28, 28, 1]
    assert raw["weights"][0] == {"name": "conv1_kernel", "shape": [5, 5, 1, 16], "dtype": "float32"}
    assert raw["parameters"] == sum(int(np.prod(w["shape"])) for w in raw["weights"])


@pytest.mark.slow
def test_transfer_learning_with_a_frozen_mobilenet_base(tmp_path):
    # Prepare: weights "the user supplies" (saved from a random init, nothing downloaded)
    base = tf.keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), include_top=False, weights=None, pooling="avg", alpha=0.35
    )
    base.save_weights(tmp_path / "base.weights.h5")
    cfg = ExportConfig(
        "transfer",
        input_shape=(32, 32, 3),
        classes=5,
        base_model="mobilenet_v2",
        base_weights=str(tmp_path / "base.weights.h5"),
        head_units=16,
        optimizer=OptimizerConfig("adam", 0.01),
    )
    # Execute
    result = export_model(cfg, tmp_path / "out")
    # Assert: only the head is trainable and travels over the wire
    names = [w.name for w in result.manifest.weights]
    assert names == ["dense1_kernel", "dense1_bias", "dense2_kernel", "dense2_bias"]
    assert result.manifest.input_shape == (32, 32, 3)
    assert result.manifest.normalization["mean"] == [0.5]
    assert "CONV_2D" in result.manifest.ops and "DEPTHWISE_CONV_2D" in result.manifest.ops


@pytest.mark.slow
def test_transfer_from_a_saved_keras_model(tmp_path):
    inp = tf.keras.Input((28, 28, 1))
    feats = tf.keras.layers.Conv2D(4, 3, 2, activation="relu")(inp)
    tf.keras.Model(inp, tf.keras.layers.GlobalAveragePooling2D()(feats)).save(tmp_path / "fe.keras")
    result = export_model(
        ExportConfig("transfer", base_model=str(tmp_path / "fe.keras"), classes=3)
    )
    assert [w.shape for w in result.manifest.weights] == [(4, 3), (3,)]


def test_gradient_check_catches_a_wrong_gradient(monkeypatch):
    # Prepare: a ReLU whose backward pass forgets the mask
    @tf.custom_gradient
    def leaky_backward_relu(x):
        return tf.maximum(x, 0.0), lambda dy: dy

    monkeypatch.setattr(ops, "relu", leaky_backward_relu)
    module, _, _ = build_module(ExportConfig("mlp"))
    # Execute / Assert
    with pytest.raises(checks.GradientCheckError, match="differs from TensorFlow autodiff"):
        checks.check_gradients(module, tolerance=1e-4)


def test_gradients_match_autodiff_for_every_stride_and_padding():
    from model_export import architectures as A

    for layer in (
        A.Conv(3, 3, 1, "same"),
        A.Conv(3, 3, 2, "same"),
        A.Conv(3, 5, 2, "valid"),
        A.Conv(3, 4, 3, "same"),
        A.Conv(3, 3, 2, "valid"),
    ):
        hidden = (layer, A.Flatten())
        shapes = A.param_shapes(A.full_spec(hidden, 4), (9, 10, 2))
        from model_export.module import TrainableModule

        module = TrainableModule(
            hidden, (9, 10, 2), 4, 3, OptimizerConfig(), A.init_params(shapes, 1)
        )
        x, y = checks.random_batch(module)
        errors = checks.gradient_errors(module, x, y)
        assert max(errors.values()) < 1e-5, (layer, errors)


def test_a_model_needing_flex_ops_is_refused_naming_the_ops():
    # Prepare: tf.nn ops under a tape need ReluGrad / SparseSoftmaxCrossEntropyWithLogits
    class Flexy(tf.Module):
        def __init__(self):
            self.w = tf.Variable(tf.ones([4, 3]))

        @tf.function(input_signature=[tf.TensorSpec([2, 4]), tf.TensorSpec([2], tf.int32)])
        def train(self, x, y):
            with tf.GradientTape() as tape:
                logits = tf.nn.relu(x @ self.w)
                loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
            self.w.assign_sub(0.1 * tape.gradient(loss, self.w))
            return {"loss": loss}

    m = Flexy()
    # Execute / Assert
    with pytest.raises(NonBuiltinOpsError, match="not TFLite builtins") as err:
        convert(m, {"train": m.train.get_concrete_function()})
    assert "ReluGrad" in str(err.value) or "SparseSoftmax" in str(err.value)


@pytest.mark.slow
def test_training_check_refuses_a_learning_rate_that_diverges():
    with pytest.raises(checks.TrainingCheckError, match="did not lower the loss"):
        export_model(ExportConfig("mlp", optimizer=OptimizerConfig("sgd", 1e4)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"architecture": "resnet"}, "unknown architecture 'resnet'"),
        ({"classes": 1}, "--classes must be at least 2"),
        ({"batch_size": 0}, "--batch-size must be in"),
        ({"architecture": "transfer"}, "needs --base-model"),
        ({"label_names": ("a", "b")}, "2 label names given for 10 classes"),
    ],
)
def test_bad_export_configs_get_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ExportConfig(**kwargs)


def test_unknown_optimizer_and_bad_hyperparameters():
    with pytest.raises(ConfigError, match="unknown optimizer 'rmsprop'"):
        OptimizerConfig("rmsprop")
    with pytest.raises(ConfigError, match="learning rate must be positive"):
        OptimizerConfig("sgd", -1)


def test_input_shape_that_does_not_fit_the_architecture():
    with pytest.raises(ConfigError, match=r"needs an image input \(H, W, C\)"):
        build_module(ExportConfig("cnn", input_shape=(28, 28)))


def test_missing_base_model_file(tmp_path):
    with pytest.raises(ConfigError, match="base model not found"):
        export_model(ExportConfig("transfer", base_model=str(tmp_path / "nope.keras")))


def _signature_input_shapes(tflite: bytes) -> dict[str, dict[str, tuple[int, ...]]]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    return {
        sig: {
            name: tuple(int(n) for n in detail["shape"])
            for name, detail in interpreter.get_signature_runner(sig).get_input_details().items()
        }
        for sig in interpreter.get_signature_list()
    }


@pytest.mark.slow  # up to nine exports when run alone (shared with the other tests in the suite)
def test_no_signature_of_any_export_has_a_rank_0_input(export_dir, tmp_path):
    """Why: on aarch64 (64-bit Raspberry Pi OS) every ai-edge-litert wheel tried, 1.4 to 2.3,
    crashes the process (segmentation fault) when a signature runner is called with a rank-0
    input: the runner resizes every input on every call, and resizing to an empty shape ends in
    a memset of ~2^64 bytes. The x86-64 wheels and tflite-runtime 2.14 accept it, so nothing
    else on this machine would notice; the learning rate has shape [1] for this reason. The
    emulated aarch64 tests (test_emulated_boards.py) run one such model for real."""
    # Prepare: every architecture and optimizer, the optional slots, transfer, a job's final models
    from model_export.final import export_trained
    from model_export.registry import JOB_ARCHITECTURES, OPTIMIZERS

    models = {
        f"{arch}/{opt}": (export_dir(arch, opt) / "model.tflite").read_bytes()
        for arch in JOB_ARCHITECTURES
        for opt in OPTIMIZERS
    }
    slots = export_model(
        ExportConfig("mlp", optimizer=OptimizerConfig("sgd", 0.05, momentum=0.9, prox_mu=0.1))
    )
    models["mlp/sgd+momentum+prox"] = slots.tflite
    inp = tf.keras.Input((28, 28, 1))
    feats = tf.keras.layers.Conv2D(4, 3, 2, activation="relu")(inp)
    tf.keras.Model(inp, tf.keras.layers.GlobalAveragePooling2D()(feats)).save(tmp_path / "fe.keras")
    transfer = export_model(ExportConfig("transfer", base_model=str(tmp_path / "fe.keras")))
    models["transfer/sgd"] = transfer.tflite
    manifest = Manifest.load(export_dir("mlp") / "manifest.json")
    weights = {w.name: np.zeros(w.shape, np.float32) for w in manifest.weights}
    final = export_trained(manifest, weights, tmp_path / "final")
    models["final/model"] = final["model"].read_bytes()
    models["final/inference"] = final["inference"].read_bytes()
    # Execute
    scalars = [
        f"{model}: {sig}({name})"
        for model, tflite in models.items()
        for sig, inputs in _signature_input_shapes(tflite).items()
        for name, shape in inputs.items()
        if len(shape) == 0
    ]
    # Assert
    assert scalars == [], "rank-0 signature inputs crash ai-edge-litert on aarch64 boards"
    assert {"train", "infer", "get_weights", "set_weights"} <= set(
        _signature_input_shapes(models["cnn/sgd"])
    )
