"""The dashboard in a real headless Chromium (Debian's chromium + chromium-driver, Selenium),
attached with ``run_job(dashboard=...)`` to a real job: a coordinator, three simulated boards
(`fedge run` processes) and Mosquitto.

The test holds the coordinator inside its ``on_round`` callback after round 1 (to pause the
job between rounds from the browser) and after the last round (so the finished job is still
on screen while the browser checks charts and classifies an image). Screenshots go to the
test's tmp dir; with EDGEFL_UPDATE_DOCS_IMAGES=1 also the final ones to docs/img/ (docs/dashboard.md).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from coordinator.config import JobConfig
from coordinator.dashboard.auth import AuthConfig
from coordinator.dashboard.server import DashboardSettings, open_dashboard
from coordinator.job import run_job
from coordinator.simulation import ROOT, FleetConfig, fleet_processes
from edge_client.data.registry import DATASETS, load_dataset
from edge_client.protocol import JobControl, Topics
from edge_client.transport import BrokerConfig
from tests.coordinator.job_messages import retained_state, unsigned_paused_with_rejections
from tests.coordinator.secure_support import real_boards
from tests.fixtures.brokers import free_port, mqtt_client, wait_for_port

pytestmark = pytest.mark.slow  # over ~5 s: left out of the fast loop (pytest -m "not slow")

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ADMIN, VIEWER = "admin-token-e2e-1", "viewer-token-e2e-2"
DOCS_IMG = ROOT / "docs" / "img"
PHONE, DESKTOP = (390, 844), (1280, 900)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no internet here: no update or metrics pings
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser() -> Iterator[object]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium and chromium-driver are required: run scripts/setup.sh")
    os.environ["SE_OFFLINE"] = "1"  # Selenium Manager must not try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="edgefl-chromium-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={profile}", "--window-size=1280,900"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# -- browser helpers ----------------------------------------------------------------------------


def viewport(driver, width: int, height: int) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    time.sleep(0.4)  # relayout; charts redraw after a 150 ms debounce


def shoot(driver, path: Path, width: int, height: int | None = None) -> Path:
    """Screenshot at ``width``; the whole page when ``height`` is None."""
    viewport(driver, width, height or 900)
    if height is None:
        full = driver.execute_script("return document.documentElement.scrollHeight")
        viewport(driver, width, int(full))
    driver.save_screenshot(str(path))
    return path


def wait_until(driver, condition, timeout: float = 60, what: str = "") -> object:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        lambda d: condition(d), message=what
    )


def css(driver, selector: str) -> list:
    return driver.find_elements("css selector", selector)


def text_of(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).text


def log_in(driver, base: str, token: str) -> None:
    driver.get(f"{base}/")
    wait_until(driver, lambda d: css(d, "#token"), 20, "login form")
    driver.find_element("id", "token").send_keys(token)
    driver.find_element("id", "login-submit").click()
    wait_until(driver, lambda d: css(d, "#devices"), 20, "dashboard page after login")


def browser_post_control(driver, state: str) -> list:
    """POST /api/control from the page itself (session cookie + CSRF), as its buttons do."""
    return driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        fetch('/api/control', {method: 'POST', credentials: 'same-origin',
          headers: {'Content-Type': 'application/json',
                    'X-CSRF-Token': document.querySelector('meta[name=csrf-token]').content},
          body: JSON.stringify({state: arguments[0]})})
        .then(r => r.json().then(b => done([r.status, b.error || b.state])));
        """,
        state,
    )


def bearer_post(url: str, token: str, body: dict) -> int:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def page_errors(driver) -> list[str]:
    """JavaScript exceptions and CSP violations (HTTP 4xx answers are expected here)."""
    entries = driver.get_log("browser")
    return [
        e["message"]
        for e in entries
        if e["level"] == "SEVERE" and "the server responded with a status of 4" not in e["message"]
    ]


def small_png(src: Path, dest: Path) -> None:
    """A commit-friendly copy: 128-colour palette PNG."""
    with Image.open(src) as im:
        im.convert("RGB").quantize(colors=128).save(dest, optimize=True)


# -- the test -------------------------------------------------------------------------------


class HeldJob:
    """run_job in a thread, held in on_round after round 1 and after the last round."""

    def __init__(self, cfg: JobConfig, broker: BrokerConfig, settings: DashboardSettings):
        self.cfg, self.broker, self.settings = cfg, broker, settings
        self.done = {r: threading.Event() for r in (1, cfg.rounds)}
        self.release = {r: threading.Event() for r in (1, cfg.rounds)}
        self.result: object = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _on_round(self, metrics: dict) -> None:
        r = metrics["round"]
        if r in self.done:
            self.done[r].set()
            self.release[r].wait(120)

    def _run(self) -> None:
        try:
            self.result = run_job(
                self.cfg,
                broker=self.broker,
                on_round=self._on_round,
                dashboard=self.settings,
                final_models=False,
            )
        except BaseException as exc:  # reported by the test
            self.result = exc

    def release_all(self) -> None:
        for e in self.release.values():
            e.set()


