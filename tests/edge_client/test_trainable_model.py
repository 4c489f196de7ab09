"""The board's typed wrapper over the signatures, on every runtime, and its errors."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from edge_client.errors import ModelError, RuntimeUnavailableError
from edge_client.manifest import Manifest
from edge_client.runtime import load_runtime
from edge_client.trainable_model import TrainableModel

IN_PROCESS_RUNTIMES = ["ai-edge-litert", "tensorflow"]


def batch(manifest: Manifest, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, *manifest.input_shape)).astype(np.float32)
    return x, rng.integers(0, manifest.classes, n)


@pytest.mark.parametrize("runtime", IN_PROCESS_RUNTIMES)
@pytest.mark.parametrize("arch", ["mlp", "cnn", pytest.param("cifar_cnn", marks=pytest.mark.slow)])
def test_trains_evaluates_and_round_trips_weights(export_dir, runtime, arch):
    # Prepare
    model = TrainableModel.from_dir(export_dir(arch), runtime=runtime)
    m = model.manifest
    x, y = batch(m, m.batch_size)
    # Execute
    before = model.evaluate(x, y)
    for _ in range(10):
        model.train_batch(x, y, lr=0.05)
    after = model.evaluate(x, y)
    weights = model.get_weights()
    model.set_weights(weights)
    again = model.get_weights()
    # Assert
    assert model.runtime.name == runtime
    assert after.loss < before.loss
    assert list(weights) == [w.name for w in m.weights]
    assert all(weights[k].tobytes() == again[k].tobytes() for k in weights)
    probs = model.predict(x[:5])
    assert probs.shape == (5, m.classes)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_set_weights_restores_a_model_exactly(export_dir):
    model = TrainableModel.from_dir(export_dir("cnn"))
    x, y = batch(model.manifest, 32)
    start = model.get_weights()
    model.train_batch(x, y, 0.05)
    trained_probs = model.predict(x)
    model.set_weights(start)
    assert not np.array_equal(model.predict(x), trained_probs)
    np.testing.assert_array_equal(model.get_weights()["dense2_bias"], start["dense2_bias"])


@pytest.mark.slow
def test_prox_term_pulls_towards_round_start_weights(export_dir):
    # Same data, same start: with a strong FedProx mu the weights move less.
    from model_export.export import ExportConfig, export_model
    from model_export.optimizers import OptimizerConfig

    plain = TrainableModel.from_dir(export_dir("mlp", "sgd", 0.1))
    result = export_model(ExportConfig("mlp", optimizer=OptimizerConfig("sgd", 0.1, prox_mu=5.0)))
    prox = TrainableModel(result.tflite, result.manifest)
    start = plain.get_weights()
    prox.set_weights(start)
    x, y = batch(plain.manifest, 32)
    for _ in range(20):
        plain.train_batch(x, y, 0.1)
        prox.train_batch(x, y, 0.1)
    drift = lambda m: sum(float(np.sum((m.get_weights()[k] - start[k]) ** 2)) for k in start)  # noqa: E731
    assert drift(prox) < 0.5 * drift(plain)


@pytest.mark.slow
def test_board_environment_trains_without_tensorflow(export_dir, board):
    # Execute: the client's wrapper in the board venv (tflite-runtime 2.14, numpy<2)
    code = """
import importlib.util, json, sys
import numpy as np
assert importlib.util.find_spec("tensorflow") is None, "tensorflow must not be installed on the board"
from edge_client.trainable_model import TrainableModel
out = {}
for d in sys.argv[1:]:
    m = TrainableModel.from_dir(d)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (m.manifest.batch_size, *m.manifest.input_shape)).astype(np.float32)
    y = rng.integers(0, m.manifest.classes, m.manifest.batch_size)
    before = m.evaluate(x, y).loss
    for _ in range(10):
        m.train_batch(x, y, 0.05)
    w = m.get_weights(); m.set_weights(w); w2 = m.get_weights()
    out[d] = {"runtime": m.runtime.name, "numpy": np.__version__, "before": before,
              "after": m.evaluate(x, y).loss,
              "identical": all(w[k].tobytes() == w2[k].tobytes() for k in w)}
