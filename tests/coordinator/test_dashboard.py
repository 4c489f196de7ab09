"""The dashboard's HTTP side (Flask test client): authentication, roles, CSRF, throttling,
job control, prediction, downloads, configuration and bad input."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coordinator.dashboard.app import AppConfig, create_app
from coordinator.dashboard.auth import AuthConfig
from coordinator.monitoring.view import JobView
from edge_client.data.registry import DATASETS, load_dataset
from edge_client.errors import ConfigError
from edge_client.protocol import JobControl
from edge_client.trainable_model import TrainableModel
from tests.coordinator.job_messages import (
    T0,
    feed,
    retained_state,
    unsigned_paused_with_rejections,
)

ADMIN = "admin-secret-1234"
VIEWER = "viewer-secret-5678"
FASHION = DATASETS["fashion-mnist"].label_names


def fashion_png(index: int = 0) -> tuple[bytes, int]:
    """A Fashion-MNIST test image as PNG bytes, and its label."""
    test = load_dataset("fashion-mnist", "test")
    buf = io.BytesIO()
    Image.fromarray(test.x[index, :, :, 0]).save(buf, format="PNG")
    return buf.getvalue(), int(test.y[index])


class Controls:
    """Stands in for JobFollower.publish_control."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, state: str, detail: str) -> JobControl:
        self.calls.append((state, detail))
        return JobControl("demo", state, T0, detail)


def make_client(view: JobView | None = None, **app_config):
    if view is None:
        view = JobView("demo", broker="mqtt://test:1883")
        feed(view, retained_state(), retained=True)
    controls = Controls()
    app = create_app(
        view, AuthConfig(ADMIN, VIEWER), control=controls, config=AppConfig(**app_config)
    )
    return app.test_client(), controls, view


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def login(client, token: str) -> str:
    """Log in through the form; returns the page's CSRF token."""
    r = client.post("/login", data={"token": token})
    assert r.status_code == 302 and r.headers["Location"].endswith("/")
    page = client.get("/").get_data(as_text=True)
    return re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)


# -- authentication and roles -------------------------------------------------------------


def test_nothing_is_served_without_a_valid_token():
    client, _, _ = make_client()
    assert client.get("/healthz").status_code == 200  # for load balancers
    page = client.get("/")
    assert page.status_code == 302 and page.headers["Location"].endswith("/login")
    for path in ("/api/state", "/api/config", "/api/model", "/api/weights"):
        r = client.get(path)
        assert r.status_code == 401 and "log in first" in r.get_json()["error"]
    wrong = client.get("/api/state", headers=bearer("not-the-token"))
    assert wrong.status_code == 401 and wrong.get_json() == {"error": "wrong token"}
    basic = client.get("/api/state", headers={"Authorization": f"Basic {ADMIN}"})
    assert basic.status_code == 401


def test_bearer_tokens_give_their_role():
    client, _, _ = make_client()
    viewer = client.get("/api/state", headers=bearer(VIEWER)).get_json()
    admin = client.get("/api/state", headers=bearer(ADMIN)).get_json()
    assert viewer["role"] == "viewer" and admin["role"] == "admin"
    assert admin["round"]["round"] == 2 and len(admin["devices"]) == 2


def test_login_form_sets_a_session_and_a_wrong_token_is_refused():
    client, _, _ = make_client()
    wrong = client.post("/login", data={"token": "guess-guess"})
    assert wrong.status_code == 401 and "wrong token" in wrong.get_data(as_text=True)
    login(client, VIEWER)
    page = client.get("/").get_data(as_text=True)
    assert 'data-role="viewer"' in page and "btn-stop" not in page and "btn-pause" not in page
    client.post("/logout", data={"csrf": re.search(r'name="csrf" value="([^"]+)"', page)[1]})
    assert client.get("/api/state").status_code == 401
    login(client, ADMIN)
    page = client.get("/").get_data(as_text=True)
    assert 'data-role="admin"' in page and "btn-stop" in page and "btn-resume" in page


def test_repeated_wrong_tokens_are_throttled():
    client, _, _ = make_client()
    codes = [client.post("/login", data={"token": f"guess-{i:04d}"}).status_code for i in range(11)]
    assert codes[:10] == [401] * 10 and codes[10] == 429
    assert client.post("/login", data={"token": ADMIN}).status_code == 429  # even the right one


def test_tokens_never_reach_the_logs(caplog):
    caplog.set_level(logging.DEBUG)
    client, _, _ = make_client()
    login(client, ADMIN)
    client.post("/login", data={"token": VIEWER + "x"})
    client.get("/api/state", headers=bearer(VIEWER))
    client.post("/api/control", json={"state": "paused"}, headers=bearer(ADMIN))
    assert caplog.text and ADMIN not in caplog.text and VIEWER not in caplog.text


def test_pages_carry_security_headers():
    client, _, _ = make_client()
    r = client.get("/api/state", headers=bearer(VIEWER))
    assert "script-src 'self'" in r.headers["Content-Security-Policy"]
    assert r.headers["X-Frame-Options"] == "DENY" and r.headers["Cache-Control"] == "no-store"


