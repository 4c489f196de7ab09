"""Broker security files: a real Mosquitto loads them and binds devices to their topics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_devices_support import fedcoord

from devices.errors import InventoryError
from devices.inventory import load_inventory
from devices.security import (
    check_mosquitto_hash,
    device_client_id,
    mosquitto_hash,
    password_file_text,
    read_password,
    write_broker_files,
)
from edge_client.transport import Will
from tests.fixtures.brokers import MQTTConnectError, mqtt_client, start_mosquitto

PI1, PI2 = device_client_id("demo", "pi-01"), device_client_id("demo", "pi-02")

INVENTORY = """
[fleet]
job = "demo"
broker = "mqtt://127.0.0.1:1883"

[defaults]
profile = "rpi4-64"
data = "/srv/data"

[devices.pi-01]
host = "10.0.0.1"

[devices.pi-02]
host = "10.0.0.2"
"""


@pytest.fixture
def fleet(tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(INVENTORY)
    return load_inventory(path)


def test_hashes_match_mosquitto_passwd_both_ways(tmp_path):
    # Prepare: mosquitto_passwd hashes a password; we hash another
    passwd = tmp_path / "passwd"
    passwd.touch()
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.fail("mosquitto_passwd is missing: apt-get install mosquitto (scripts/setup.sh)")
    subprocess.run([tool, "-b", str(passwd), "alice", "s3cret"], check=True)
    theirs = passwd.read_text().strip().split(":", 1)[1]
    # Execute
    ours = mosquitto_hash("s3cret")
    # Assert: each side verifies the other's format
    assert check_mosquitto_hash("s3cret", theirs) and not check_mosquitto_hash("other", theirs)
    assert ours.startswith("$7$101$") and check_mosquitto_hash("s3cret", ours)
    assert not check_mosquitto_hash("s3cret", "$6$abc$def")


def test_password_file_keeps_matching_hashes_and_replaces_changed_ones():
    first = password_file_text({"a": "pw-a", "b": "pw-b"})
    again = password_file_text({"a": "pw-a", "b": "pw-b"}, first)
    changed = password_file_text({"a": "pw-a", "b": "new"}, first)
    assert again == first
    assert changed.splitlines()[0] == first.splitlines()[0]
    assert changed.splitlines()[1] != first.splitlines()[1]


def test_broker_files_are_generated_once_and_then_unchanged(fleet, tmp_path):
    # Execute
    first = fedcoord("devices", "broker-files", "-i", str(fleet.path))
    second = fedcoord("devices", "broker-files", "-i", str(fleet.path))
    # Assert
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert first.stdout.count("wrote") == 4 and second.stdout.count("unchanged") == 4
    secrets = tmp_path / "secrets"
    assert sorted(p.name for p in secrets.iterdir()) == [
        "coordinator.password", "pi-01.password", "pi-02.password",
    ]  # fmt: skip
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in secrets.iterdir())
    assert (tmp_path / "broker" / "passwd").stat().st_mode & 0o777 == 0o600
    acl = (tmp_path / "broker" / "acl").read_text()
    assert "pattern write fl/v1/+/update/%u/#" in acl and "pattern write fl/v1/+/status/%u" in acl
    assert "user coordinator\ntopic readwrite fl/v1/#" in acl
    assert (
        "password_file /etc/mosquitto/edgefl/passwd"
        in (tmp_path / "broker/edgefl.conf").read_text()
    )


@pytest.fixture
def secured(fleet, tmp_path):
    """Mosquitto configured by the generated edgefl.conf (paths pointed at tmp)."""
    out = tmp_path / "broker"
    write_broker_files(fleet, out, install_dir=str(out))
    secrets = fleet.fleet.secrets_dir
    passwords = {u: read_password(secrets, u) for u in ("pi-01", "pi-02", "coordinator")}
    broker = start_mosquitto(tmp_path / "mosquitto", (out / "edgefl.conf").read_text())
    try:
        yield broker, passwords
    finally:
        broker.stop()


def test_mosquitto_binds_each_device_to_its_own_topics(secured):
    # Prepare
    broker, pw = secured
    with (
        mqtt_client(broker, "coord", username="coordinator", password=pw["coordinator"]) as coord,
        mqtt_client(broker, PI1, username="pi-01", password=pw["pi-01"]) as pi1,
    ):
        coord.subscribe_wait("fl/v1/demo/#", qos=1)
        coord.publish_wait("fl/v1/demo/round", b'{"r":1}', qos=1, retain=True)
        granted = pi1.subscribe_wait("fl/v1/demo/round", qos=1)
        # Execute: its own topics, then another device's topics
        pi1.publish_wait("fl/v1/demo/status/pi-01", b"own status", qos=1)
        pi1.publish_wait("fl/v1/demo/update/pi-01/0", b"own update", qos=1)
        pi1.publish_wait("fl/v1/demo/status/pi-02", b"forged status", qos=1)
        pi1.publish_wait("fl/v1/demo/update/pi-02/0", b"forged update", qos=1)
        pi1.publish_wait("fl/v1/demo/round", b"forged round", qos=1)
        # Assert: the coordinator gets the device's own messages and never the forged ones
        coord.collector.wait_for("fl/v1/demo/status/pi-01")
        coord.collector.wait_for("fl/v1/demo/update/pi-01/#")
        coord.collector.expect_none("fl/v1/demo/status/pi-02", duration=0.5)
        coord.collector.expect_none("fl/v1/demo/update/pi-02/#", duration=0.1)
        rounds = [m.payload for m in coord.collector.matching("fl/v1/demo/round")]
        assert rounds == [b'{"r":1}']
        assert (
            granted == [1] and pi1.collector.wait_for("fl/v1/demo/round")[0].payload == b'{"r":1}'
        )


def test_mosquitto_refuses_wrong_password_unknown_user_and_anonymous(secured):
    broker, pw = secured
    for user, password in (("pi-01", pw["pi-02"]), ("pi-09", "guess"), (None, None)):
        with (
            pytest.raises(MQTTConnectError) as info,
            mqtt_client(
                broker, device_client_id("demo", str(user)), username=user, password=password
            ),
        ):
            pass
        assert info.value.reason is not None and info.value.reason.is_failure


def test_a_device_cannot_read_other_devices_updates(secured):
    # Prepare: pi-01 and the coordinator both subscribe to every update
    broker, pw = secured
    with (
        mqtt_client(broker, "coord", username="coordinator", password=pw["coordinator"]) as coord,
        mqtt_client(broker, PI1, username="pi-01", password=pw["pi-01"]) as pi1,
        mqtt_client(broker, PI2, username="pi-02", password=pw["pi-02"]) as pi2,
    ):
        coord.subscribe_wait("fl/v1/demo/update/#", qos=1)
        pi1.subscribe_wait("fl/v1/demo/update/#", qos=1)
        # Execute
        pi2.publish_wait("fl/v1/demo/update/pi-02/0", b"weights", qos=1)
        # Assert: the update was accepted and routed (the coordinator gets it), so pi-01
        # seeing nothing is the read ACL at work, not a dropped publish
        [delivered] = coord.collector.wait_for("fl/v1/demo/update/pi-02/0")
        assert delivered.payload == b"weights"
        pi1.collector.expect_none("fl/v1/demo/update/#", duration=0.5)


def test_regenerated_files_keep_working(fleet, tmp_path: Path):
    out = tmp_path / "broker"
    first = write_broker_files(fleet, out)
    second = write_broker_files(fleet, out)
    assert all(f.changed for f in first) and not any(f.changed for f in second)


def test_a_device_cannot_take_over_the_coordinators_session(secured):
    # Prepare: the coordinator's persistent session, as `fedcoord start` opens it
    broker, pw = secured
    with (
        mqtt_client(
            broker, "coordinator-demo", clean_session=False,
            username="coordinator", password=pw["coordinator"],
        ) as coord,
        mqtt_client(broker, PI2, username="pi-02", password=pw["pi-02"]) as pi2,
    ):  # fmt: skip
        coord.subscribe_wait("fl/v1/demo/update/#", qos=1)
        # Execute: pi-01's valid credentials with the coordinator's client id
        with (
            pytest.raises(MQTTConnectError) as refused,
            mqtt_client(
                broker, "coordinator-demo", clean_session=False,
                username="pi-01", password=pw["pi-01"],
            ),
        ):  # fmt: skip
            pass
        pi2.publish_wait("fl/v1/demo/update/pi-02/0", b"weights", qos=1)
        # Assert: refused; the coordinator was never kicked and still gets the update
        assert refused.value.reason.is_failure
        assert not coord.disconnected.wait(0.5) and coord.is_connected()
        assert coord.collector.wait_for("fl/v1/demo/update/pi-02/0")[0].payload == b"weights"


def test_a_device_cannot_kick_another_device_and_fire_its_will(secured):
    # Prepare: pi-02 online, with its Last Will; the coordinator watches the statuses
    broker, pw = secured
    will = Will("fl/v1/demo/status/pi-02", b"offline", qos=1, retain=True)
    with (
        mqtt_client(broker, "t-coord", username="coordinator", password=pw["coordinator"]) as c,
        mqtt_client(broker, PI2, username="pi-02", password=pw["pi-02"], will=will) as pi2,
    ):
        c.subscribe_wait("fl/v1/demo/status/#", qos=1)
        # Execute: pi-01 connects with pi-02's client id
        with (
            pytest.raises(MQTTConnectError),
            mqtt_client(broker, PI2, username="pi-01", password=pw["pi-01"]),
        ):
            pass
        # Assert: pi-02 stays connected and its Will never fires
        assert not pi2.disconnected.wait(0.5) and pi2.is_connected()
        c.collector.expect_none("fl/v1/demo/status/pi-02", duration=0.5)


def test_a_device_named_like_the_coordinator_is_refused(tmp_path):
    # Prepare: a device that would share the coordinator's broker user and password
    for name, extra in (("coordinator", ""), ("boss", 'coordinator_user = "boss"\n')):
        path = tmp_path / f"{name}.toml"
        text = INVENTORY.replace("[devices.pi-02]", f"[devices.{name}]")
        path.write_text(text.replace("[defaults]", extra + "\n[defaults]"))
        # Execute
        with pytest.raises(InventoryError) as info:
            load_inventory(path)
        done = fedcoord("devices", "broker-files", "-i", str(path))
        # Assert: one clear line, and no broker files or passwords written
        assert f"devices.{name}: the name {name!r} is reserved for the coordinator" in str(
            info.value
        )
        assert done.returncode == 1 and "is reserved for the coordinator" in done.stderr
        assert not (tmp_path / "secrets").exists() and not (tmp_path / "broker").exists()


def test_the_manual_install_commands_give_a_working_broker(fleet, tmp_path):
    # Prepare: where a Mosquitto started by hand would keep the files
    install, conf_dir = tmp_path / "etc-edgefl", tmp_path / "conf.d"
    done = fedcoord(
        "devices", "broker-files", "-i", str(fleet.path), "--install-dir", str(install),
        "--conf-dir", str(conf_dir),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    systemd = lines[lines.index(next(ln for ln in lines if "under systemd" in ln)) + 1]
    manual = lines[lines.index(next(ln for ln in lines if "start yourself" in ln)) + 1]
    assert systemd.strip().endswith("sudo systemctl restart mosquitto")
    assert "sudo" not in manual and "systemctl" not in manual
    # Execute: the printed commands, then a Mosquitto whose config includes the conf dir
    subprocess.run(manual, shell=True, check=True, cwd=tmp_path, timeout=30)
    broker = start_mosquitto(tmp_path / "mosquitto", f"include_dir {conf_dir}\n")
    try:
        pw = read_password(fleet.fleet.secrets_dir, "pi-01")
        with mqtt_client(broker, PI1, username="pi-01", password=pw) as pi1:
            pi1.publish_wait("fl/v1/demo/status/pi-01", b"online", qos=1)
        # Assert: secured (anonymous refused, client id bound)
        for client_id, user in (("anon", None), (PI2, "pi-01")):
            with (
                pytest.raises(MQTTConnectError),
                mqtt_client(broker, client_id, username=user, password=pw),
            ):
                pass
    finally:
        broker.stop()
