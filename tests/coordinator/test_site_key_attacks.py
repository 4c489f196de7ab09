"""An outsider on a site's broker against the rounds a site signs with its endorsed key.

The outsider can publish anything on the site broker but holds neither the job's private key
nor the site's. Boards trust only the job's key (``fedge run --trust-key``). The real-broker
test runs a real Mosquitto, a real :class:`SiteAggregator` and real :class:`EdgeClient` boards
that train the mlp, as in test_site_safety.py. The byte-level description of docs/protocol.md
section 12 is checked by a verifier written here from that text alone (json, base64, hashlib
and cryptography; not edge_client.signing).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key

from coordinator.pki import generate_signing_key
from coordinator.site_keys import SiteKey, make_site_key
from edge_client.errors import ProtocolError
from edge_client.messaging import BinaryPublisher
from edge_client.protocol import (
    RoundAnnouncement,
    Topics,
    decode,
    encode_failure,
    encode_weights,
)
from edge_client.signing import Signer, Verifier
from tests.coordinator.test_site_safety import (  # noqa: F401 (kit: fixture)
    SITE,
    Central,
    Kit,
    kit,
    running,
    site,
    trusting_boards,
    wait_until,
)
from tests.fixtures.brokers import mqtt_client

# -- a verifier of site rounds from docs/protocol.md section 12 alone -------------------------

CONTEXT = b"edgefl-signature-v1\n"
ROUND_FIELDS = ("v", "job", "round", "deadline", "selected", "hyperparams", "model_sha256")


def _key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(key.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def _verify(key: Ed25519PublicKey, raw: bytes, signature: dict[str, Any]) -> None:
    """Section 12: the 88 characters of ``sig`` once in ``raw``, 88 "=" in their place,
    the context string first; raises on any mismatch."""
    if signature["alg"] != "ed25519" or signature["key"] != _key_id(key):
        raise ValueError("another algorithm or key")
    token = signature["sig"].encode("ascii")
    if len(token) != 88 or raw.count(token) != 1:
        raise ValueError("sig not written exactly once")
    key.verify(base64.b64decode(token, validate=True), CONTEXT + raw.replace(token, b"=" * 88))


def independent_round(job_key: Ed25519PublicKey, raw: bytes, job: str) -> dict[str, Any]:
    """The round of job ``job`` in ``raw`` as a board that trusts ``job_key`` takes it, or
    any exception. Signed with the job's key itself, or with a key the job's key endorsed."""
    ann = json.loads(raw)
    if any(f not in ann for f in ROUND_FIELDS) or ann["job"] != job:
        raise ValueError("not a round announcement of this job")
    if ann["signature"]["key"] == _key_id(job_key):
        _verify(job_key, raw, ann["signature"])
        return ann
    endorsement_raw = ann["endorsement"].encode("utf-8")  # step 1: the string's content
    endorsement = json.loads(endorsement_raw)
    if endorsement["v"] != 1:
        raise ValueError("endorsement version")
    _verify(job_key, endorsement_raw, endorsement["signature"])
    if endorsement["job"] != ann["job"]:  # step 2
        raise ValueError("endorsed for another job")
    site_raw = base64.b64decode(endorsement["key"], validate=True)  # step 3
    _verify(Ed25519PublicKey.from_public_bytes(site_raw), raw, ann["signature"])
    return ann


def accepted(job_key: Ed25519PublicKey, raw: bytes, job: str) -> bool:
    try:
        independent_round(job_key, raw, job)
    except Exception:  # noqa: BLE001 - any failure is a refusal
        return False
    return True


def library_accepts(verifier: Verifier, raw: bytes, job: str) -> bool:
    try:
        return verifier.announcement(raw).job == job
    except ProtocolError:
        return False


def test_an_independent_verifier_from_the_docs_agrees_with_the_boards(tmp_path):
    # Prepare: the job's key, a site's key it endorsed, a stranger, another job's site key
    made = generate_signing_key(tmp_path / "job")
    job, job_key = Signer.from_file(made.private), load_pem_public_key(made.public.read_bytes())
    assert isinstance(job_key, Ed25519PublicKey)
    site_key = make_site_key(job, "demo", SITE, tmp_path / "site")
    other = make_site_key(job, "other", SITE, tmp_path / "other")
    stranger = Signer.from_file(generate_signing_key(tmp_path / "stranger").private)
    ann = RoundAnnouncement(
        "demo", 4, time.time() + 60, ("d0",), {"epochs": 1}, "0" * 64, "1" * 64, run="r1"
    )
    genuine = site_key.announcement(ann)
    body = json.loads(genuine)
    sig = body["signature"]["sig"].encode()
    escaped = json.dumps(site_key.endorsement)[1:-1].encode()  # as written on the wire
    assert escaped in genuine and escaped.count(b'\\"') == 30
    job_signed = job.announcement(ann)
    assert len(genuine) - len(job_signed) == len(site_key.endorsement) + 47  # the docs' count
    forgeries = {
        "quotes escaped as \\u0022": genuine.replace(escaped, escaped.replace(b'\\"', b"\\u0022")),
        "a second endorsement key": genuine[:-1]
        + b',"endorsement":'
        + json.dumps(other.endorsement).encode()
        + b"}",
        "the signature written twice": genuine.replace(
            b'"hyperparams":{', b'"hyperparams":{"x":"' + sig + b'",'
        ),
        "the site's sig over the job's in the endorsement": genuine.replace(
            json.loads(site_key.endorsement)["signature"]["sig"].encode(), sig
        ),
        "a space added": genuine.replace(b'"round":4', b'"round": 4'),
        "a stranger signing the genuine endorsement": stranger.announcement(
            dataclasses.replace(ann, endorsement=site_key.endorsement)
        ),
        "endorsed for another job": other.announcement(ann),
        "a lone surrogate as endorsement": json.dumps({**body, "endorsement": "\ud800"}).encode(),
        "the endorsement alone": site_key.endorsement.encode(),
    }
    verifier = Verifier(job.public_raw)
    # Execute / Assert: both take the site's genuine round (and the job's own), and both
    # refuse every forgery
    for raw in (genuine, job_signed):
        assert accepted(job_key, raw, "demo") and library_accepts(verifier, raw, "demo")
    assert independent_round(job_key, genuine, "demo")["round"] == 4
    verdicts = {
        name: (accepted(job_key, raw, "demo"), library_accepts(verifier, raw, "demo"))
        for name, raw in forgeries.items()
    }
    assert verdicts == dict.fromkeys(forgeries, (False, False))


# -- malformed input on the site broker ------------------------------------------------------


@dataclasses.dataclass
class Keys:
    job: Signer
    public: Path  # the job's signing.pub: what the boards and the site trust
    site: SiteKey


def site_keys(tmp_path: Path, job: str) -> Keys:
    made = generate_signing_key(tmp_path / "job-key")
    signer = Signer.from_file(made.private)
    return Keys(signer, made.public, make_site_key(signer, job, SITE, tmp_path / "site-key"))


def open_round(central: Central, epochs: int, timeout: float = 90) -> None:
    """Central.open_round with ``epochs`` (enough for the boards to train a few seconds)."""
    model = central.publish_model()
    payload = encode_weights(
        central.kit.initial, kind="global", job=central.job, round=1, sender="coordinator"
    )
    central.publisher.publish(central.topics.global_weights, payload, retain=True)
    ann = RoundAnnouncement(
        job=central.job, round=1, deadline=time.time() + timeout, selected=(SITE,),
        hyperparams={"epochs": epochs, "lr": 0.05}, model_sha256=model.sha256,
        global_sha256=decode(payload).weights_sha256(),
    )  # fmt: skip
    assert central.signer is not None
    central.transport.publish(central.topics.round, central.signer.announcement(ann), retain=True)


def lone_surrogates(site_round: bytes) -> list[bytes]:
    """What an outsider writes without a key: the site's round with a lone UTF-16 surrogate
    (``\\ud800``, a valid JSON escape that has no UTF-8 form) as the endorsement, or in the
    hyperparams."""
    body = json.loads(site_round)
    return [
        json.dumps({**body, "endorsement": "\ud800"}).encode(),
        json.dumps({**body, "hyperparams": {"\ud800": 1}}).encode(),
    ]


def surrogate_failure(job: str, device: str) -> bytes:
    """A device's failure envelope with a lone surrogate in its meta (same length)."""
    payload = encode_failure(job, 1, device, "XXXXXX")
    return payload.replace(b"XXXXXX", b"\\ud800")


