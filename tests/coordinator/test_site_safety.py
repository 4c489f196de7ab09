"""A site aggregator is as safe as the central coordinator: bounded influence over its devices,
no stale retained chunks on its broker, and in a signed job only signed control obeyed.

Everything runs on a real Mosquitto. The site's broker also carries the central job's topics
under ``central/fl/v1`` (what a bridge maps to the central broker), where either a real
signing :class:`Coordinator` or a scripted central job (model, global weights, one round)
plays the central side; the site's devices really train the mlp.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from coordinator.config import JobConfig
from coordinator.influence import InfluenceBounds
from coordinator.job_keys import job_signing_key
from coordinator.pki import generate_signing_key
from coordinator.run_dir import RunDir
from coordinator.server import Coordinator, ModelBundle
from coordinator.site import SiteAggregator, SiteConfig
from coordinator.site_keys import load_site_key, make_site_key, resolve_site_key
from coordinator.site_trust import UpstreamTrust
from edge_client.client import EdgeClient
from edge_client.config import ClientConfig
from edge_client.data import Dataset, load_dataset
from edge_client.manifest import Manifest
from edge_client.messaging import BinaryPublisher, Inbox, ModelReceived, UpdateReceived
from edge_client.protocol import (
    DeviceStatus,
    Envelope,
    JobControl,
    Reassembler,
    RoundAnnouncement,
    Topics,
    decode,
    encode_model,
    encode_weights,
)
from edge_client.signing import Signer, Verifier
from edge_client.trainable_model import TrainableModel
from edge_client.transport import BrokerConfig, MqttTransport, Transport, Will
from tests.coordinator.fleet_support import TrainingDevice, mqtt_device, scaled
from tests.fixtures.brokers import mqtt_client

ROOT = Path(__file__).resolve().parents[2]
UP = "central/fl/v1"  # the central job's topics on the site broker (a bridge's local prefix)
SITE = "site-a"


@dataclass
class Kit:
    tflite: bytes
    manifest: Manifest
    initial: dict[str, np.ndarray]
    train: Dataset

    def model(self) -> TrainableModel:
        return TrainableModel(self.tflite, self.manifest, num_threads=1)

    def part(self, i: int, n: int) -> Dataset:
        return self.train.subset(np.arange(i * 1000, i * 1000 + n))


@pytest.fixture(scope="module")
def kit(export_dir) -> Kit:
    d = export_dir("mlp")
    tflite, manifest = (d / "model.tflite").read_bytes(), Manifest.load(d / "manifest.json")
    initial = TrainableModel(tflite, manifest).get_weights()
    return Kit(tflite, manifest, initial, load_dataset("fashion-mnist", "train"))


def wait_until(condition, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def site(url: str, job: str, **cfg: object) -> SiteAggregator:
    config = SiteConfig(SITE, job, upstream_prefix=UP, **cfg)  # type: ignore[arg-type]
    broker = BrokerConfig.from_url(url)
    will = Will(Topics(job, UP).status(SITE), DeviceStatus.last_will(SITE, 0).to_json())
    return SiteAggregator(
        config,
        MqttTransport(broker, f"{job}-{SITE}-up", will=will),
        MqttTransport(broker, f"{job}-{SITE}-down"),
    )


@contextmanager
def running(*things: SiteAggregator | TrainingDevice | EdgeClient) -> Iterator[None]:
    """Sites, devices and edge clients in their own threads, stopped at the end."""
    threads = []
    for thing in things:
        if isinstance(thing, TrainingDevice):
            thing.start()
        else:
            threads.append(threading.Thread(target=thing.run, daemon=True))
            threads[-1].start()
    try:
        yield
    finally:
        for thing in things:
            thing.stop()
        for t in threads:
            t.join(15)


class Central:
    """A scripted central job on the upstream topics: model, global weights, one round; it
    collects what the site sends up."""

    def __init__(self, url: str, job: str, kit: Kit, signer: Signer | None = None) -> None:
        self.job, self.kit, self.signer = job, kit, signer
        self.topics = Topics(job, UP)
        self.transport = MqttTransport(BrokerConfig.from_url(url), f"{job}-central")
        for topic, qos in self.topics.coordinator_subscriptions():
            self.transport.subscribe(topic, qos)
        self.transport.connect()
        self.inbox = Inbox(self.transport, self.topics)
        self.publisher = BinaryPublisher(self.transport)

    def publish_model(self) -> Envelope:
        meta = self.kit.manifest.to_dict()
        if self.signer is not None:
            payload = self.signer.model_envelope(
                self.kit.tflite, meta, job=self.job, sender="coordinator"
            )
        else:
            payload = encode_model(self.kit.tflite, meta, job=self.job, sender="coordinator")
        self.publisher.publish(self.topics.model, payload, retain=True)
        return decode(payload)

    def open_round(self, round_: int = 1, timeout: float = 90) -> RoundAnnouncement:
        model = self.publish_model()
        payload = encode_weights(
            self.kit.initial, kind="global", job=self.job, round=round_, sender="coordinator"
        )
        self.publisher.publish(self.topics.global_weights, payload, retain=True)
        ann = RoundAnnouncement(
            job=self.job, round=round_, deadline=time.time() + timeout, selected=(SITE,),
            hyperparams={"epochs": 1, "lr": 0.05}, model_sha256=model.sha256,
            global_sha256=decode(payload).weights_sha256(),
        )  # fmt: skip
        data = self.signer.announcement(ann) if self.signer else ann.to_json()
        self.transport.publish(self.topics.round, data, retain=True)
        return ann

    def site_update(self, timeout: float) -> Envelope:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            item = self.inbox.get(0.2)
            if isinstance(item, UpdateReceived) and item.device == SITE:
                return item.value
        raise AssertionError(f"no update from {SITE} within {timeout} s")

    def close(self) -> None:
        self.transport.close()


# -- 1. bounded influence at the site ------------------------------------------------------


class StatusLiar(TrainingDevice):
    """Announces 10^9 samples in its status, so the sample check cannot catch its claim."""

    def online(self) -> None:
        status = DeviceStatus(self.device, "online", time.time(), samples=10**9)
        self.transport.publish(self.topics.status(self.device), status.to_json(), retain=True)


def claim_samples(n: int):  # noqa: ANN201
    """A device's ``send``: its honest update, claiming ``n`` training samples."""

    def send(t: Transport, topic: str, payload: bytes) -> None:
        env = decode(payload)
        forged = encode_weights(
            env.weights(), kind="update", job=env.job, round=env.round, sender=env.sender,
            samples=n, meta=env.meta,
        )  # fmt: skip
        BinaryPublisher(t).publish(topic, forged)

    return send


