"""Transport security with a real Mosquitto configured here: TLS with a CA made by
``fedcoord certs generate``, one user name and password per device (``mosquitto_passwd``)
and the ACL of docs/protocol.md section 9. A whole job runs over it (device processes and
the coordinator), with signed models; clients without the CA, the password or the right
topic are refused."""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from coordinator.cli import main as fedcoord
from coordinator.config import JobConfig
from coordinator.job import run_job
from coordinator.simulation import ROOT, FleetConfig, device_command, device_ids
from edge_client.errors import EdgeFLError
from edge_client.transport import BrokerConfig, MqttTransport
from tests.fixtures.brokers import MosquittoProcess, mqtt_client, start_mosquitto

DEVICES = device_ids(2)
PASSWORDS = {"coordinator": "coord-secret", DEVICES[0]: "pw-zero", DEVICES[1]: "pw-one"}
ACL = """\
user coordinator
topic readwrite fl/v1/#

pattern read  fl/v1/+/model/#
pattern read  fl/v1/+/global/#
pattern read  fl/v1/+/round
pattern read  fl/v1/+/control
pattern write fl/v1/+/update/%u/#
pattern write fl/v1/+/status/%u
"""


class Secure:
    def __init__(self, root: Path, broker: MosquittoProcess) -> None:
        self.root, self.broker = root, broker
        self.ca = root / "pki" / "ca.crt"
        self.url = f"mqtts://127.0.0.1:{broker.port}"

    def password_file(self, user: str) -> Path:
        p = self.root / f"{user}.password"
        p.write_text(PASSWORDS[user] + "\n")
        p.chmod(0o600)
        return p

    def config(self, user: str, **kw: object) -> BrokerConfig:
        return BrokerConfig.from_url(
            self.url, username=user, password=PASSWORDS[user], ca_file=str(self.ca), **kw
        )

    def tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


@pytest.fixture(scope="module")
def secure(tmp_path_factory) -> Secure:
    root = tmp_path_factory.mktemp("secure")
    made = CliRunner().invoke(
        fedcoord, ["certs", "generate", "--out", str(root / "pki"), "--host", "127.0.0.1"]
    )
    assert made.exit_code == 0, made.output
    passwd = root / "passwd"
    passwd_tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        flags = ["-c", "-b"] if i == 0 else ["-b"]
        subprocess.run([passwd_tool, *flags, str(passwd), user, password], check=True)
    (root / "acl").write_text(ACL)
    pki = root / "pki"
    broker = start_mosquitto(
        root / "broker",
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        f"allow_anonymous false\npassword_file {passwd}\nacl_file {root / 'acl'}\n",
    )
    yield Secure(root, broker)
    broker.stop()


@pytest.mark.slow
def test_a_signed_job_runs_end_to_end_over_tls_with_passwords_and_acls(
    secure, export_dir, tmp_path
):
    # Prepare: a signing key, two `fedge run` processes each with its own user, and the job
    keys = CliRunner().invoke(fedcoord, ["keys", "generate", "--out", str(tmp_path / "keys")])
    assert keys.exit_code == 0, keys.output
    job = JobConfig(
        job="sec",
        rounds=2,
        min_devices=2,
        min_results=2,
        round_timeout=60,
        wait_timeout=60,
        model_dir=str(export_dir("mlp")),
        epochs=1,
        lr=0.05,
        run_dir=str(tmp_path / "run"),
        broker=secure.url,
        username="coordinator",
        password_file=str(secure.password_file("coordinator")),
        ca_file=str(secure.ca),
        signing_key=str(tmp_path / "keys" / "signing.key"),
    )
    fleet = FleetConfig(devices=2, partition="iid")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs, logs = [], []
    for i, dev in enumerate(DEVICES):
        cmd = device_command(fleet, job, secure.config(dev), i, tmp_path / dev)
        cmd += ["--ca-file", str(secure.ca), "--username", dev]
        cmd += ["--password-file", str(secure.password_file(dev))]
        cmd += ["--trust-key", str(tmp_path / "keys" / "signing.pub")]
        logs.append(open(tmp_path / f"{dev}.log", "wb"))  # noqa: SIM115 - closed below
        procs.append(subprocess.Popen(cmd, stdout=logs[-1], stderr=subprocess.STDOUT, env=env))
    # Execute: run_job connects through broker_for(cfg): mqtts, CA, user, password file
    try:
        state = run_job(job, final_models=False)
        codes = [p.wait(30) for p in procs]
    finally:
        for p, f in zip(procs, logs):
            if p.poll() is None:
                p.kill()
            f.close()
    # Assert
    device_logs = [(tmp_path / f"{d}.log").read_text() for d in DEVICES]
    assert state.finished and [h["participants"] for h in state.history] == [DEVICES] * 2
    assert codes == [0, 0], device_logs
    for text in device_logs:
        assert "model" in text and "accepted" in text and "Traceback" not in text
        assert "refused" not in text and "ignoring round announcement" not in text


def test_a_client_without_the_ca_is_refused(secure):
    config = BrokerConfig.from_url(secure.url, username="coordinator", password="coord-secret")
    transport = MqttTransport(config, "no-ca")  # system CAs do not know ours
    t0 = time.monotonic()
    with pytest.raises(EdgeFLError, match="TLS with broker .* failed: certificate verify failed"):
        transport.connect(timeout=2)
    assert time.monotonic() - t0 < 10


