"""The board side on the boards' own architectures: 64-bit Raspberry Pi OS (aarch64) with
`edgefl[board]` and with `edgefl[board-legacy]`, and 32-bit Raspberry Pi OS (armhf) with
`edgefl[board-legacy]`, emulated with qemu user mode (scripts/board-emulation.sh).

The boards' interpreter wheels are different builds from the x86-64 ones, with their own
bugs (the aarch64 LiteRT wheels crash on rank-0 signature inputs); these tests run the real
wheels, installed as docs/deployment.md says, through what a board does: import, `fedge info`,
training, weights in and out, signature checks and a real round over Mosquitto.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import JobConfig
from coordinator.job import run_job
from coordinator.pki import generate_signing_key
from edge_client.data.registry import load_dataset
from edge_client.manifest import Manifest
from edge_client.protocol import decode, encode_model
from edge_client.signing import Signer
from edge_client.trainable_model import TrainableModel
from edge_client.transport import BrokerConfig
from tests.conftest import BOARD_PYTHON, ROOT
from tests.fixtures.emulation import EmulatedBoard

pytestmark = [pytest.mark.emulated, pytest.mark.slow]

BATCH = 8  # emulated training is slow: a small static batch
STEPS = 3  # training steps compared with x86-64
LR = 0.05

# Runs on the board (and, for the reference, on this machine) with
# argv: model_dir, data.npz, weights.npz, public key, signed model, tampered model, out_dir.
PROBE = r"""
import importlib, importlib.util, json, pkgutil, platform, sys
from pathlib import Path
import numpy as np
import edge_client
modules = [m.name for m in pkgutil.walk_packages(edge_client.__path__, "edge_client.")]
for name in modules:
    importlib.import_module(name)
