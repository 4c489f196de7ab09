"""Lifecycle of EmbeddedBroker: threads, restarts, asyncio, errors, TLS."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from coordinator.broker import BrokerError, EmbeddedBroker
from coordinator.broker.packets import Connack, Connect, decode, encode_connect
from edge_client.errors import ConfigError, EdgeFLError
from tests.fixtures.brokers import RawClient, mqtt_client


def test_start_reports_the_real_port_and_url() -> None:
    broker = EmbeddedBroker(port=0)

    broker.start()
    try:
        port, url, running = broker.port, broker.url, broker.running
    finally:
        broker.stop()

    assert port > 0
    assert url == f"mqtt://127.0.0.1:{port}"
    assert running
    assert not broker.running
    broker.stop()  # a second stop is harmless


def test_context_manager_and_client_count() -> None:
    with EmbeddedBroker(port=0) as broker, mqtt_client(broker, "a"), mqtt_client(broker, "b"):
        count = broker.client_count
    assert count == 2


def test_restart_listens_on_the_same_port_with_empty_state(embedded_broker: EmbeddedBroker) -> None:
    port = embedded_broker.port
    with mqtt_client(embedded_broker, "pub") as pub:
        pub.publish_wait("r", b"kept?", qos=1, retain=True)

    embedded_broker.stop()
    embedded_broker.start()

    with mqtt_client(embedded_broker, "sub") as sub:
        sub.subscribe_wait("r", 1)
        sub.collector.expect_none("r", duration=0.2)
    assert embedded_broker.port == port


def test_stop_drops_connected_clients(embedded_broker: EmbeddedBroker) -> None:
    with mqtt_client(embedded_broker, "dev") as client:
        embedded_broker.stop()
        dropped = client.disconnected.wait(5.0)
    assert dropped


def test_port_in_use_raises_broker_error(embedded_broker: EmbeddedBroker) -> None:
    other = EmbeddedBroker(port=embedded_broker.port)

    with pytest.raises(BrokerError, match="cannot listen on 127.0.0.1"):
        other.start()

    assert isinstance(BrokerError("x"), EdgeFLError)
    assert not other.running


def test_start_twice_raises(embedded_broker: EmbeddedBroker) -> None:
    with pytest.raises(BrokerError, match="already running"):
        embedded_broker.start()


@pytest.mark.parametrize(
    "kwargs",
    [{"port": 70000}, {"port": -1}, {"max_packet_size": 1}, {"max_packet_size": 2**29}],
)
def test_invalid_settings_raise_config_error(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        EmbeddedBroker(**kwargs)


def test_serve_forever_in_the_foreground() -> None:
    async def scenario() -> Connack:
        broker = EmbeddedBroker(port=0)
        task = asyncio.create_task(broker.serve_forever())
        while not broker.running:
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection(broker.host, broker.port)
        writer.write(encode_connect(Connect("fg")))
        first = await reader.readexactly(2)
        connack = decode(first[0], await reader.readexactly(first[1]))
        writer.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not broker.running
        assert isinstance(connack, Connack)
        return connack

    assert asyncio.run(scenario()) == Connack(False, 0)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_tls_listener(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))

    with EmbeddedBroker(port=0, tls=server_context) as broker:
        with mqtt_client(broker, "secure", tls=client_context) as client:
            client.subscribe_wait("s", 1)
            client.publish_wait("s", b"encrypted", qos=1)
            [message] = client.collector.wait_for("s")
        with RawClient(broker) as plain:  # a plaintext client only breaks its own connection
            plain.send(encode_connect(Connect("plain")))
            closed = plain.closed_by_broker()
    assert broker.url.startswith("mqtts://")
    assert message.payload == b"encrypted"
    assert closed
