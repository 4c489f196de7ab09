"""Broker security files: a real Mosquitto loads them and binds devices to their topics."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_devices_support import fedcoord

from devices.inventory import load_inventory
from devices.security import (
    check_mosquitto_hash,
    mosquitto_hash,
    password_file_text,
    read_password,
    write_broker_files,
)
from tests.fixtures.brokers import MQTTConnectError, mqtt_client, start_mosquitto

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
    assert first.stdout.count("wrote") == 3 and second.stdout.count("unchanged") == 3
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
        mqtt_client(broker, "pi-01", username="pi-01", password=pw["pi-01"]) as pi1,
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
            mqtt_client(broker, f"x-{user}", username=user, password=password),
        ):
            pass
        assert info.value.reason is not None and info.value.reason.is_failure


def test_a_device_cannot_read_other_devices_updates(secured):
    broker, pw = secured
    with (
        mqtt_client(broker, "pi-01", username="pi-01", password=pw["pi-01"]) as pi1,
        mqtt_client(broker, "pi-02", username="pi-02", password=pw["pi-02"]) as pi2,
    ):
        pi1.subscribe_wait("fl/v1/demo/update/#", qos=1)
        pi2.publish_wait("fl/v1/demo/update/pi-02/0", b"weights", qos=1)
        pi1.collector.expect_none("fl/v1/demo/update/#", duration=0.5)


def test_regenerated_files_keep_working(fleet, tmp_path: Path):
    out = tmp_path / "broker"
    first = write_broker_files(fleet, out)
    second = write_broker_files(fleet, out)
    assert all(f.changed for f in first) and not any(f.changed for f in second)
