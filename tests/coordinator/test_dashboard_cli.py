"""The dashboard's command lines against a real Mosquitto: ``fedcoord dashboard`` standalone
(a job that does not exist, bad input over real HTTP, a missing token) and
``fedcoord start --dashboard`` (the dashboard inside the coordinator's process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from coordinator.simulation import ROOT
from tests.coordinator.test_dashboard import ADMIN, FASHION, bearer
from tests.fixtures.brokers import free_port, wait_for_port


@pytest.fixture(scope="module")
def real_model(export_dir):
    return export_dir("mlp", "sgd", lr=0.05, label_names=FASHION)


# -- standalone, against a real broker ------------------------------------------------------------


def http(url: str, token: str, data: bytes | None = None, ctype: str = "application/json"):
    req = urllib.request.Request(url, data=data, headers=bearer(token))
    if data is not None:
        req.add_header("Content-Type", ctype)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_standalone_dashboard_of_a_job_that_does_not_exist(mosquitto_broker, tmp_path):
    # Prepare
    token_file = tmp_path / "admin.token"
    token_file.write_text(ADMIN + "\n")
    port = free_port()
    cmd = [sys.executable, "-m", "coordinator.cli", "dashboard", "--broker", mosquitto_broker.url]
    cmd += [
        "--job",
        "ghost",
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-token-file",
        str(token_file),
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_port("127.0.0.1", port, timeout=20)
        base = f"http://127.0.0.1:{port}"
        # Execute
        state = http(f"{base}/api/state", ADMIN)
        control = http(f"{base}/api/control", ADMIN, json.dumps({"state": "stopped"}).encode())
        boundary = "xXx"
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + bytes(5_000_000)
            + f"\r\n--{boundary}--\r\n".encode()
        )
        too_big = http(
            f"{base}/api/predict", ADMIN, body, f"multipart/form-data; boundary={boundary}"
        )
        wrong = http(f"{base}/api/state", "wrong-token-123")
        still = http(f"{base}/api/state", ADMIN)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    # Assert: the dashboard runs, says the job is silent, refuses to control it
    assert state[0] == 200 and state[1]["connected"] and not state[1]["seen"]
    assert control == (
        409,
        {"error": "job 'ghost' has not been seen on the broker: nothing to control"},
    )
    assert too_big == (413, {"error": "the upload is too large: the limit is 4 MB"})
    assert wrong == (401, {"error": "wrong token"})
    assert still[0] == 200
    assert f"dashboard of job ghost on http://127.0.0.1:{port}" in out
    assert ADMIN not in out + err and "Traceback" not in err


def test_dashboard_needs_an_admin_token(mosquitto_broker):
    r = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "dashboard", "--broker", mosquitto_broker.url]
        + ["--job", "demo"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if "DASHBOARD" not in k},
    )
    assert r.returncode == 1 and r.stderr.startswith("error: the dashboard needs an admin token")


def test_start_refuses_dashboard_tokens_without_dashboard(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "coordinator.cli", "start", "--admin-token", "x" * 12]
        + ["--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert r.returncode == 1 and "without --dashboard HOST:PORT" in r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_start_serves_the_dashboard_of_its_job_while_it_runs(
    mosquitto_broker, real_model, tmp_path
):
    # Prepare: a job no device joins; it gives up after --wait-timeout
    port = free_port()
    cmd = [sys.executable, "-m", "coordinator.cli", "start", "--broker", mosquitto_broker.url]
    cmd += ["--job", "lonely", "--model-dir", str(real_model), "--run-dir", str(tmp_path / "run")]
    cmd += ["--wait-timeout", "6", "--dashboard", f"127.0.0.1:{port}"]
    env = {**os.environ, "EDGEFL_DASHBOARD_ADMIN_TOKEN": ADMIN}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # Execute
        wait_for_port("127.0.0.1", port, timeout=30)
        deadline = time.monotonic() + 10
        while True:
            status, state = http(f"http://127.0.0.1:{port}/api/state", ADMIN)
            if state.get("model") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # Assert: the dashboard followed the job from inside the coordinator, then left with it
    assert status == 200 and state["seen"] and state["control"]["state"] == "running"
    assert state["model"]["architecture"] == "mlp"
    assert proc.returncode == 1 and "error: only 0 of 1 devices online" in err
    assert f"dashboard of job lonely on http://127.0.0.1:{port}" in err  # a log line
    assert ADMIN not in out + err