print(json.dumps(out))
"""
    dirs = [str(export_dir(a)) for a in ("mlp", "cnn", "cifar_cnn")] + [
        str(export_dir("cnn", "adam"))
    ]
    r = board(code, *dirs)
    # Assert
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    for d in dirs:
        res = results[d]
        assert res["runtime"] == "tflite-runtime"
        assert res["numpy"].startswith("1.")
        assert res["after"] < res["before"]
        assert res["identical"]


BOARD_TRAIN = """
import sys
import numpy as np
from edge_client.trainable_model import TrainableModel
model_dir, data, out = sys.argv[1:4]
z = np.load(data)
m = TrainableModel.from_dir(model_dir, num_threads=1)
m.set_weights({k[2:]: z[k] for k in z.files if k.startswith("w/")})
for x, y in zip(z["x"], z["y"]):
    m.train_batch(x, y, float(z["lr"]))
np.savez(out, runtime=m.runtime.name, **m.get_weights())
"""
STEPS = 5


def trained_in_process(model_dir, runtime: str, data: dict) -> dict[str, np.ndarray]:  # noqa: ANN001
    model = TrainableModel.from_dir(model_dir, runtime=runtime, num_threads=1)
    model.set_weights({k[2:]: v for k, v in data.items() if k.startswith("w/")})
    for x, y in zip(data["x"], data["y"]):
        model.train_batch(x, y, float(data["lr"]))
    assert model.runtime.name == runtime
    return model.get_weights()


@pytest.mark.slow
@pytest.mark.parametrize("arch, optimizer", [("mlp", "sgd"), ("cnn", "sgd"), ("cnn", "adam")])
def test_the_three_runtimes_train_to_the_same_weights(export_dir, board, tmp_path, arch, optimizer):
    # Prepare: the same initial weights and the same 5 batches for every runtime, one thread
    model_dir = export_dir(arch, optimizer)
    manifest = Manifest.load(model_dir / "manifest.json")
    initial = TrainableModel.from_dir(model_dir).get_weights()
    rng = np.random.default_rng(0)
    shape = (STEPS, manifest.batch_size, *manifest.input_shape)
    data = {
        "x": rng.uniform(0, 1, shape).astype(np.float32),
        "y": rng.integers(0, manifest.classes, shape[:2]),
        "lr": np.float32(manifest.hyperparameters["lr"]),  # 0.05 (sgd), 0.001 (adam)
        **{f"w/{k}": v for k, v in initial.items()},
    }
    np.savez(tmp_path / "data.npz", **data)
    # Execute: ai-edge-litert and tf.lite here, tflite-runtime 2.14 in the board environment
    litert = trained_in_process(model_dir, "ai-edge-litert", data)
    tflite = trained_in_process(model_dir, "tensorflow", data)
    r = board(BOARD_TRAIN, str(model_dir), str(tmp_path / "data.npz"), str(tmp_path / "out.npz"))
    assert r.returncode == 0, r.stderr[-2000:]
    out = np.load(tmp_path / "out.npz")
    assert str(out["runtime"]) == "tflite-runtime"
    board_weights = {k: out[k] for k in initial}
    # Assert: training moved the weights (by ~1e-2), and every runtime moved them alike
    moved = max(float(np.max(np.abs(litert[k] - initial[k]))) for k in initial)
    assert moved > 1e-3
    for other in (tflite, board_weights):
        diff = np.concatenate([np.abs(other[k] - litert[k]).ravel() for k in initial])
        if optimizer == "sgd":
            # Kernels of different TFLite versions round differently (summation order),
            # ~1e-7 relative per gradient; 5 steps at lr 0.05 leave ~1e-8 (measured 1.5e-8,
            # one float32 ulp at these weights). 1e-6 keeps a wide margin and is 1/1000 of
            # the training's own change: a wrong gradient or update fails it.
            assert diff.max() <= 1e-6
        else:
            # Adam divides each gradient by its own running magnitude, so a value whose true
            # gradient is ~0 (float32 noise, e.g. a dead ReLU unit) moves by about +-lr in a
            # direction set by that noise: such values cannot agree. At lr 0.001 none showed
            # up (max difference 9.4e-7); at lr 0.05, 0.08 % of the values differed by more
            # than 1e-5 (up to 0.23), the median by 1.5e-8. So: a bound on their share.
            assert np.mean(diff > 1e-6) <= 0.005
            assert np.median(diff) <= 1e-7


# -- bad input -------------------------------------------------------------------------------


@pytest.fixture
def cnn(export_dir) -> TrainableModel:
    return TrainableModel.from_dir(export_dir("cnn"))


def test_wrong_input_shape_dtype_and_labels(cnn):
    m = cnn.manifest
    x, y = batch(m, 32)
    with pytest.raises(
        ModelError, match=r"inputs have shape \(32, 28, 28\), expected \(N, 28, 28, 1\)"
    ):
        cnn.train_batch(x[..., 0], y, 0.1)
    with pytest.raises(ModelError, match="batch has 31 samples, the model was exported for 32"):
        cnn.train_batch(x[:31], y[:31], 0.1)
    with pytest.raises(ModelError, match="dtype uint8, expected float32 normalised"):
        cnn.predict((x * 255).astype(np.uint8))
    with pytest.raises(ModelError, match="label 10 is out of range"):
        cnn.train_batch(x, np.full(32, 10), 0.1)
    with pytest.raises(ModelError, match="labels have dtype float64"):
        cnn.evaluate(x, y.astype(np.float64))
    with pytest.raises(ModelError, match=r"labels have shape \(31,\), expected \(32,\)"):
        cnn.evaluate(x, y[:31])


def test_set_weights_with_missing_extra_or_misshapen_tensors(cnn):
    w = cnn.get_weights()
    missing = dict(w)
    del missing["conv1_bias"]
    with pytest.raises(ModelError, match=r"missing weights \['conv1_bias'\]"):
        cnn.set_weights(missing)
    with pytest.raises(ModelError, match=r"unexpected weights \['bogus'\]"):
        cnn.set_weights({**w, "bogus": np.zeros(3)})
    with pytest.raises(ModelError, match=r"conv1_bias has shape \(3,\), the model expects \(16,\)"):
        cnn.set_weights({**w, "conv1_bias": np.zeros(3, np.float32)})
    assert all(np.array_equal(cnn.get_weights()[k], w[k]) for k in w)  # nothing half-applied


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_truncated_or_corrupt_model_file(export_dir, tmp_path):
    d = _copy(export_dir("mlp"), tmp_path / "m")
    data = (d / "model.tflite").read_bytes()
    (d / "model.tflite").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="does not match the manifest"):
        TrainableModel.from_dir(d)
    # a corrupt file whose manifest was "fixed up" still fails cleanly in the parser
    garbage = b"\x00" * 64 + data[64:1000]
    (d / "model.tflite").write_bytes(garbage)
    raw = json.loads((d / "manifest.json").read_text())
    raw["sha256"] = hashlib.sha256(garbage).hexdigest()
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="cannot be loaded"):
        TrainableModel.from_dir(d)


def test_manifest_that_does_not_match_its_model(export_dir, tmp_path):
    d = _copy(export_dir("cnn"), tmp_path / "m")
    other = Manifest.load(export_dir("mlp") / "manifest.json")
    raw = other.to_dict()
    raw["sha256"] = Manifest.load(d / "manifest.json").sha256
    (d / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="the manifest does not match its model"):
        TrainableModel.from_dir(d)


def test_missing_files_and_bad_manifests(tmp_path, export_dir):
    with pytest.raises(ModelError, match="manifest not found"):
        TrainableModel.from_dir(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read manifest"):
        TrainableModel.from_dir(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ModelError, match="invalid manifest: missing or malformed field"):
        TrainableModel.from_dir(tmp_path)
    shutil.copy(export_dir("mlp") / "manifest.json", tmp_path / "manifest.json")
    with pytest.raises(ModelError, match="cannot read model"):
        TrainableModel.from_dir(tmp_path)


def test_runtime_selection_and_errors(monkeypatch):
    assert load_runtime().name == "ai-edge-litert"
    assert load_runtime("tensorflow").name == "tensorflow"
    monkeypatch.setenv("EDGEFL_RUNTIME", "tensorflow")
    assert load_runtime().name == "tensorflow"
    with pytest.raises(RuntimeUnavailableError, match="unknown TFLite runtime 'onnx'"):
        load_runtime("onnx")
    with pytest.raises(RuntimeUnavailableError, match="pip install tflite-runtime"):
        load_runtime("tflite-runtime")  # not in the coordinator's environment


def test_no_runtime_at_all_names_the_packages(board):
    code = """
import sys
sys.modules['tflite_runtime'] = None; sys.modules['ai_edge_litert'] = None; sys.modules['tensorflow'] = None
from edge_client.runtime import load_runtime
from edge_client.errors import RuntimeUnavailableError
try:
    load_runtime()
except RuntimeUnavailableError as e:
    print(e)
"""
    r = board(code)
    assert "pip install ai-edge-litert" in r.stdout and "tflite-runtime==2.14.0" in r.stdout