def rounds_in(run_dir: Path) -> int:
    p = run_dir / "metrics.jsonl"
    return len(p.read_text().splitlines()) if p.exists() else 0


def test_dashboard_of_a_real_job_in_chromium(
    browser, mosquitto_broker, export_dir, tmp_path: Path
) -> None:
    # Prepare: a Fashion-MNIST image to classify, the job, the dashboard, three boards
    driver = browser
    shots = tmp_path / "screenshots"
    shots.mkdir()
    test_set = load_dataset("fashion-mnist", "test")
    image = tmp_path / "ankle-boot.png"
    Image.fromarray(test_set.x[0, :, :, 0]).save(image)  # test image 0 is an ankle boot
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    labels = DATASETS["fashion-mnist"].label_names
    model_dir = export_dir("mlp", "sgd", lr=0.05, label_names=labels)
    run_dir = tmp_path / "run"
    cfg = JobConfig(
        job="dash",
        rounds=3,
        min_devices=3,
        run_dir=str(run_dir),
        model_dir=str(model_dir),
        optimizer="sgd",
        lr=0.05,
        epochs=1,
        test_data="fashion-mnist",
        round_timeout=60,
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = DashboardSettings("127.0.0.1", port, AuthConfig(ADMIN, VIEWER))
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    job = HeldJob(cfg, broker, settings)
    with fleet_processes(FleetConfig(devices=3), cfg, broker, tmp_path):
        job.thread.start()
        try:
            wait_for_port("127.0.0.1", port, timeout=30)
            _as_viewer(driver, base, shots, image, not_image)
            assert job.done[1].wait(90), "round 1 did not finish"
            _pause_and_resume(driver, base, job, run_dir, shots)
            assert job.done[cfg.rounds].wait(90), "the last round did not finish"
            _finished_job(driver, base, image, labels, shots)
            errors = page_errors(driver)  # while the dashboard is still up
        finally:
            job.release_all()
            job.thread.join(120)
    # Assert: the job ran to its end with the dashboard attached, and the page had no errors
    assert not isinstance(job.result, BaseException), repr(job.result)
    assert job.result.round == 3 and job.result.finished
    assert errors == []
    if os.environ.get("EDGEFL_UPDATE_DOCS_IMAGES"):  # refresh docs/img only when asked
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        for name in ("desktop", "phone-top", "phone-devices", "phone-predict", "login-phone"):
            small_png(shots / f"dashboard-{name}.png", DOCS_IMG / f"dashboard-{name}.png")


def test_unsigned_job_and_rejected_updates_in_chromium(browser, mosquitto_broker) -> None:
    # Prepare: the retained state of an --unsigned job whose round 1 rejected two updates
    driver = browser
    with mqtt_client(mosquitto_broker) as client:
        for topic, payload, retain in retained_state() + unsigned_paused_with_rejections():
            client.publish_wait(topic, payload, qos=1, retain=retain)
    settings = DashboardSettings("127.0.0.1", 0, AuthConfig(ADMIN, VIEWER))
    with open_dashboard(settings, BrokerConfig.from_url(mosquitto_broker.url), "demo") as server:
        # Execute
        log_in(driver, server.url, VIEWER)
        viewport(driver, *DESKTOP)
        wait_until(driver, lambda d: css(d, "#rejections tr.rejection"), 20, "rejections")
        # Assert: the badge, the panel (newest first, no blame on pi-03), the round's counts
        badge = driver.find_element("id", "job-unsigned")
        assert badge.is_displayed() and badge.text == "unsigned job"
        rows = [
            [td.text for td in tr.find_elements("css selector", "td")]
            for tr in css(driver, "#rejections tr.rejection")
        ]
        assert rows == [
            ["1", "update under pi-03's name from mallory", "sender is not the topic's device"],
            ["1", "pi-02", "weight share 0.9 over the cap 0.5 (counted as its reply)"],
        ]
        cell = css(driver, '#rounds tr.round td[data-label="Rejected"]')[0]
        assert cell.text == "2 rejected, 1 contested"
        point = css(driver, "#chart-accuracy circle.pt title")[0]
        assert point.get_attribute("textContent").endswith("(2 rejected, 1 contested)")
        # a signed job's control: the badge goes
        signed = JobControl("demo", "running", time.time(), signed=True)
        with mqtt_client(mosquitto_broker) as client:
            client.publish_wait(Topics("demo").control, signed.to_json(), qos=1, retain=True)
        wait_until(driver, lambda d: not badge.is_displayed(), 20, "no unsigned badge")
        errors = page_errors(driver)
    assert errors == []


def test_secure_round_outcome_in_chromium(
    browser, mosquitto_broker, export_dir, tmp_path: Path
) -> None:
    # Prepare: a one-round secure-aggregation job, three real boards, the dashboard attached
    driver = browser
    cfg = JobConfig(
        job="dash-secure",
        rounds=1,
        min_devices=3,
        run_dir=str(tmp_path / "run"),
        model_dir=str(export_dir("mlp")),
        epochs=1,
        lr=0.05,
        round_timeout=120,
        wait_timeout=90,
        secure_aggregation=True,
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = DashboardSettings("127.0.0.1", port, AuthConfig(ADMIN, VIEWER))
    broker = BrokerConfig.from_url(mosquitto_broker.url)
    job = HeldJob(cfg, broker, settings)  # held after its round: the page stays up
    with real_boards(cfg, broker, tmp_path, 3):
        job.thread.start()
        try:
            # Execute: a viewer follows the job until its round is in the rounds table
            wait_for_port("127.0.0.1", port, timeout=60)
            log_in(driver, base, VIEWER)
            viewport(driver, *DESKTOP)
            assert job.done[1].wait(240), "the secure round did not finish"
            cells = '#rounds tbody tr.round td[data-label="Devices"]'
            wait_until(driver, lambda d: css(d, cells), 30, "the finished round's row")
            devices = css(driver, cells)[0].text
            round_line = text_of(driver, "stat-round-sub")
            state = json.loads(_get(f"{base}/api/state", VIEWER))
            errors = page_errors(driver)
        finally:
            job.release_all()
            job.thread.join(120)
    # Assert: the round's row says it was secure, with /api/state's threshold (t=2 of 3)
    assert not isinstance(job.result, BaseException), repr(job.result)
    (h,) = state["history"]
    assert h["secagg"]["stage"] == "done" and h["secagg"]["failed"] is None
    assert devices == f"3 (secure, t={h['secagg']['threshold']})"
    # and the round line, every board's message of every stage
    assert round_line.endswith("; secure: closed (keys 3 · shares 3 · masked 3 · unmask 3)")
    assert errors == []


def _as_viewer(driver, base: str, shots: Path, image: Path, not_image: Path) -> None:
    """A viewer sees the devices, has no control buttons and is refused by the API."""
    viewport(driver, *PHONE)
    driver.get(f"{base}/")
    wait_until(driver, lambda d: css(d, "#token"), 20, "login page")
    driver.find_element("id", "token").send_keys("wrong-token-0")
    driver.find_element("id", "login-submit").click()
    wait_until(driver, lambda d: css(d, "#login-error"), 10, "wrong-token message")
    assert text_of(driver, "login-error") == "wrong token"
    shoot(driver, shots / "dashboard-login-phone.png", *PHONE)
    log_in(driver, base, VIEWER)
    viewport(driver, *PHONE)
    wait_until(driver, lambda d: len(css(d, "#devices tbody tr.device")) == 3, 90, "3 devices")
    names = [e.text for e in css(driver, '#devices td[data-label="Device"]')]
    assert names == ["sim-00", "sim-01", "sim-02"]
    assert text_of(driver, "role") == "viewer"
    assert css(driver, "#btn-stop") == [] and css(driver, "#controls") == []
    assert browser_post_control(driver, "stopped")[0] == 403
    assert bearer_post(f"{base}/api/control", VIEWER, {"state": "stopped"}) == 403
    # a file that is not an image: a clear message, and everything keeps running
    driver.find_element("id", "predict-file").send_keys(str(not_image))
    driver.find_element("id", "predict-submit").click()
    wait_until(driver, lambda d: css(d, "#predict-error"), 20, "upload error")
    assert "not an image" in text_of(driver, "predict-error")
    big = not_image.with_name("huge.png")
    big.write_bytes(b"\x89PNG" + bytes(4_100_000))  # over the default 4 MB limit
    driver.find_element("id", "predict-file").send_keys(str(big))
    driver.find_element("id", "predict-submit").click()
    wait_until(driver, lambda d: "too large" in text_of(d, "predict-result"), 20, "size error")
    assert text_of(driver, "predict-error") == "The file is too large: the limit is 4 MB."
    shoot(driver, shots / "viewer-phone-top.png", *PHONE)


def _pause_and_resume(driver, base: str, job: HeldJob, run_dir: Path, shots: Path) -> None:
    """An admin pauses the job between rounds 1 and 2, checks it waits, then resumes."""
    driver.find_element("id", "logout").click()
    # the logout form's POST must land before the next page load, or that load cancels it
    # and the viewer stays logged in (seen on a loaded machine)
    wait_until(driver, lambda d: css(d, "#token"), 30, "login form after logging out")
    log_in(driver, base, ADMIN)
    viewport(driver, *DESKTOP)
    wait_until(driver, lambda d: d.find_element("id", "btn-pause").is_enabled(), 20, "pause")
    driver.find_element("id", "btn-pause").click()
    wait_until(driver, lambda d: text_of(d, "job-state") == "paused", 20, "paused state")
    assert not driver.find_element("id", "btn-pause").is_enabled()
    time.sleep(0.3)  # the coordinator's own subscription gets the retained message too
    # Let the coordinator go on. Round 1's metrics come out once it is scored, on the side
    # (coordinator/scoring.py), so round 2 may be under way already: the pause holds the job
    # at the next round boundary, 1 or 2 rounds done, and no round starts after it
    job.release[1].set()
    done = _settled(base, run_dir, quiet_s=3.0, timeout=90)
    assert done in (1, 2)
    state = json.loads(_get(f"{base}/api/state", ADMIN))
    assert state["round"]["round"] == done and state["round"]["state"] == "closed"
    shoot(driver, shots / "admin-paused-desktop.png", *DESKTOP)
    wait_until(driver, lambda d: d.find_element("id", "btn-resume").is_enabled(), 10, "resume")
    driver.find_element("id", "btn-resume").click()
    wait_until(driver, lambda d: text_of(d, "job-state") == "running", 20, "running again")


def _settled(base: str, run_dir: Path, quiet_s: float, timeout: float) -> int:
    """Rounds done once the job holds still: the last round closed, as many rounds in
    metrics.jsonl, and nothing new for ``quiet_s`` (a round about to open would show)."""
    end, since, last = time.monotonic() + timeout, time.monotonic(), None
    while time.monotonic() < end:
        r = json.loads(_get(f"{base}/api/state", ADMIN))["round"]
        now = (r["round"], r["state"], rounds_in(run_dir))
        if now != last or now[1] != "closed" or now[0] != now[2]:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return now[2]
        time.sleep(0.2)
    raise AssertionError(f"the paused job did not hold still: {last}")


def _finished_job(driver, base: str, image: Path, labels, shots: Path) -> None:
    """Charts show every round; the uploaded image gets a prediction with probabilities."""
    viewport(driver, *DESKTOP)
    points = "#chart-accuracy circle.pt"
    wait_until(driver, lambda d: len(css(d, points)) == 3, 30, "3 points on the accuracy chart")
    assert [int(c.get_attribute("data-round")) for c in css(driver, points)] == [1, 2, 3]
    assert len(css(driver, "#chart-loss circle.pt")) == 3
    assert len(css(driver, "#rounds tbody tr.round")) == 3
    accuracy = float(css(driver, points)[-1].get_attribute("data-value"))
    assert accuracy > 60, accuracy  # percent, after 3 rounds of the mlp
    driver.find_element("id", "predict-file").send_keys(str(image))
    driver.find_element("id", "predict-submit").click()
    wait_until(driver, lambda d: css(d, "#predicted-label"), 30, "a prediction")
    assert text_of(driver, "predicted-label") in labels
    bars = css(driver, "#probabilities li")
    assert len(bars) == 10
    probs = [float(b.get_attribute("data-p")) for b in bars]
    assert abs(sum(probs) - 1) < 1e-3 and probs == sorted(probs, reverse=True)
    fill, track = (
        driver.execute_script(f"return document.querySelector('#probabilities li {s}').offsetWidth")
        for s in (".fill", ".bar")
    )
    assert abs(fill / track - probs[0]) < 0.02, (fill, track, probs[0])  # the bar is drawn
    wait_until(driver, lambda d: css(d, "#config-list"), 10, "job configuration")
    driver.execute_script("window.scrollTo(0, 0)")
    shoot(driver, shots / "dashboard-desktop.png", DESKTOP[0])
    shoot(driver, shots / "dashboard-phone.png", PHONE[0])
    viewport(driver, *PHONE)
    for name, anchor in (("top", "job-name"), ("devices", "devices"), ("predict", "predict-card")):
        driver.execute_script(
            "const card = document.getElementById(arguments[0]).closest('section, .card');"
            "const bar = document.querySelector('.topbar').offsetHeight;"
            "const top = card ? card.getBoundingClientRect().top + window.scrollY - bar - 8 : 0;"
            "window.scrollTo(0, arguments[0] === 'job-name' ? 0 : top);",
            anchor,
        )
        time.sleep(0.2)
        driver.save_screenshot(str(shots / f"dashboard-phone-{name}.png"))
    viewport(driver, *PHONE)
    overflow = driver.execute_script("return document.documentElement.scrollWidth")
    assert overflow <= PHONE[0], f"the page is {overflow} px wide on a {PHONE[0]} px phone"


def _get(url: str, token: str) -> bytes:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read()
