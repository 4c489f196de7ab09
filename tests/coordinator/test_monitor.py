"""``fedcoord monitor`` and the JobView it shares with the dashboard: folding messages,
presence, rendering, and the command against a real Mosquitto (late join, --json, --once)."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

from coordinator.monitoring.follower import JobFollower
from coordinator.monitoring.render import render, sparkline
from coordinator.monitoring.view import JobView
from coordinator.simulation import ROOT
from edge_client.protocol import DeviceStatus, JobControl, Topics
from edge_client.transport import MemoryBus, MemoryTransport
from tests.coordinator.job_messages import (
    T0,
    feed,
    live_round_2,
    retained_state,
    unsigned_paused_with_rejections,
)
from tests.fixtures.brokers import mqtt_client


def fixed_view(job: str = "demo") -> JobView:
    return JobView(job, broker="mqtt://test:1883", clock=lambda: T0)


def test_view_joins_late_from_retained_state_then_follows_live_messages():
    # Prepare
    view = fixed_view()
    # Execute: the retained replay, then round 2's live traffic
    feed(view, retained_state(), retained=True)
    feed(view, live_round_2())
    s = view.snapshot()
    # Assert: round, control, model and global weights from retained topics
    assert s["seen"] and s["control"]["state"] == "running"
    assert s["round"]["round"] == 2 and s["round"]["state"] == "open"
    assert s["round"]["remaining_s"] == 30
    assert s["round"]["replied"] == ["pi-01"] and s["round"]["failed"] == ["pi-03"]
    assert s["model"]["architecture"] == "mlp" and s["global"]["round"] == 2
    # history: round 1 from the retained metrics
    assert [h["round"] for h in s["history"]] == [1]
    assert s["history"][0]["accuracy"] == 0.8123 and s["history"][0]["bytes_up"] == 2000
    # devices: presence from status (pi-02's Last Will), selection, replies, local metrics
    rows = {d["device"]: d for d in s["devices"]}
    assert set(rows) == {"pi-01", "pi-02", "pi-03"}
    assert rows["pi-01"]["presence"] == "online" and rows["pi-01"]["selected"]
    assert rows["pi-01"]["replied"] == "update" and rows["pi-01"]["loss"] == 0.42
    assert rows["pi-01"]["interpreter"] == "ai-edge-litert 2.3.0"
    assert rows["pi-02"]["presence"] == "offline" and rows["pi-02"]["detail"] == "connection lost"
    assert rows["pi-02"]["loss"] == 0.72 and rows["pi-02"]["replied"] == ""  # round 1 result
    assert rows["pi-03"]["replied"] == "failed" and rows["pi-03"]["failure"] == "out of memory"
    assert s["summary"] == {
        "devices": 3,
        "online": 2,
        "rounds_done": 1,
        "accuracy": 0.8123,
        "loss": 0.5432,
    }
    assert any("pi-03 failed round 2: out of memory" in e["text"] for e in s["events"])


def test_view_is_idempotent_for_duplicates_and_retained_copies():
    # Prepare
    view = fixed_view()
    feed(view, retained_state() + live_round_2())
    before = view.snapshot()
    # Execute: QoS 1 duplicates and a reconnect's retained replay
    feed(view, retained_state() + live_round_2())
    after = view.snapshot()
    # Assert: nothing changed but the message counters
    for key in ("round", "devices", "history", "control", "summary", "events", "model"):
        assert after[key] == before[key], key


def test_history_seeded_from_the_run_directory_still_takes_device_results():
    # Prepare: round 1 already known from metrics.jsonl
    view = fixed_view()
    view.seed_history(
        [
            {
                "round": 1,
                "accuracy": 0.8123,
                "loss": 0.5432,
                "participants": ["pi-01", "pi-02"],
                "bytes_up": 2000,
                "bytes_down": 2000,
                "duration_s": 1.5,
                "samples": 20000,
            }
        ]
    )
    # Execute: the same round arrives as the retained metrics message
    feed(view, retained_state(), retained=True)
    # Assert: one history row, and the per-device results of that message
    s = view.snapshot()
    assert [h["round"] for h in s["history"]] == [1]
    assert {d["device"]: d["loss"] for d in s["devices"]} == {"pi-01": 0.61, "pi-02": 0.72}


def test_view_marks_a_silent_heartbeating_device_stale():
    # Prepare: a device promising a status every 10 s
    now = [T0]
    view = JobView("demo", clock=lambda: now[0])
    status = DeviceStatus("pi-01", "idle", T0, heartbeat_s=10.0)
    feed(view, [(Topics("demo").status("pi-01"), status.to_json(), True)])
    assert view.snapshot()["devices"][0]["presence"] == "online"
    # Execute: four heartbeats missed
    now[0] = T0 + 40
    # Assert
    assert view.snapshot()["devices"][0]["presence"] == "stale"


def test_view_of_a_job_nobody_publishes_says_so():
    s = fixed_view("nope").snapshot()
    assert not s["seen"] and s["round"] is None and s["devices"] == [] and s["history"] == []
    assert "waiting for job 'nope'" in render(s)


def test_render_shows_round_devices_history_and_bytes():
    # Prepare
    view = fixed_view()
    feed(view, retained_state(), retained=True)
    feed(view, live_round_2())
    view.seed_history(
        [{"round": 0, "accuracy": 0.5, "loss": 1.2, "bytes_up": 10, "bytes_down": 20}]
    )
    # Execute
    text = render(view.snapshot(), width=120)
    # Assert
    assert (
        text.startswith("job demo  running  broker mqtt://test:1883 connected") is False
    )  # not connected
    assert "NOT CONNECTED" in text.splitlines()[0]
    assert (
        "round 2 open: 2 selected, 1 replied, 1 failed, deadline in 30 s  (epochs 1, lr 0.05)"
        in text
    )
    assert "devices: 2 online of 3" in text
    lines = {line.split()[0]: line for line in text.splitlines() if line.startswith("pi-")}
    assert "offline" in lines["pi-02"] and "online" in lines["pi-01"] and "*" in lines["pi-01"]
    assert "0.4200" in lines["pi-01"] and "86.00 %" in lines["pi-01"]
    assert "12,000" in lines["pi-01"] and "ai-edge-litert 2.3.0" in lines["pi-01"]
    assert "failed" in lines["pi-03"]
    assert "rounds: 2 finished" in text and "81.23 %" in text and "2.0 kB" in text
    assert "accuracy ▁█  81.23 %" in text


def test_view_and_render_show_signing_pause_and_rejected_updates():
    # Prepare: a signed job, then the --unsigned job paused with round 1's rejections
    view = fixed_view()
    signed = JobControl("demo", "running", T0 - 100, signed=True)
    feed(view, [*retained_state(), (Topics("demo").control, signed.to_json(), True)], retained=True)
    assert render(view.snapshot()).splitlines()[1] == "signed"
    # Execute
    feed(view, unsigned_paused_with_rejections(), retained=True)
    s = view.snapshot()
    text = render(s, width=120)
    # Assert: the snapshot
    assert s["control"]["signed"] is False and s["control"]["until"] == T0 + 600
    [h1] = s["history"]
    assert (h1["rejected"], h1["rejected_counted"], h1["bytes_rejected"]) == (2, 1, 1900)
    assert h1["contested"] == ["pi-01"]
    assert [(r["device"], r["sender"], r["round"]) for r in s["rejections"]] == [
        ("pi-02", "pi-02", 1),
        ("pi-03", "mallory", 1),
    ]
    # the screen: signing and the pause under the header, counts per round, the reasons
    lines = text.splitlines()
    clock = time.strftime("%H:%M:%S", time.localtime(T0 - 10))
    until = time.strftime("%H:%M:%S", time.localtime(T0 + 600))
    assert lines[1] == (
        f"UNSIGNED (--unsigned)  paused by dashboard admin at 10.0.0.5 at {clock}, "
        f"resumes by itself at {until}"
    )
    header = next(line for line in lines if line.startswith("ROUND"))
    assert header.split()[-2:] == ["REJECTED", "CONTESTED"]
    assert next(line for line in lines if line.startswith("1 ")).split()[-2:] == ["2", "1"]
    assert "rejected updates (latest 2):" in lines
    assert "round 1  pi-02: weight share 0.9 over the cap 0.5 (counted as its reply)" in lines
    assert "round 1  update under pi-03's name from mallory: sender is not the topic's device" in (
        lines
    )
    assert "round 1 done: accuracy 81.23 %, 1 update(s), 2 rejected" in text


def test_sparkline_scales_and_keeps_gaps():
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"  # 0.5 rounds to the 5th of 8 levels
    assert sparkline([None, 2.0, 2.0]) == " ▁▁"
    assert sparkline([]) == ""


def test_follower_publishes_operator_control_retained():
    # Prepare: a follower on an in-memory bus with a job already running
    bus = MemoryBus()
    bus.publish(Topics("demo").control, JobControl("demo", "running", T0).to_json(), retain=True)
    view = JobView("demo")
    follower = JobFollower(view, transport=MemoryTransport(bus, "dash")).start()
    try:
        deadline = time.monotonic() + 5
        while view.control_state != "running" and time.monotonic() < deadline:
            time.sleep(0.02)
        # Execute
        follower.publish_control("paused", "maintenance")
        while view.control_state != "paused" and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        follower.stop()
    # Assert: retained on the control topic, and the view followed
    [retained] = bus.retained_for(Topics("demo").control)
    ctl = JobControl.from_json(retained.payload)
    assert (ctl.state, ctl.detail) == ("paused", "maintenance")
    assert view.snapshot()["control"]["state"] == "paused"


# -- the command against a real Mosquitto ---------------------------------------------------


def monitor_cmd(broker, *args: str) -> list[str]:
    return [sys.executable, "-m", "coordinator.cli", "monitor", "--broker", broker.url, *args]


def publish_all(broker, messages) -> None:
    with mqtt_client(broker) as client:
        for topic, payload, retain in messages:
            client.publish_wait(topic, payload, qos=1, retain=retain)


def read_lines(proc: subprocess.Popen, out: queue.Queue, until, timeout: float = 15.0) -> list:
    records: list[dict] = []
    deadline = time.monotonic() + timeout
    while not until(records) and time.monotonic() < deadline:
        try:
            line = out.get(timeout=0.2)
        except queue.Empty:
            continue
        records.append(json.loads(line))
    return records


def test_monitor_json_prints_every_decoded_message_after_joining_late(mosquitto_broker):
    # Prepare: the job is in round 2 before the monitor starts
    publish_all(mosquitto_broker, retained_state())
    proc = subprocess.Popen(
        monitor_cmd(mosquitto_broker, "--job", "demo", "--json", "--duration", "30"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    out: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [out.put(x) for x in proc.stdout], daemon=True).start()
    try:
        # Execute: the retained replay, then live traffic
        replay = read_lines(proc, out, lambda r: len(r) >= 7)
        publish_all(mosquitto_broker, live_round_2())
        live = read_lines(proc, out, lambda r: len(r) >= 3)
    finally:
        proc.terminate()
        proc.wait(10)
    # Assert: every message, decoded, one JSON object per line
    assert sorted(r["kind"] for r in replay) == sorted(
        ["control", "model", "global", "round", "status", "status", "metrics"]
    ), proc.stderr.read()
    assert all(r["retained"] for r in replay)
    by_kind = {r["kind"]: r for r in replay}
    assert by_kind["metrics"]["message"]["accuracy"] == 0.8123
    assert by_kind["round"]["message"]["selected"] == ["pi-01", "pi-02"]
    assert by_kind["global"]["topic"] == "fl/v1/demo/global"
    assert by_kind["global"]["message"]["tensors"][0]["name"] == "dense/kernel"
    assert "body" not in by_kind["model"]["message"]
    assert [(r["kind"], r["device"], r["retained"]) for r in live] == [
        ("update", "pi-01", False),
        ("status", "pi-03", False),
        ("update", "pi-03", False),
    ]
    assert live[0]["message"]["meta"]["loss"] == 0.42 and live[0]["bytes"] > 100
    assert live[2]["message"]["kind"] == "failure"
    assert live[2]["message"]["meta"]["reason"] == "out of memory"


def test_monitor_once_prints_the_current_state_of_a_running_job(mosquitto_broker):
    # Prepare
    publish_all(mosquitto_broker, retained_state())
    # Execute
    r = subprocess.run(
        monitor_cmd(mosquitto_broker, "--job", "demo", "--once"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    # Assert: plain text (not a terminal: no ANSI codes)
    assert r.returncode == 0, r.stderr
    assert "\x1b[" not in r.stdout
    assert "round 2 open: 2 selected" in r.stdout
    assert "pi-01" in r.stdout and "pi-02" in r.stdout and "81.23 %" in r.stdout


def test_monitor_once_shows_an_unsigned_job_and_its_rejected_updates(mosquitto_broker):
    # Prepare: the retained control and metrics of an --unsigned job with rejections
    publish_all(mosquitto_broker, retained_state() + unsigned_paused_with_rejections())
    # Execute
    r = subprocess.run(
        monitor_cmd(mosquitto_broker, "--job", "demo", "--once"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "120"},  # the screen's width (lines are cut to it)
    )
    # Assert
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[1].startswith("UNSIGNED (--unsigned)  paused by dashboard admin at 10.0.0.5")
    assert next(line for line in lines if line.startswith("ROUND")).endswith("REJECTED  CONTESTED")
    assert "round 1  update under pi-03's name from mallory: sender is not the topic's device" in (
        lines
    )


def test_monitor_of_a_job_that_does_not_exist_fails_with_one_clear_line(mosquitto_broker):
    # Execute
    r = subprocess.run(
        monitor_cmd(mosquitto_broker, "--job", "no-such-job", "--once", "--wait", "1"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    # Assert
    assert r.returncode == 1
    assert r.stderr.startswith("error: no message from job 'no-such-job' under fl/v1/no-such-job/")
    assert "Traceback" not in r.stderr


def test_monitor_rejects_an_invalid_job_name_in_one_line(mosquitto_broker):
    r = subprocess.run(
        monitor_cmd(mosquitto_broker, "--job", "a/b", "--once"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert r.returncode == 1 and r.stderr.startswith("error: invalid job id"), r.stderr
    assert "Traceback" not in r.stderr


def test_history_rows_say_what_a_semi_synchronous_round_did_not_wait_for() -> None:
    from coordinator.monitoring.render import _history_lines
    from coordinator.monitoring.rows import history_entry as _history_entry
    from edge_client.protocol import RoundMetrics

    plain = RoundMetrics(job="j", round=1, participants=("a", "b"))
    semi = RoundMetrics(
        job="j", round=2, participants=("a", "b"), cancelled=("d", "e"),
        target_updates=2, wasted=1, late_folded={"f": 1},
    )  # fmt: skip
    only_plain = "\n".join(_history_lines({"history": [_history_entry(plain)]}, 120))
    both = _history_lines({"history": [_history_entry(plain), _history_entry(semi)]}, 120)
    assert "CANCELLED" not in only_plain and "WASTED" not in only_plain
    header = next(line for line in both if "ROUND" in line).split()
    row = next(line for line in both if line.split()[:1] == ["2"]).split()
    assert header[-3:] == ["CANCELLED", "LATE", "WASTED"] and row[-3:] == ["2", "1", "1"]


def test_view_and_render_show_the_stage_of_a_secure_round_and_how_it_ended() -> None:
    # Prepare: a secure round 3 announced, 3 boards' keys, the coordinator's key list, two
    # boards' shares; then its metrics (survivors, a recovered board) and a failed round 4
    from edge_client.protocol import (
        KeyList,
        Keys,
        RoundAnnouncement,
        RoundMetrics,
        SecAggParams,
        Shares,
        encode_key_list,
        encode_keys,
        encode_shares,
    )
    from tests.coordinator.job_messages import binary

    t, session = Topics("demo"), "0123456789abcdef"
    params = SecAggParams(session, 1.0, 8192.0, 500, 3, 32, 30.0)
    ann = RoundAnnouncement(
        job="demo", round=3, deadline=T0 + 60, selected=("a", "b", "c"), hyperparams={},
        model_sha256="1" * 64, global_sha256="2" * 64, encoding="secagg",
        secagg=params.to_dict(),
    )  # fmt: skip
    keys = {d: Keys(bytes([i]) * 32, bytes([i + 9]) * 32) for i, d in enumerate("abc")}
    msgs = [(t.round, ann.to_json(), True)]
    for d in "abc":
        msgs += binary(t.secagg(d), encode_keys("demo", 3, d, session, keys[d]).to_bytes(), False)
    key_list = KeyList(keys, 2, 2, bytes(32), T0 + 90)
    msgs += binary(
        t.secagg_all, encode_key_list("demo", 3, "coordinator", session, key_list).to_bytes()
    )
    for d in "ab":
        msgs += binary(t.secagg(d), encode_shares("demo", 3, d, session, Shares({})).to_bytes())
    view = fixed_view()
    # Execute
    feed(view, msgs)
    live = view.snapshot()
    done = {"stage": "done", "graph": "complete", "threshold": 2, "survivors": ["a", "b"],
            "recovered": ["c"], "stages": {"keys": {"duration_s": 9.5}}}  # fmt: skip
    failed = {"stage": "failed", "failed": "only 1 devices sent their masked vectors, the "
              "threshold is 2: too few to rebuild the masks", "attempts": ["x", "y"]}  # fmt: skip
    results = [
        (t.metrics, RoundMetrics(job="demo", round=r, participants=p, secagg=s).to_json(), True)
        for r, p, s in ((3, ("a", "b"), done), (4, (), failed))
    ]
    feed(view, results)
    text = render(view.snapshot(), width=200)
    # Assert: the live stage and counts, then each round's result
    assert live["round"]["secagg"] == {
        "session": session,
        "stage": "shares",
        "sent": {"keys": 3, "shares": 2, "masked": 0, "unmask": 0},
    }
    assert "secure round: stage shares  keys 3/3  shares 2  masked -  unmask -" in render(live)
    assert any("secure round 3: shares stage" in e["text"] for e in live["events"])
    header = next(line for line in text.splitlines() if line.startswith("ROUND")).split()
    row3 = next(line for line in text.splitlines() if line.split()[:1] == ["3"]).split()
    row4 = next(line for line in text.splitlines() if line.split()[:1] == ["4"]).split()
    assert header[-1] == "SECURE"
    assert row3[-3:] == ["2+1r", "of", "t=2"] and row4[-1] == "FAILED"
    assert "secure round 4 failed: only 1 devices sent their masked vectors" in text


def test_a_buffered_job_shows_versions_training_slots_and_staleness() -> None:
    # Prepare: a buffered job in version 3: two slots held, version 2 made from 3 updates
    from edge_client.protocol import FoldedUpdate, RoundAnnouncement, RoundMetrics

    t = Topics("demo")
    ann = RoundAnnouncement(
        job="demo", round=3, deadline=T0 + 300, selected=("pi-01", "pi-02"),
        hyperparams={"epochs": 1, "lr": 0.05}, model_sha256="a" * 64, global_sha256="b" * 64,
        run="r1", mode="buffered", grants={"pi-01": 4, "pi-02": 2}, max_staleness=10,
    )  # fmt: skip
    folded = tuple(
        FoldedUpdate(d, g, base, 2 - base, 1 / (1 + 2 - base) ** 0.5, 100, "c" * 64)
        for d, g, base in (("pi-01", 3, 2), ("pi-02", 1, 1), ("pi-01", 2, 0))
    )
    made = RoundMetrics(
        job="demo", round=2, accuracy=0.8, participants=("pi-01", "pi-02"),
        updates_aggregated=3, mode="buffered", buffer=folded, wasted=1,
    )  # fmt: skip
    view = fixed_view()
    feed(view, [(t.round, ann.to_json(), True), (t.metrics, made.to_json(), True)])
    # Execute
    snapshot = view.snapshot()
    text = render(snapshot, width=140)
    # Assert: versions instead of rounds, the slots with their grants, staleness mean/max
    assert "version 3 open (buffered): 2 training (pi-01 #4, pi-02 #2)" in text
    assert "updates at most 10 versions behind" in text and "deadline" not in text
    header = next(line for line in text.splitlines() if line.startswith("VERSION")).split()
    row = next(line for line in text.splitlines() if line.split()[:1] == ["2"]).split()
    assert header[-3:] == ["WASTED", "UPDATES", "STALENESS"] and row[-3:] == ["1", "3", "1.0/2"]
    assert "versions: 1 made" in text and "version 2 made:" in str(snapshot["events"])
    assert snapshot["round"]["grants"] == {"pi-01": 4, "pi-02": 2}