def test_state_and_page_carry_signing_pause_and_rejected_updates():
    # Prepare: an --unsigned job, paused, whose round 1 rejected two updates
    view = JobView("demo", broker="mqtt://test:1883")
    feed(view, retained_state() + unsigned_paused_with_rejections(), retained=True)
    client, _, _ = make_client(view)
    # Execute
    state = client.get("/api/state", headers=bearer(VIEWER)).get_json()
    login(client, VIEWER)
    page = client.get("/").get_data(as_text=True)
    # Assert: what the page's script shows
    control = state["control"]
    assert control["signed"] is False and control["by"] == "dashboard admin at 10.0.0.5"
    assert control["until"] == T0 + 600
    [round1] = state["history"]
    assert round1["rejected"] == 2 and round1["contested"] == ["pi-01"]
    assert [(r["device"], r["sender"], r["reason"], r["counted"]) for r in state["rejections"]] == [
        ("pi-02", "pi-02", "weight share 0.9 over the cap 0.5", True),
        ("pi-03", "mallory", "sender is not the topic's device", False),
    ]
    # and where it shows it: the badge (hidden until the state says unsigned) and the panel
    assert re.search(
        r'<span id="job-unsigned" class="badge unsigned"[^>]* hidden>unsigned job<', page
    )
    assert '<table id="rejections"' in page and "<th>Rejected</th>" not in page
    assert '<th class="num">Rejected</th>' in page


# -- job control ----------------------------------------------------------------------------


def test_a_viewer_cannot_control_the_job():
    client, controls, _ = make_client()
    r = client.post("/api/control", json={"state": "stopped"}, headers=bearer(VIEWER))
    assert r.status_code == 403 and "viewers cannot control the job" in r.get_json()["error"]
    csrf = login(client, VIEWER)
    r = client.post("/api/control", json={"state": "stopped"}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 403
    assert controls.calls == []


def test_an_admin_pauses_resumes_and_stops():
    client, controls, _ = make_client()
    for state in ("paused", "running", "stopped"):
        r = client.post("/api/control", json={"state": state}, headers=bearer(ADMIN))
        assert r.status_code == 200 and r.get_json()["state"] == state
    assert controls.calls == [
        ("paused", "from the dashboard"),
        ("running", "from the dashboard"),
        ("stopped", "from the dashboard"),
    ]
    bad = client.post("/api/control", json={"state": "exploded"}, headers=bearer(ADMIN))
    assert bad.status_code == 400 and "state must be one of" in bad.get_json()["error"]


def test_session_posts_need_the_csrf_token():
    client, controls, _ = make_client()
    csrf = login(client, ADMIN)
    forged = client.post("/api/control", json={"state": "paused"})
    assert forged.status_code == 403 and "CSRF" in forged.get_json()["error"]
    ok = client.post("/api/control", json={"state": "paused"}, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200 and controls.calls == [("paused", "from the dashboard")]


def test_control_of_an_unseen_or_stopped_job_is_refused_clearly():
    empty, controls, _ = make_client(JobView("ghost"))
    r = empty.post("/api/control", json={"state": "paused"}, headers=bearer(ADMIN))
    assert r.status_code == 409 and "job 'ghost' has not been seen" in r.get_json()["error"]
    view = JobView("demo")
    feed(view, [("fl/v1/demo/control", JobControl("demo", "stopped", T0).to_json(), True)])
    stopped, _, _ = make_client(view)
    r = stopped.post("/api/control", json={"state": "running"}, headers=bearer(ADMIN))
    assert r.status_code == 409 and "is stopped" in r.get_json()["error"]
    assert controls.calls == []


# -- prediction, downloads, configuration ------------------------------------------------------


@pytest.fixture(scope="module")
def real_model(export_dir) -> Path:
    return export_dir("mlp", "sgd", lr=0.05, label_names=FASHION)


def view_with_model(model_dir: Path, weights=None) -> JobView:
    tflite = (model_dir / "model.tflite").read_bytes()
    manifest = json.loads((model_dir / "manifest.json").read_text())
    weights = weights or TrainableModel(tflite, _manifest(manifest)).get_weights()
    view = JobView("demo")
    feed(view, retained_state(tflite=tflite, manifest=manifest, weights=weights), retained=True)
    return view


def _manifest(d):
    from edge_client.manifest import Manifest

    return Manifest.from_dict(d)


def test_prediction_with_the_current_global_model(real_model):
    # Prepare: global weights that are not the model's initial ones
    tflite = (real_model / "model.tflite").read_bytes()
    manifest = _manifest(json.loads((real_model / "manifest.json").read_text()))
    initial = TrainableModel(tflite, manifest).get_weights()
    changed = {k: v * 0.5 for k, v in initial.items()}
    client, _, _ = make_client(view_with_model(real_model, changed))
    png, _ = fashion_png(0)
    # Execute
    r = client.post(
        "/api/predict",
        data={"image": (io.BytesIO(png), "boot.png")},
        headers=bearer(VIEWER),  # read-only users may classify
    )
    # Assert: probabilities of the global weights, not the model's initial weights
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    probs = [p["p"] for p in body["probabilities"]]
    assert len(probs) == 10 and abs(sum(probs) - 1) < 1e-4 and probs == sorted(probs, reverse=True)
    assert body["label"] in FASHION and body["weights"] == "global weights of round 2"
    assert body["preview"].startswith("data:image/png;base64,")
    reference = TrainableModel(tflite, manifest)
    reference.set_weights(changed)
    image = np.asarray(Image.open(io.BytesIO(png)), np.float32)[None, :, :, None] / 255
    expected = reference.predict(image)[0]
    assert body["index"] == int(np.argmax(expected))
    assert abs(body["confidence"] - float(expected.max())) < 1e-5


def test_bad_uploads_get_a_clear_message_and_the_server_keeps_serving(real_model):
    client, _, _ = make_client(view_with_model(real_model), max_upload_bytes=100_000)

    def post(data: bytes, name: str = "x.png"):
        return client.post(
            "/api/predict", data={"image": (io.BytesIO(data), name)}, headers=bearer(ADMIN)
        )

    not_image = post(b"this is a text file, not a picture", "notes.txt")
    assert not_image.status_code == 400
    assert not_image.get_json()["error"] == "the file is not an image: upload a PNG or JPEG image"
    empty = post(b"")
    assert empty.status_code == 400 and "empty" in empty.get_json()["error"]
    huge = post(b"\x89PNG" + bytes(200_000))
    assert huge.status_code == 413
    assert huge.get_json()["error"] == "the upload is too large: the limit is 0.1 MB"
    truncated = post(fashion_png(1)[0][:60])
    assert truncated.status_code == 400 and "cannot be decoded" in truncated.get_json()["error"]
    none = client.post("/api/predict", data={}, headers=bearer(ADMIN))
    assert none.status_code == 400 and "multipart field 'image'" in none.get_json()["error"]
    # a big RGB JPEG photo is converted and resized to the model's 28x28x1
    photo = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 30, 30)).save(photo, format="JPEG")
    assert post(photo.getvalue(), "photo.jpg").status_code == 200
    assert client.get("/api/state", headers=bearer(ADMIN)).status_code == 200