@pytest.mark.slow
def test_lone_surrogates_neither_abort_the_boards_training_nor_stop_the_site(
    mosquitto_broker,
    kit,  # noqa: F811 (the fixture)
    tmp_path,
    caplog,
):
    # Prepare: a signed central job (scripted), a site with the job's key and its own, two
    # boards that trust only the job's key, and an outsider on the site's topics. Before the
    # fix the boards' look-ahead for a closing round raised UnicodeEncodeError on such a
    # round, and each board failed its round ("internal error"); the site's step let the
    # envelope's error out, and the site aggregator stopped.
    caplog.set_level(logging.INFO)
    url, job = mosquitto_broker.url, "surrogates"
    k = site_keys(tmp_path, job)
    aggregator = site(url, job, trust_key=str(k.public), site_key=str(k.site.directory))
    central = Central(url, job, kit, signer=k.job)
    clients = trusting_boards(url, job, kit, tmp_path, k.public, samples=1000)
    topics = Topics(job)
    statuses = f"{topics.root}/status/+"
    with ExitStack() as stack:
        stack.callback(central.close)
        outsider = stack.enter_context(mqtt_client(mosquitto_broker, f"{job}-outsider"))
        outsider.subscribe_wait(topics.round, 1)
        outsider.subscribe_wait(statuses, 1)
        stack.enter_context(running(*clients, aggregator))
        wait_until(lambda: len(aggregator.devices) == 2, 20, "the site's devices")
        # Execute: while both boards train the site's round, the outsider publishes
        open_round(central, epochs=30)
        wait_until(
            lambda: (
                sum(b'"training"' in m.payload for m in outsider.collector.matching(statuses)) >= 2
            ),
            30,
            "both boards training",
        )
        site_round = outsider.collector.matching(topics.round)[-1].payload
        for forged in lone_surrogates(site_round):
            outsider.publish(topics.round, forged, qos=1).wait_for_publish(5)
        BinaryPublisher(outsider).publish(topics.update("d9"), surrogate_failure(job, "d9"))
        update = central.site_update(60)
    # Assert: both boards trained through it, the site took both updates and sent them up
    assert update.kind == "update" and update.meta["site_devices"] == 2
    assert [(r.round, r.devices) for r in aggregator.sent] == [(1, ["d0", "d1"])]
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "round 1 failed" not in text and "internal error" not in text, text[-3000:]
    assert "the site endorsement is malformed" in text
    assert "hyperparams cannot be written as strict JSON" in text  # \ud800: no UTF-8 form
    # the rounds the site published pass the docs' verifier; the outsider's do not
    job_key = load_pem_public_key(k.public.read_bytes())
    assert isinstance(job_key, Ed25519PublicKey)
    forged = lone_surrogates(site_round)
    genuine = [m.payload for m in outsider.collector.matching(topics.round)]
    genuine = [p for p in genuine if p and p not in forged]
    assert len(genuine) >= 2 and all(accepted(job_key, p, job) for p in genuine)  # open, closed
    assert not any(accepted(job_key, p, job) for p in forged)