def test_a_plain_tcp_client_gets_nothing_from_the_tls_listener(secure):
    config = BrokerConfig("127.0.0.1", secure.broker.port, username="coordinator", password="x")
    with pytest.raises(EdgeFLError):
        MqttTransport(config, "plain").connect(timeout=2)


def test_a_wrong_password_is_refused(secure):
    config = BrokerConfig.from_url(
        secure.url, username=DEVICES[0], password="guess", ca_file=str(secure.ca)
    )
    with pytest.raises(EdgeFLError, match="refused the credentials"):
        MqttTransport(config, "guesser").connect(timeout=5)


def test_the_acl_binds_each_device_to_its_own_update_and_status_topics(secure):
    broker, me, other = secure.broker, DEVICES[0], DEVICES[1]
    with (
        mqtt_client(broker, "watch", username="coordinator", password=PASSWORDS["coordinator"], tls=secure.tls()) as watcher,
        mqtt_client(broker, "dev", username=me, password=PASSWORDS[me], tls=secure.tls()) as device,
    ):  # fmt: skip
        watcher.subscribe_wait("fl/v1/acl/#", qos=1)
        device.subscribe_wait("fl/v1/acl/update/#", qos=1)  # reading others' updates: denied
        # Execute: forgeries first, then the device's own messages
        device.publish_wait(f"fl/v1/acl/update/{other}/0", b"forged", qos=1)
        device.publish_wait(f"fl/v1/acl/status/{other}", b"forged", qos=1)
        device.publish_wait("fl/v1/acl/round", b"forged", qos=1)
        device.publish_wait("fl/v1/acl/control", b"forged", qos=1)
        device.publish_wait(f"fl/v1/acl/update/{me}/0", b"mine", qos=1)
        device.publish_wait(f"fl/v1/acl/status/{me}", b"mine", qos=1)
        watcher.collector.wait_for("fl/v1/acl/status/+", n=1, timeout=5)
        time.sleep(0.3)
        # Assert: the broker delivered only the device's own topics
        got = sorted((m.topic, m.payload) for m in watcher.collector.matching("fl/v1/acl/#"))
        assert got == [(f"fl/v1/acl/status/{me}", b"mine"), (f"fl/v1/acl/update/{me}/0", b"mine")]
        assert device.collector.matching("#") == []


def test_simulate_gives_the_devices_the_trusted_key_and_the_ca(tmp_path, monkeypatch):
    import contextlib

    from coordinator import simulation
    from coordinator.pki import generate_signing_key

    keys = generate_signing_key(tmp_path / "keys")
    seen = {}

    @contextlib.contextmanager
    def fake_fleet(fleet, job, broker, run_path):  # noqa: ANN001
        seen["cmd"] = device_command(fleet, job, broker, 0, tmp_path / "d0")
        yield []

    monkeypatch.setattr(simulation, "fleet_processes", fake_fleet)
    monkeypatch.setattr(simulation, "run_job", lambda *a, **kw: "done")
    job = JobConfig(
        job="j", signing_key=str(keys.private), ca_file="/etc/ca.crt", listen="127.0.0.1:0"
    )
    assert simulation.simulate(job, FleetConfig(devices=1)) == "done"
    cmd = " ".join(seen["cmd"])
    assert f"--trust-key {keys.public_b64}" in cmd and "--ca-file /etc/ca.crt" in cmd


def test_certs_generate_reuses_the_ca_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "pki"
    first = CliRunner().invoke(
        fedcoord, ["certs", "generate", "--out", str(out), "--host", "localhost"]
    )
    assert first.exit_code == 0 and "(new)" in first.output
    ca = (out / "ca.crt").read_bytes()
    again = CliRunner().invoke(
        fedcoord, ["certs", "generate", "--out", str(out), "--host", "localhost"]
    )
    assert again.exit_code == 1 and "already exists" in again.output
    client = CliRunner().invoke(
        fedcoord, ["certs", "generate", "--out", str(out), "--client", "pi-01"]
    )
    assert client.exit_code == 0 and "(existing)" in client.output
    assert (out / "ca.crt").read_bytes() == ca and (
        out / "client-pi-01.key"
    ).stat().st_mode & 0o777 == 0o600
    ctx = ssl.create_default_context(cafile=str(out / "ca.crt"))
    ctx.load_cert_chain(
        str(out / "client-pi-01.crt"), str(out / "client-pi-01.key")
    )  # a valid pair


def test_mutual_tls_with_a_client_certificate_from_certs_generate(tmp_path):
    pki = tmp_path / "pki"
    made = CliRunner().invoke(
        fedcoord,
        ["certs", "generate", "--out", str(pki), "--host", "127.0.0.1", "--client", "pi-01"],
    )
    assert made.exit_code == 0, made.output
    broker = start_mosquitto(
        tmp_path / "broker",
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\n",
    )
    try:
        url = f"mqtts://127.0.0.1:{broker.port}"
        with_cert = BrokerConfig.from_url(
            url,
            ca_file=str(pki / "ca.crt"),
            cert_file=str(pki / "client-pi-01.crt"),
            key_file=str(pki / "client-pi-01.key"),
        )
        transport = MqttTransport(with_cert, "pi-01")
        transport.connect(timeout=5)
        transport.close()
        without = BrokerConfig.from_url(url, ca_file=str(pki / "ca.crt"))
        with pytest.raises(EdgeFLError):
            MqttTransport(without, "no-cert").connect(timeout=2)
    finally:
        broker.stop()