HONEST = (256, 288, 320)  # the three honest devices' samples
LIAR_DATA = 300


@pytest.mark.slow
@pytest.mark.parametrize(
    ("attack", "expect"),
    [
        ("claims-1e9", "claims 1000000000 training samples, its status announced 300"),
        ("claims-1e9-status-too", "capped"),
        ("boosted-x50", "outsized change"),
    ],
)
def test_a_device_claiming_absurd_samples_or_change_cannot_dominate_its_sites_partial_sum(
    mosquitto_broker, kit, caplog, attack, expect
):
    # Prepare: a site with 3 honest devices and a hostile one; the default bounds
    caplog.set_level(logging.INFO)
    url, job = mosquitto_broker.url, f"bounds-{attack}"
    honest = [
        mqtt_device(url, job, f"h{i}", kit.model(), kit.part(i, n)) for i, n in enumerate(HONEST)
    ]
    liar_data = kit.part(3, LIAR_DATA)
    if attack == "boosted-x50":
        liar = mqtt_device(url, job, "liar", kit.model(), liar_data, tamper=scaled(50))
    else:
        transport = MqttTransport(BrokerConfig.from_url(url), f"{job}-liar")
        kind = StatusLiar if attack == "claims-1e9-status-too" else TrainingDevice
        liar = kind(transport, job, "liar", kit.model(), liar_data, send=claim_samples(10**9))
    aggregator = site(url, job)
    central = Central(url, job, kit)
    try:
        with running(aggregator, *honest, liar):
            wait_until(lambda: len(aggregator.devices) == 4, 20, "the site's devices")
            # Execute
            central.open_round()
            got = central.site_update(90)
    finally:
        central.close()
    # Assert: the partial sum is FedAvg of the honest updates, plus the liar's capped at half
    sent = [decode(d.sent[1]) for d in [*honest, liar]]
    weights = [e.samples for e in sent[:3]]
    if expect == "capped":
        weights.append(sum(HONEST))  # a share of 0.5: as much as all the others together
    else:
        sent = sent[:3]
    assert got.kind == "update" and got.samples == sum(weights)
    assert got.update_meta().site_devices == len(sent)
    for name, w in got.weights().items():
        expected = sum(n * e.weights()[name].astype(np.float64) for n, e in zip(weights, sent))
        np.testing.assert_allclose(w, expected / sum(weights), rtol=1e-5, atol=1e-6)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert expect in logged and "bounded influence: sample counts checked" in logged