heavy = sorted({n.split(".")[0] for n in sys.modules} & {"tensorflow", "keras", "coordinator", "model_export"})
from edge_client.signing import SignatureError, Verifier
from edge_client.trainable_model import TrainableModel
model_dir, data, weights, pub, signed, tampered, out = sys.argv[1:8]
out = Path(out)
model = TrainableModel.from_dir(model_dir)
d = np.load(data)
b = model.manifest.batch_size
losses = [model.train_batch(d["x"][i * b:(i + 1) * b], d["y"][i * b:(i + 1) * b], float(d["lr"]))
          for i in range(len(d["x"]) // b)]
np.savez(out / "trained.npz", **model.get_weights())
model.set_weights(dict(np.load(weights)))
np.savez(out / "roundtrip.npz", **model.get_weights())
verifier = Verifier.from_spec(pub)
envelope = verifier.model(Path(signed).read_bytes())
try:
    verifier.model(Path(tampered).read_bytes())
    refused = ""
except SignatureError as exc:
    refused = str(exc)
print(json.dumps({
    "machine": platform.machine(), "modules": modules, "heavy": heavy,
    "tensorflow_installed": importlib.util.find_spec("tensorflow") is not None,
    "runtime": model.runtime.name, "runtime_version": model.runtime.version,
    "numpy": np.__version__, "numpy_file": np.__file__, "losses": losses,
    "signed_model_ok": envelope.body == Path(model_dir, "model.tflite").read_bytes(),
    "tampered_refused": refused,
}))
"""


@pytest.fixture(scope="module")
def cnn(export_dir) -> Path:
    return export_dir("cnn", batch_size=BATCH)


@pytest.fixture(scope="module")
def fashion() -> tuple[np.ndarray, np.ndarray]:
    ds = load_dataset("fashion-mnist", "train")
    return ds.x[: STEPS * BATCH], ds.y[: STEPS * BATCH]


@pytest.fixture(scope="module")
def probe_inputs(cnn, fashion, tmp_path_factory) -> list[str]:
    """Everything the probe reads, written once: data, weights to send, keys, models."""
    d = tmp_path_factory.mktemp("probe-in")
    x, y = fashion
    np.savez(d / "data.npz", x=(x / 255.0).astype(np.float32), y=y, lr=np.float32(LR))
    manifest = Manifest.load(cnn / "manifest.json")
    rng = np.random.default_rng(7)
    weights = {
        w.name: rng.standard_normal(w.shape).astype(np.float32) * 0.1 for w in manifest.weights
    }
    first = manifest.weights[0].name  # values a lossy path would change: -0, denormals, huge
    weights[first].flat[:4] = [-0.0, 1e-45, 3.4e38, -1.17549435e-38]
    np.savez(d / "weights.npz", **weights)
    keys = generate_signing_key(d / "keys")
    signer = Signer.from_file(keys.private)
    tflite = (cnn / "model.tflite").read_bytes()
    (d / "signed.bin").write_bytes(
        signer.model_envelope(tflite, manifest.to_dict(), job="emu", sender="coordinator")
    )
    body = bytearray(tflite)
    body[len(body) // 2] ^= 0x01  # one bit flipped, the manifest's sha256 fixed up to match
    forged = {**manifest.to_dict(), "sha256": hashlib.sha256(body).hexdigest()}
    forged["signature"] = decode((d / "signed.bin").read_bytes()).meta["signature"]  # copied
    (d / "tampered.bin").write_bytes(
        encode_model(bytes(body), forged, job="emu", sender="coordinator")
    )
    return [
        str(cnn),
        str(d / "data.npz"),
        str(d / "weights.npz"),
        str(keys.public),
        str(d / "signed.bin"),
        str(d / "tampered.bin"),
    ]


def run_probe(cmd: list[str], inputs: list[str], out: Path, **kw) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        [*cmd, "-c", PROBE, *inputs, str(out)], capture_output=True, text=True, timeout=900, **kw
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def probed(emulated_board: EmulatedBoard, probe_inputs, tmp_path_factory) -> dict:
    """The probe on the emulated board and, with the same interpreter package, on x86-64."""
    out = tmp_path_factory.mktemp(f"probe-{emulated_board.name}")
    board = run_probe(emulated_board.command("python3"), probe_inputs, out / "board")
    # x86-64 reference: ai-edge-litert in this environment, tflite-runtime in .venv-board
    python = sys.executable if emulated_board.runtime == "ai-edge-litert" else str(BOARD_PYTHON)
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    x86 = run_probe([python], probe_inputs, out / "x86", env=env)
    return {"board": board, "x86": x86, "out": out}


def test_every_edge_client_module_imports_on_the_board_without_tensorflow(emulated_board, probed):
    board = probed["board"]
    assert board["machine"] == emulated_board.machine
    assert len(board["modules"]) > 20 and "edge_client.client" in board["modules"]
    assert board["heavy"] == [] and not board["tensorflow_installed"]
    # numpy is the board's own: Debian's on armhf, the PyPI wheel in the venv elsewhere
    assert board["numpy"].startswith(emulated_board.numpy_major)
    expected_home = "/usr/lib/python3/" if emulated_board.machine == "armv7l" else "/home/pi/"
    assert board["numpy_file"].startswith(expected_home)


def test_fedge_info_on_the_board(emulated_board):
    r = emulated_board.run("fedge", "info", timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"({emulated_board.machine}, Linux)" in r.stdout
    assert f"runtime      {emulated_board.runtime} {emulated_board.runtime_version_prefix}" in (
        r.stdout
    )
    assert f"numpy        {emulated_board.numpy_major}" in r.stdout
    assert "python       3.11." in r.stdout


def test_training_on_the_board_matches_x86(emulated_board, probed, cnn):
    # The same model, start weights, batches and learning rate on the board and on x86-64.
    board, x86 = probed["board"], probed["x86"]
    assert (board["runtime"], x86["runtime"]) == (emulated_board.runtime,) * 2
    assert board["runtime_version"] == x86["runtime_version"]
    np.testing.assert_allclose(board["losses"], x86["losses"], rtol=1e-5)
    assert len(board["losses"]) == STEPS and all(np.isfinite(board["losses"]))
    initial = TrainableModel.from_dir(cnn, runtime="ai-edge-litert").get_weights()
    trained_board = np.load(probed["out"] / "board/trained.npz")
    trained_x86 = np.load(probed["out"] / "x86/trained.npz")
    # Tolerance: float32 kernels of another architecture (NEON instead of AVX2/FMA) add and
    # fuse in another order, so each step's result may differ in the last bits (~1e-8 after
    # three steps here); a wrong kernel differs by the order of the update itself. So each
    # tensor must agree to 0.1 % of how far the three steps moved it on x86-64.
    for name in trained_x86.files:
        moved = np.abs(trained_x86[name] - initial[name]).max()
        assert moved > 0, name
        diff = np.abs(trained_board[name] - trained_x86[name]).max()
        assert diff <= 1e-3 * moved, f"{name}: board and x86 differ by {diff}, moved {moved}"


def test_weights_round_trip_bit_for_bit_on_the_board(probed, probe_inputs):
    sent = np.load(probe_inputs[2])
    back = np.load(probed["out"] / "board/roundtrip.npz")
    assert sorted(back.files) == sorted(sent.files)
    for name in sent.files:
        assert back[name].dtype == np.float32
        assert back[name].tobytes() == sent[name].tobytes(), name


def test_the_board_verifies_a_signed_model_and_refuses_a_tampered_one(probed):
    assert probed["board"]["signed_model_ok"]
    assert "signature" in probed["board"]["tampered_refused"]


def test_a_real_round_with_an_emulated_fedge_run(
    emulated_board, mosquitto_broker, cnn, fashion, tmp_path
):
    # Prepare: a signed job, a tiny partition, the board started before the coordinator
    job = f"emu-{emulated_board.name}"
    device = f"pi-{emulated_board.name}"
    x, y = fashion
    np.savez(tmp_path / "part.npz", x=x[:16], y=y[:16])
    keys = generate_signing_key(tmp_path / "keys")
    log = tmp_path / "board.log"
    config = JobConfig(
        job=job, rounds=1, run_dir=str(tmp_path / "run"), model_dir=str(cnn),
        epochs=1, lr=LR, min_devices=1, min_results=1, round_timeout=300, wait_timeout=300,
        max_retries=0, signing_key=str(keys.private), broker=mosquitto_broker.url,
    )  # fmt: skip
    outcome: dict = {}

    def coordinate() -> None:
        try:
            outcome["state"] = run_job(
                config, broker=BrokerConfig.from_url(mosquitto_broker.url), final_models=False
            )
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    with log.open("w") as out:
        board = subprocess.Popen(
            emulated_board.command(
                "fedge", "run", "--broker", mosquitto_broker.url, "--job", job,
                "--device-id", device, "--data", str(tmp_path / "part.npz"),
                "--state-dir", str(tmp_path / "state"), "--trust-key", str(keys.public),
                "--heartbeat", "5", "--exit-on-stop",
            ),
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        # Execute: the coordinator's job, given up as soon as the board dies
        coordinator = threading.Thread(target=coordinate, daemon=True)
        coordinator.start()
        try:
            while coordinator.is_alive() and board.poll() is None:
                coordinator.join(0.5)
            coordinator.join(5)
            board.wait(timeout=120)
        finally:
            if board.poll() is None:
                board.kill()
                board.wait()
    output = log.read_text()
    # Assert: the coordinator accepted the board's update; the board stopped cleanly
    assert "state" in outcome, (
        f"{outcome.get('error')!r}; board exit {board.returncode}:\n{output[-3000:]}"
    )
    assert board.returncode == 0, output[-3000:]
    assert "Traceback" not in output
    (entry,) = outcome["state"].history
    assert entry["participants"] == [device]
    assert entry["devices"][device]["samples"] == 16


RANK0_RUN = r"""
import sys
import numpy as np
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tflite_runtime.interpreter import Interpreter
interpreter = Interpreter(model_path=sys.argv[1])
runner = interpreter.get_signature_runner(next(iter(interpreter.get_signature_list())))
print("ran", runner(x=np.array([1.0, 2.0], np.float32), lr=np.array(0.5, np.float32))["y"])
"""


@pytest.fixture(scope="module")
def rank0_model(tmp_path_factory) -> Path:
    """A two-op model whose signature takes a rank-0 (scalar) input."""
    import tensorflow as tf

    class Step(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([2], tf.float32, name="x"),
                tf.TensorSpec([], tf.float32, name="lr"),
            ]
        )
        def step(self, x: tf.Tensor, lr: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x * lr}

    module = Step()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.step.get_concrete_function()], module
    )
    path = tmp_path_factory.mktemp("rank0") / "scalar.tflite"
    path.write_bytes(converter.convert())
    return path


def test_the_emulated_aarch64_litert_crashes_on_a_rank_0_input_like_a_real_board(
    emulated_board, rank0_model
):
    # Why export gives every signature input rank >= 1 (test_export.py checks it): on aarch64,
    # ai-edge-litert (1.4 to 2.3) dies in the signature runner's resize of a rank-0 input,
    # which the x86-64 wheel and tflite-runtime 2.14 accept. The emulation reproduces it: the
    # proof that these tests see what a board's own interpreter build does.
    r = emulated_board.run("python3", "-c", RANK0_RUN, str(rank0_model), timeout=300)
    if emulated_board.runtime == "ai-edge-litert":
        assert r.returncode == -11, (
            "ai-edge-litert on aarch64 no longer crashes on a rank-0 input: if a newer wheel "
            f"fixed it, update DESIGN.md §2 and docs/deployment.md\n{r.stdout}{r.stderr[-2000:]}"
        )
    else:
        assert r.returncode == 0, r.stderr[-2000:]
        assert "ran [0.5 1. ]" in r.stdout