def test_prediction_without_a_model_says_so():
    client, _, _ = make_client(JobView("demo"))
    r = client.post(
        "/api/predict",
        data={"image": (io.BytesIO(fashion_png(0)[0]), "a.png")},
        headers=bearer(ADMIN),
    )
    assert r.status_code == 409
    assert r.get_json()["error"] == "no model published for job 'demo' yet: is the job running?"


def test_downloads_and_configuration(real_model):
    view = view_with_model(real_model)
    view.set_config({"job": "demo", "rounds": 3, "strategy": "fedavg"})
    client, _, _ = make_client(view)
    model = client.get("/api/model", headers=bearer(VIEWER))
    assert model.status_code == 200 and model.data == (real_model / "model.tflite").read_bytes()
    assert "attachment" in model.headers["Content-Disposition"]
    weights = np.load(io.BytesIO(client.get("/api/weights", headers=bearer(VIEWER)).data))
    assert set(weights.files) == {w["name"] for w in view.model_payload()[1]["weights"]}
    manifest = client.get("/api/manifest", headers=bearer(VIEWER)).get_json()
    assert manifest["label_names"] == list(FASHION)
    config = client.get("/api/config", headers=bearer(VIEWER)).get_json()
    assert config["settings"]["rounds"] == 3 and config["manifest"]["architecture"] == "mlp"
    assert config["round_hyperparams"] == {"epochs": 1, "lr": 0.05}
    empty, _, _ = make_client(JobView("demo"))
    missing = empty.get("/api/model", headers=bearer(VIEWER))
    assert missing.status_code == 404 and "no model published" in missing.get_json()["error"]


# -- configuration of the tokens ----------------------------------------------------------------


def test_tokens_come_from_flag_file_or_environment(tmp_path):
    f = tmp_path / "admin.token"
    f.write_text("from-the-file-123\n")
    env = {"EDGEFL_DASHBOARD_ADMIN_TOKEN": "from-the-env-1234"}
    assert (
        AuthConfig.resolve(
            admin_token="from-flag-1234", admin_token_file=str(f), environ=env
        ).admin_token
        == "from-flag-1234"
    )
    assert (
        AuthConfig.resolve(admin_token_file=str(f), environ=env).admin_token == "from-the-file-123"
    )
    assert AuthConfig.resolve(environ=env).admin_token == "from-the-env-1234"
    assert "from-the-env" not in repr(AuthConfig.resolve(environ=env))
    with pytest.raises(ConfigError, match="needs an admin token"):
        AuthConfig.resolve(environ={})
    with pytest.raises(ConfigError, match="must differ"):
        AuthConfig.resolve(admin_token="same-token-1", viewer_token="same-token-1", environ={})
    with pytest.raises(ConfigError, match="8-4096 characters"):
        AuthConfig.resolve(admin_token="short", environ={})
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        AuthConfig.resolve(admin_token_file=str(tmp_path / "empty"), environ={})
    with pytest.raises(ConfigError, match="cannot read the admin token file"):
        AuthConfig.resolve(admin_token_file=str(tmp_path / "missing"), environ={})