def test_the_site_takes_the_bounded_influence_options_of_fedcoord_start():
    from click.testing import CliRunner

    from coordinator.cli import main

    text = CliRunner().invoke(main, ["site", "--help"]).output
    for flag in ("--max-weight-share", "--max-change-ratio", "--no-sample-check", "--trust-key"):
        assert flag in text
    bad = CliRunner().invoke(main, ["site", "--site-id", "s", "--max-weight-share", "2"])
    assert bad.exit_code == 1 and "max_weight_share must be in [0, 1]" in bad.output


# -- 2. retained chunks left on the site broker ---------------------------------------------


def retained_chunks(broker, job: str) -> dict[str, list[bytes]]:  # noqa: ANN001
    """What a board subscribing now receives retained on the site's model and global topics."""
    with mqtt_client(broker, f"{job}-late-board") as late:
        late.subscribe_wait(f"fl/v1/{job}/+/+", qos=1)
        time.sleep(1.0)
        messages = late.collector.matching(f"fl/v1/{job}/+/+")
    chunks: dict[str, dict[int, bytes]] = {}
    for m in messages:
        kind, index = m.topic.split("/")[-2:]
        if kind in ("model", "global") and m.payload:
            chunks.setdefault(kind, {})[int(index)] = m.payload
    return {k: [c[i] for i in sorted(c)] for k, c in chunks.items()}


