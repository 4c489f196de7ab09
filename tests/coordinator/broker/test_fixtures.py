"""The broker fixtures themselves: restart on the same port, Mosquitto with extra config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.fixtures.brokers import (
    BrokerHandle,
    MQTTConnectError,
    RawClient,
    mqtt_client,
    start_mosquitto,
)


def test_stop_and_start_on_the_same_port(any_broker: BrokerHandle) -> None:
    port, url = any_broker.port, any_broker.url

    with mqtt_client(any_broker, "dev") as client:
        any_broker.stop()
        dropped = client.disconnected.wait(5.0)
    with pytest.raises(ConnectionRefusedError):
        RawClient(any_broker)
    any_broker.start()

    with mqtt_client(any_broker, "dev") as client:
        client.subscribe_wait("x", 1)
    assert dropped
    assert (any_broker.port, any_broker.url) == (port, url)
    assert url == f"mqtt://127.0.0.1:{port}"


def test_start_mosquitto_with_a_password_file(tmp_path: Path) -> None:
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(passwords), "alice", "s3cret"],
        check=True,
        capture_output=True,
    )
    broker = start_mosquitto(
        tmp_path / "broker", f"allow_anonymous false\npassword_file {passwords}\n"
    )
    try:
        with mqtt_client(broker, "good", username="alice", password="s3cret") as client:
            client.subscribe_wait("t", 1)
        with pytest.raises(MQTTConnectError), mqtt_client(broker, "bad", username="alice"):
            pass
        with RawClient(broker) as raw:
            anonymous = raw.connect("anon").return_code
    finally:
        broker.stop()
    assert anonymous == 5  # like the embedded broker without a user name
