"""Rounds announced by a site aggregator, signed with the site's own key that the job's key
endorsed: a board that trusts only the job's key accepts them, and refuses every way an
outsider could try to pass a key of its own for a site's."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest

from coordinator.pki import generate_signing_key
from coordinator.site_keys import SiteKey, make_site_key
from edge_client.errors import ProtocolError
from edge_client.protocol import JobControl, RoundAnnouncement, SiteEndorsement
from edge_client.signing import SignatureError, Signer, Verifier

JOB, SITE = "demo", "site-a"


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> tuple[Signer, Verifier]:
    made = generate_signing_key(tmp_path_factory.mktemp("job"))
    return Signer.from_file(made.private), Verifier.from_spec(str(made.public))


@pytest.fixture(scope="module")
def stranger(tmp_path_factory) -> Signer:
    return Signer.from_file(generate_signing_key(tmp_path_factory.mktemp("stranger")).private)


@pytest.fixture(scope="module")
def site(job, tmp_path_factory) -> SiteKey:
    return make_site_key(job[0], JOB, SITE, tmp_path_factory.mktemp("site"))


def announcement(job_id: str = JOB) -> RoundAnnouncement:
    return RoundAnnouncement(
        job_id, 4, time.time() + 60, ("d0", "d1"), {"epochs": 1, "lr": 0.05}, "0" * 64, "1" * 64
    )


def refused(verifier: Verifier, raw: bytes) -> str:
    with pytest.raises(SignatureError) as info:
        verifier.announcement(raw)
    return str(info.value)


def test_a_board_trusting_the_jobs_key_accepts_the_sites_signed_round(job, site):
    _, verifier = job
    raw = site.announcement(announcement())
    body = json.loads(raw)
    assert body["signature"]["key"] == site.signer.key_id != verifier.key_id
    got = verifier.announcement(raw)
    assert (got.round, got.selected, got.endorsement) == (4, ("d0", "d1"), site.endorsement)
    endorsement = SiteEndorsement.from_json(body["endorsement"])
    assert (endorsement.job, endorsement.site) == (JOB, SITE)
    assert endorsement.signature["key"] == verifier.key_id
    # the job's own signature still verifies as before, endorsement or not
    assert verifier.announcement(job[0].announcement(announcement())).round == 4


def test_without_its_endorsement_a_sites_signature_is_refused(job, site):
    raw = site.signer.announcement(announcement())
    assert "this device trusts key" in refused(job[1], raw)


def test_a_strangers_self_made_endorsement_is_refused(job, stranger):
    forged = stranger.site_endorsement(JOB, SITE, stranger.public_raw, time.time()).decode()
    raw = stranger.announcement(dataclasses.replace(announcement(), endorsement=forged))
    assert "the endorsement of site 'site-a' is signed by key" in refused(job[1], raw)


def test_a_genuine_endorsement_lifted_onto_a_strangers_round_is_refused(job, site, stranger):
    raw = stranger.announcement(dataclasses.replace(announcement(), endorsement=site.endorsement))
    message = refused(job[1], raw)
    assert f"is signed by key {stranger.key_id!r}" in message and SITE in message


def test_a_tampered_endorsement_or_round_is_refused(job, site, stranger):
    raw = site.announcement(announcement())
    # the endorsement's key swapped for the stranger's: the job's signature no longer holds
    body = json.loads(raw)
    text = body["endorsement"].replace(json.loads(body["endorsement"])["key"], stranger.public_b64)
    again = stranger.announcement(dataclasses.replace(announcement(), endorsement=text))
    assert "does not match its signature" in refused(job[1], again)
    # the round itself changed after the site signed it
    assert "does not match its signature" in refused(
        job[1], raw.replace(b'"epochs":1', b'"epochs":9', 1)
    )
    # the endorsement's text changed inside the signed round: the site's signature breaks
    assert "does not match its signature" in refused(job[1], raw.replace(b"site-a", b"site-b", 1))


def test_an_endorsement_for_another_job_announces_nothing_here(job, tmp_path):
    other = make_site_key(job[0], "other-job", SITE, tmp_path / "other")
    raw = other.announcement(announcement())  # a round of "demo", endorsed for "other-job"
    assert "is for job 'other-job', not 'demo'" in refused(job[1], raw)


def test_a_site_key_signs_no_central_round_no_model_and_no_control(job, site):
    _, verifier = job
    raw = site.announcement(announcement())
    with pytest.raises(SignatureError, match="this device trusts key"):
        verifier.announcement(raw, site_keys=False)  # what a site checks upstream
    stop = JobControl(JOB, "stopped", time.time(), "forged by a site")
    with pytest.raises(SignatureError, match="this device trusts key"):
        verifier.control(site.signer.control(stop))
    model = site.signer.model_envelope(b"TFL3", {"x": 1}, job=JOB, sender="coordinator")
    with pytest.raises(SignatureError, match="this device trusts key"):
        verifier.model(model)


def test_endorsement_fields_are_validated():
    with pytest.raises(ProtocolError, match="base64 of 32 bytes"):
        SiteEndorsement(JOB, SITE, "AAAA", 1.0)
    with pytest.raises(ProtocolError, match="site id"):
        SiteEndorsement(JOB, "bad/site", "A" * 43 + "=", 1.0)
    with pytest.raises(ProtocolError, match="longer than 1024"):
        dataclasses.replace(announcement(), endorsement="x" * 1025)
    assert b"endorsement" not in announcement().to_json()  # absent unless a site signs


@pytest.mark.board
def test_the_board_environment_accepts_a_sites_round_and_refuses_a_lifted_endorsement(
    board, job, site, stranger, tmp_path
):
    # Prepare: the job's public key as a board gets it, a site's round, a forged one
    public = tmp_path / "job.pub"
    public.write_bytes(job[0].public_pem)
    genuine = site.announcement(announcement())
    forged = stranger.announcement(
        dataclasses.replace(announcement(), endorsement=site.endorsement)
    )
    code = (
        "import sys\n"
        "from edge_client.signing import Verifier\n"
        "v = Verifier.from_spec(sys.argv[1])\n"
        "print('ok', v.announcement(sys.argv[2].encode()).round)\n"
        "try:\n"
        "    v.announcement(sys.argv[3].encode())\n"
        "except Exception as e:\n"
        "    print('refused:', type(e).__name__)\n"
    )
    # Execute: tflite-runtime 2.14, numpy < 2, no TensorFlow
    r = board(code, str(public), genuine.decode(), forged.decode())
    # Assert
    assert r.returncode == 0, r.stderr
    assert "ok 4" in r.stdout and "refused: SignatureError" in r.stdout


def test_a_lone_surrogate_anywhere_in_a_round_is_refused_as_malformed(job, site):
    # \ud800 is a valid JSON escape with no UTF-8 form: it used to escape the checks as a
    # UnicodeEncodeError, which a board training a round took for a bug and failed the round
    body = json.loads(site.announcement(announcement()))
    inner = json.loads(body["endorsement"])
    inner["signature"]["alg"] = "\ud800"
    forged = [
        {**body, "endorsement": "\ud800"},  # the endorsement string itself
        {**body, "endorsement": json.dumps(inner)},  # inside the endorsement's JSON
        {**body, "hyperparams": {"\ud800": 1}},  # anywhere in the round
    ]
    for raw in (json.dumps(f).encode() for f in forged):
        with pytest.raises(ProtocolError, match="(?i)utf-8"):
            job[1].announcement(raw)