@pytest.mark.slow
def test_a_site_clears_the_chunks_an_earlier_run_left_retained_on_its_broker(
    mosquitto_broker, kit, tmp_path
):
    # Prepare: an earlier site run relayed the model and weights in 50 kB chunks (~17 each)
    url, job = mosquitto_broker.url, "leftovers"
    central = Central(url, job, kit)
    try:
        central.open_round(timeout=600)
        earlier = site(url, job, max_chunk=50_000)
        with running(earlier):
            wait_until(
                lambda: len(retained_chunks(mosquitto_broker, job).get("global", [])) > 10,
                30,
                "relay",
            )
        before = retained_chunks(mosquitto_broker, job)
        assert len(before["model"]) > 10 and len(before["global"]) > 10
        # Execute: `fedcoord site` runs again with the default chunk size (one chunk each)
        cmd = [sys.executable, "-m", "coordinator.cli", "site", "--site-id", SITE, "--job", job,
               "--unsigned"]  # fmt: skip
        log = (tmp_path / "site.log").open("wb")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(cmd + ["--broker", url], stdout=log, stderr=log, env=env)
        try:
            wait_until(
                lambda: (
                    {k: len(v) for k, v in retained_chunks(mosquitto_broker, job).items()}
                    == {"model": 1, "global": 1}
                ),
                60,
                "the leftovers cleared: " + (tmp_path / "site.log").read_text()[-2000:],
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(20)
    finally:
        central.close()
    # Assert: a board now gets this run's model and weights, whole, and the site said why
    after = retained_chunks(mosquitto_broker, job)
    reassembler = Reassembler()
    model = decode(reassembler.feed("m", after["model"][0]), expect_kind="model")
    weights = decode(reassembler.feed("g", after["global"][0]), expect_kind="global")
    assert model.sha256 == kit.manifest.sha256 and weights.round == 1
    text = (tmp_path / "site.log").read_text()
    assert "chunks the next publish does not overwrite will be cleared" in text, text
    assert "NO KEY to check upstream messages against" in text


# -- 3. control in a signed job --------------------------------------------------------------


@pytest.fixture
def job_key(tmp_path) -> tuple[Signer, Path]:
    keys = generate_signing_key(tmp_path / "job-key")
    return Signer.from_file(keys.private), keys.public


def forged_controls(job: str, tmp_path: Path) -> list[bytes]:
    """A stranger's "stopped": unsigned, and signed with another key."""
    other = Signer.from_file(generate_signing_key(tmp_path / "other-key").private)
    stop = JobControl(job, "stopped", time.time() + 1, "forged")
    return [stop.to_json(), other.control(stop)]


@pytest.mark.slow
def test_a_site_with_the_jobs_key_obeys_only_signed_control(
    mosquitto_broker, kit, tmp_path, job_key, caplog
):
    # Prepare: a signing central coordinator, a site with the job's public key, 2 devices
    caplog.set_level(logging.INFO)
    signer, public = job_key
    url, job = mosquitto_broker.url, "signedsite"
    aggregator = site(url, job, trust_key=str(public))
    devices = [mqtt_device(url, job, f"d{i}", kit.model(), kit.part(i, 256)) for i in range(2)]
    topics = Topics(job, UP)
    coordinator, transport = signing_coordinator(url, job, kit, public, tmp_path, rounds=1)
    with ExitStack() as stack:
        spy = stack.enter_context(mqtt_client(mosquitto_broker, f"{job}-spy"))
        spy.subscribe_wait(f"fl/v1/{job}/control", 1)
        thread = threading.Thread(target=aggregator.run, daemon=True)
        stack.enter_context(running(*devices))
        thread.start()
        stack.callback(thread.join, 15)
        stack.callback(aggregator.stop)
        wait_until(lambda: len(aggregator.devices) == 2, 20, "the site's devices")
        # Execute: forged stops on the central control topic, then the real job
        with mqtt_client(mosquitto_broker, f"{job}-stranger") as stranger:
            for forged in forged_controls(job, tmp_path):
                stranger.publish(topics.control, forged, qos=1, retain=True).wait_for_publish(5)
        wait_until(lambda: aggregator.trust.refused >= 2, 10, "the forged stops refused")
        time.sleep(0.5)
        assert thread.is_alive() and not aggregator.stopped  # still in the job
        try:
            state = coordinator.run()
        finally:
            transport.wait_published(10)  # its signed "stopped" (as run_job does)
            transport.close()
        thread.join(15)
        # Assert: the site took part, left on the coordinator's signed "stopped" only, and
        # passed only signed control down to its boards
        assert not thread.is_alive() and aggregator.stopped
        assert state.finished and state.history[0]["participants"] == [SITE]
        assert [(r.round, len(r.devices)) for r in aggregator.sent] == [(1, 2)]
        relayed = [m.payload for m in spy.collector.matching(f"fl/v1/{job}/control")]
        assert relayed and all(signer.verifier().control(p) for p in relayed)
    refusals = [r.getMessage() for r in caplog.records if "ignoring an upstream" in r.getMessage()]
    assert any("is not signed" in m for m in refusals), refusals
    assert any("this device trusts key" in m for m in refusals), refusals


def signer_path(public: Path) -> Path:
    return public.with_name("signing.key")


def signing_coordinator(
    url: str, job: str, kit: Kit, public: Path, tmp_path: Path, rounds: int
) -> tuple[Coordinator, MqttTransport]:
    """A real coordinator of ``job`` on the central topics, signing with the key of
    ``public``, and its connected transport."""
    cfg = JobConfig(
        job=job, prefix=UP, rounds=rounds, min_devices=1, epochs=1, lr=0.05, round_timeout=60,
        wait_timeout=30, max_retries=0, signing_key=str(signer_path(public)),
    )  # fmt: skip
    run_dir = RunDir(tmp_path / "run")
    run_dir.create({}, resume=False)
    transport = MqttTransport(BrokerConfig.from_url(url), f"{job}-coordinator")
    transport.connect()
    bundle = ModelBundle(kit.tflite, kit.manifest, kit.initial)
    return Coordinator(cfg, transport, bundle, run_dir), transport


def trusting_boards(
    url: str, job: str, kit: Kit, tmp_path: Path, public: Path, samples: int
) -> list[EdgeClient]:
    """Two real edge clients d0, d1 on the site's topics that trust only ``public``."""
    made = []
    for i in range(2):
        config = ClientConfig(
            broker=BrokerConfig.from_url(url), job=job, device_id=f"d{i}",
            dataset="fashion-mnist", state_dir=tmp_path / f"state-d{i}", evaluate=False,
            heartbeat_s=0, trust_key=str(public),
        )  # fmt: skip
        transport = MqttTransport(config.broker, f"{job}-d{i}")
        made.append(EdgeClient(config, transport, data=kit.part(i, samples)))
    return made


@pytest.mark.slow
def test_a_site_without_a_key_says_so_and_that_the_job_is_signed(
    mosquitto_broker, kit, job_key, caplog
):
    # Prepare: a signed central job, a site without --trust-key
    caplog.set_level(logging.INFO)
    url, job = mosquitto_broker.url, "nokey"
    aggregator = site(url, job)
    central = Central(url, job, kit, signer=job_key[0])
    # Execute
    try:
        with running(aggregator):
            central.publish_model()
            wait_until(lambda: aggregator.model_sha256 is not None, 20, "the model")
    finally:
        central.close()
    # Assert
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "NO KEY to check upstream messages against" in text
    assert f"job {job} is signed (key {job_key[0].key_id}) but this site has no key" in text


def test_upstream_trust_refuses_what_the_jobs_key_did_not_sign(tmp_path, job_key, kit):
    signer, public = job_key
    trust = UpstreamTrust.from_spec(SITE, "j", str(public))
    stop = JobControl("j", "stopped", 1.0)
    obeyed = trust.control(stop, signer.control(stop))
    assert obeyed is not None and (obeyed.job, obeyed.state) == ("j", "stopped")
    for forged in forged_controls("j", tmp_path):
        assert trust.control(JobControl.from_json(forged), forged) is None
    tampered = signer.control(stop).replace(b'"stopped"', b'"paused" ')
    assert trust.control(JobControl.from_json(tampered), tampered) is None
    other_job = JobControl("k", "stopped", 1.0)
    assert trust.control(other_job, signer.control(other_job)) is None
    model = encode_model(kit.tflite, kit.manifest.to_dict(), job="j", sender="coordinator")
    assert not trust.model(ModelReceived(decode(model), raw=model))
    signed = signer.model_envelope(kit.tflite, kit.manifest.to_dict(), job="j", sender="c")
    assert trust.model(ModelReceived(decode(signed), raw=signed))
    ann = RoundAnnouncement("j", 1, 2.0, ("s",), {}, "0" * 64, "0" * 64)
    assert trust.announcement(ann, ann.to_json()) is None
    assert trust.announcement(ann, signer.announcement(ann)) is not None
    # a site's key, though the job's key endorsed it, never passes for the job's upstream
    site_key = make_site_key(signer, "j", "site-b", tmp_path / "site-b")
    assert trust.announcement(ann, site_key.announcement(ann)) is None
    assert trust.refused == 7
    unchecked = UpstreamTrust(SITE, "j", None)
    assert unchecked.control(stop, stop.to_json()) == stop
    assert unchecked.control(other_job, other_job.to_json()) is None


# -- 4. the rounds a site announces, signed with its endorsed key ------------------------------


def test_boards_that_trust_only_the_jobs_key_train_behind_a_site_with_an_endorsed_key(
    mosquitto_broker, kit, tmp_path, job_key, caplog
):
    # Prepare: a signing central coordinator; a site with the job's key and its own key,
    # endorsed by the job's; two real edge clients on the site's topics that trust only the
    # job's key; and, retained on the site's round topic before anyone starts, a stranger's
    # round selecting them: signed with its own key, carrying the site's genuine endorsement
    caplog.set_level(logging.INFO)
    signer, public = job_key
    url, job = mosquitto_broker.url, "sitekeys"
    key = make_site_key(signer, job, SITE, tmp_path / "site-key")
    stranger = Signer.from_file(generate_signing_key(tmp_path / "stranger").private)
    forged = RoundAnnouncement(
        job, 1, time.time() + 60, ("d0", "d1"), {"epochs": 1, "lr": 0.05},
        kit.manifest.sha256, "0" * 64, endorsement=key.endorsement,
    )  # fmt: skip
    with mqtt_client(mosquitto_broker, f"{job}-stranger") as client:
        client.publish(Topics(job).round, stranger.announcement(forged), qos=1, retain=True)
    aggregator = site(url, job, trust_key=str(public), site_key=str(key.directory))
    boards = trusting_boards(url, job, kit, tmp_path, public, samples=256)
    coordinator, transport = signing_coordinator(url, job, kit, public, tmp_path, rounds=2)
    with ExitStack() as stack:
        spy = stack.enter_context(mqtt_client(mosquitto_broker, f"{job}-spy"))
        spy.subscribe_wait(f"fl/v1/{job}/round", 1)
        stack.enter_context(running(*boards, aggregator))
        wait_until(lambda: len(aggregator.devices) == 2, 20, "the site's devices")
        # Execute
        try:
            state = coordinator.run()
        finally:
            transport.wait_published(10)
            transport.close()
    # Assert: both boards trained both rounds from the site's signed rounds; the stranger's
    # round was refused; every round the site announced verifies with the job's key alone
    assert state.finished and [h["participants"] for h in state.history] == [[SITE]] * 2
    assert [(r.round, r.devices) for r in aggregator.sent] == [(1, ["d0", "d1"]), (2, ["d0", "d1"])]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"is signed by key {stranger.key_id!r}" in text, text[-3000:]
    rounds = [m.payload for m in spy.collector.matching(f"fl/v1/{job}/round")]
    own = [p for p in rounds if json.loads(p)["signature"]["key"] == key.signer.key_id]
    assert len(own) >= 4  # open and closed, two rounds
    verifier = Verifier.from_spec(str(public))
    assert {verifier.announcement(p).round for p in own} == {1, 2}
    assert key.describe(SITE) in text


def test_fedcoord_site_signs_by_default_or_says_what_to_do(tmp_path, job_keys_dir):
    from click.testing import CliRunner

    from coordinator.cli import main

    runner = CliRunner()
    # Execute: no site key and no job key on this machine
    bare = runner.invoke(main, ["site", "--site-id", SITE, "--job", "nokeys", "--broker",
                                "mqtt://127.0.0.1:1"])  # fmt: skip
    # Assert: one line naming the problem and the two ways out
    assert bare.exit_code == 1, bare.output
    assert bare.output.startswith(f"error: site {SITE} has no key to sign its rounds with")
    assert f"fedcoord keys site --job nokeys --site {SITE}" in bare.output
    assert "--unsigned" in bare.output and bare.output.count("\n") == 1
    both = runner.invoke(main, ["site", "--site-id", SITE, "--job", "x", "--unsigned",
                                "--trust-key", "AAAA"])  # fmt: skip
    assert both.exit_code == 2 and "--unsigned contradicts" in both.output
    # Execute: fedcoord keys site makes the directory a site needs
    made = runner.invoke(main, ["keys", "site", "--job", "keyed", "--site", SITE,
                                "--out", str(tmp_path / "k")])  # fmt: skip
    assert made.exit_code == 0, made.output
    assert f"--site-key {tmp_path / 'k'}" in made.output
    key = load_site_key(tmp_path / "k", "keyed", SITE)
    assert (
        key.job_public is not None and (tmp_path / "k" / "signing.key").stat().st_mode & 0o77 == 0
    )
    # Assert: a site given another site's or another job's directory refuses it in one line
    for job, site_id, what in (("keyed", "site-z", "endorses site"), ("other", SITE, "of job")):
        wrong = runner.invoke(main, ["site", "--site-id", site_id, "--job", job,
                                     "--site-key", str(tmp_path / "k")])  # fmt: skip
        assert wrong.exit_code == 1 and what in wrong.output and "error:" in wrong.output


def test_a_site_where_the_jobs_key_is_makes_its_own_key_once_and_reuses_it(job_keys_dir):
    # Prepare: the job's key on this machine ($EDGEFL_KEYS_DIR/<job>/), no site key yet
    keys, _ = job_signing_key("localjob")
    # Execute
    made = resolve_site_key("localjob", SITE, None)
    again = resolve_site_key("localjob", SITE, None, Verifier.from_spec(str(keys.public)))
    # Assert: made in the job's directory, endorsed by the job's key, then reused as it is
    assert made is not None and again is not None
    assert made.directory == job_keys_dir / "localjob" / "sites" / SITE
    assert made.endorsed_by == keys.key_id and made.job_public is not None
    assert again.signer.key_id == made.signer.key_id and again.endorsement == made.endorsement
    assert resolve_site_key("no-such-job", SITE, None) is None  # no job key here: nothing made


def test_influence_bounds_of_the_site_are_checked():
    with pytest.raises(Exception, match="max_change_ratio must be >= 0"):
        SiteConfig(SITE, "j", bounds=InfluenceBounds(max_change_ratio=-1))
