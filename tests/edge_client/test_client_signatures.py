"""Signed models and round announcements (Ed25519): a board given a trusted key refuses a
tampered, truncated, unsigned or foreign-signed model before the interpreter sees a byte,
and keeps its last good model; unsigned jobs still work without a key."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import threading
import time

import pytest
from click.testing import CliRunner
from test_client_support import DEVICE, ModelFiles, Rig, random_dataset

from coordinator.config import JobConfig
from coordinator.pki import generate_signing_key
from coordinator.run_dir import RunDir
from coordinator.server import Coordinator, ModelBundle
from edge_client.client import EdgeClient
from edge_client.config import ClientConfig
from edge_client.errors import ConfigError
from edge_client.protocol import (
    RoundAnnouncement,
    Topics,
    chunked,
    decode,
    encode_model,
    weights_sha256,
)
from edge_client.runtime import Runtime
from edge_client.signing import PLACEHOLDER, SignatureError, Signer, Verifier
from edge_client.transport import BrokerConfig, MemoryBus, MemoryTransport


@pytest.fixture(scope="module")
def files(export_dir) -> ModelFiles:
    return ModelFiles.load(export_dir("mlp"))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    made = generate_signing_key(tmp_path_factory.mktemp("keys"))
    other = generate_signing_key(tmp_path_factory.mktemp("other"))
    return Signer.from_file(made.private), made, Signer.from_file(other.private)


class Spy:
    """A runtime whose interpreters record every model they were given."""

    def __init__(self, rig: Rig) -> None:
        self.loaded: list[bytes] = []
        real = rig.runtime

        spy = self

        class SpyInterpreter:
            def __init__(self, model_content: bytes, num_threads: int | None = None) -> None:
                spy.loaded.append(bytes(model_content))
                self._real = real.interpreter_class(model_content=model_content)

            def __getattr__(self, name):  # noqa: ANN001, ANN204
                return getattr(self._real, name)

        rig.runtime = Runtime(real.name, real.version, SpyInterpreter)


def publish_model(rig: Rig, payload: bytes) -> None:
    for topic, chunk in chunked(rig.coord.topics.model, payload, 300_000):
        rig.bus.publish(topic, chunk, retain=True)


def signed_round(rig: Rig, signer: Signer, round_: int = 1, **changes) -> RoundAnnouncement:  # noqa: ANN003
    sha = rig.coord.global_weights(rig.files.initial, round_)
    ann = RoundAnnouncement(
        job="demo",
        round=round_,
        deadline=time.time() + 120,
        selected=(DEVICE,),
        hyperparams={"epochs": 1, "lr": 0.05},
        model_sha256=rig.files.manifest.sha256,
        global_sha256=sha,
        **changes,
    )
    rig.bus.publish(rig.coord.topics.round, signer.announcement(ann), retain=True)
    return ann


def tampered_model(files: ModelFiles, signer: Signer) -> bytes:
    """An attacker's model: bytes changed, manifest sha256 and envelope checksums fixed up,
    the genuine signature object copied over."""
    genuine = decode(
        signer.model_envelope(
            files.tflite, files.manifest.to_dict(), job="demo", sender="coordinator"
        )
    )
    body = bytearray(files.tflite)
    body[len(body) // 3] ^= 0x01
    manifest = {**files.manifest.to_dict(), "sha256": hashlib.sha256(body).hexdigest()}
    manifest["signature"] = genuine.meta["signature"]
    return encode_model(bytes(body), manifest, job="demo", sender="coordinator")


@pytest.fixture
def rig(files, tmp_path) -> Rig:
    return Rig.create(files, tmp_path)


def trusting_client(rig: Rig, made) -> EdgeClient:  # noqa: ANN001
    return rig.client(trust_key=str(made.public))


# -- the happy path ------------------------------------------------------------------------


def test_a_signed_model_and_announcement_are_accepted_and_the_board_trains(rig, keys):
    signer, made, _ = keys
    publish_model(
        rig,
        signer.model_envelope(
            rig.files.tflite, rig.files.manifest.to_dict(), job="demo", sender="coordinator"
        ),
    )
    ann = signed_round(rig, signer)
    client = trusting_client(rig, made)
    rig.drain(client)
    (update,) = rig.updates()
    assert update.kind == "update" and update.meta["base_sha256"] == ann.global_sha256


def test_without_a_trusted_key_signed_and_unsigned_jobs_both_work(rig, keys):
    signer, _, _ = keys
    publish_model(
        rig,
        signer.model_envelope(
            rig.files.tflite, rig.files.manifest.to_dict(), job="demo", sender="coordinator"
        ),
    )
    signed_round(rig, signer)
    rig.drain(rig.client())
    assert [u.kind for u in rig.updates()] == ["update"]


# -- refused models: the interpreter never sees them, the last good model stays ------------


@pytest.mark.parametrize(
    "fault", ["tampered", "truncated", "unsigned", "signed by another key", "signature moved"]
)
def test_a_bad_model_is_refused_before_the_interpreter_and_the_last_good_one_kept(
    rig, keys, fault, caplog
):
    # Prepare: the board holds a good signed model
    caplog.set_level(logging.WARNING)
    signer, made, other = keys
    spy = Spy(rig)
    good = signer.model_envelope(
        rig.files.tflite, rig.files.manifest.to_dict(), job="demo", sender="coordinator"
    )
    publish_model(rig, good)
    client = trusting_client(rig, made)
    rig.drain(client)
    assert client.holdings.model_sha256 == rig.files.manifest.sha256
    loads_before = len(spy.loaded)
    # Execute: the bad model arrives (a newer one, on the same retained topic)
    other_files = dataclasses.replace(rig.files, tflite=rig.files.tflite + b"\0" * 16)
    new_manifest = {
        **rig.files.manifest.to_dict(),
        "sha256": hashlib.sha256(other_files.tflite).hexdigest(),
    }
    if fault == "tampered":
        bad = tampered_model(rig.files, signer)
    elif fault == "truncated":
        bad = signer.model_envelope(
            other_files.tflite, new_manifest, job="demo", sender="coordinator"
        )[:-1000]
    elif fault == "unsigned":
        bad = encode_model(other_files.tflite, new_manifest, job="demo", sender="coordinator")
    elif fault == "signed by another key":
        bad = other.model_envelope(
            other_files.tflite, new_manifest, job="demo", sender="coordinator"
        )
    else:  # the genuine signature string copied into another field too
        env = signer.model_envelope(
            other_files.tflite, new_manifest, job="demo", sender="coordinator"
        )
        sig = decode(env).meta["signature"]["sig"]
        bad = encode_model(
            other_files.tflite,
            {**new_manifest, "note": sig, "signature": decode(env).meta["signature"]},
            job="demo",
            sender="coordinator",
        )
    publish_model(rig, bad)
    rig.drain(client)
    # Assert
    assert len(spy.loaded) == loads_before  # no interpreter was made from it
    assert client.holdings.model_sha256 == rig.files.manifest.sha256  # the good one stays
    assert "refused" in caplog.text or "dropped a message" in caplog.text
    # and the board still trains with its last good model
    signed_round(rig, signer)
    rig.drain(client)
    assert [u.kind for u in rig.updates()] == ["update"]


def test_an_unsigned_model_is_refused_on_a_fresh_board_and_the_round_fails_with_the_reason(
    rig, keys
):
    signer, made, _ = keys
    spy = Spy(rig)
    rig.coord.model(rig.files.tflite, rig.files.manifest)  # unsigned
    signed_round(rig, signer)
    client = trusting_client(rig, made)
    rig.drain(client)
    assert spy.loaded == [] and client.holdings.model is None
    (failure,) = rig.updates()
    assert failure.kind == "failure" and "not signed" in failure.reason


# -- announcements ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["unsigned", "deadline changed", "signed by another key"])
def test_a_forged_announcement_is_ignored(rig, keys, fault, caplog):
    caplog.set_level(logging.WARNING)
    signer, made, other = keys
    publish_model(
        rig,
        signer.model_envelope(
            rig.files.tflite, rig.files.manifest.to_dict(), job="demo", sender="coordinator"
        ),
    )
    sha = rig.coord.global_weights(rig.files.initial)
    ann = RoundAnnouncement(
        "demo",
        1,
        time.time() + 60,
        (DEVICE,),
        {"epochs": 1, "lr": 0.05},
        rig.files.manifest.sha256,
        sha,
    )
    if fault == "unsigned":
        raw = ann.to_json()
    elif fault == "deadline changed":
        raw = signer.announcement(ann).replace(b'"deadline":', b'"deadline":1', 1)
    else:
        raw = other.announcement(ann)
    rig.bus.publish(rig.coord.topics.round, raw, retain=True)
    client = trusting_client(rig, made)
    rig.drain(client)
    assert rig.updates() == [] and client.announcement is None
    assert "ignoring round announcement" in caplog.text


def test_a_replayed_earlier_round_does_not_idle_a_board_in_a_signed_job(rig, keys, caplog):
    # Prepare: round 1 of run r1 trained and closed; round 2 announced, its weights not here
    # yet; everything signed, the board trusts the key
    caplog.set_level(logging.INFO)
    signer, made, _ = keys
    files, coord = rig.files, rig.coord

    def publish(ann: RoundAnnouncement, retain: bool = True) -> None:
        coord.publish(coord.topics.round, signer.announcement(ann), retain)

    publish_model(rig, signer.model_envelope(files.tflite, files.manifest.to_dict(), job="demo",
                                             sender="coordinator"))  # fmt: skip
    first = RoundAnnouncement("demo", 1, time.time() + 120, (DEVICE,), {"epochs": 1, "lr": 0.05},
                              files.manifest.sha256, coord.global_weights(files.initial, 1),
                              run="r1")  # fmt: skip
    publish(first)
    client = trusting_client(rig, made)
    rig.drain(client)
    closed = dataclasses.replace(first, state="closed")
    publish(closed)
    later = files.shifted(0.01)
    publish(dataclasses.replace(first, round=2, global_sha256=weights_sha256(later)))
    rig.drain(client)
    # Execute: someone who can write the round topic replays round 1's closed copy (its
    # genuine signed bytes), then round 2's weights arrive (the round is not announced again)
    publish(closed, retain=False)
    rig.drain(client)
    coord.global_weights(later, 2)
    rig.drain(client)
    # Assert: round 2 is trained, the replay ignored with a reason. (Unsigned, a board cannot
    # tell a replay from the coordinator, nor a forged round 10^9 that must not make it ignore
    # honest rounds: test_client_progress.py; so it does not second-guess round numbers.)
    assert [u.round for u in rig.updates()] == [1, 2]
    assert "ignoring an announcement of round 1 (closed): round 2 of this run" in caplog.text


# -- the scheme itself -----------------------------------------------------------------------


def test_the_signature_covers_the_exact_bytes_with_a_placeholder(keys):
    signer, made, _ = keys
    ann = RoundAnnouncement("demo", 3, 1.0, ("a",), {}, "0" * 64, "1" * 64)
    raw = signer.announcement(ann)
    body = json.loads(raw)
    assert body["signature"]["alg"] == "ed25519" and body["signature"]["key"] == signer.key_id
    sig = body["signature"]["sig"]
    template = raw.replace(sig.encode(), PLACEHOLDER.encode())
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    Ed25519PublicKey.from_public_bytes(signer.public_raw).verify(
        base64.b64decode(sig), b"edgefl-signature-v1\n" + template
    )
    assert Verifier.from_spec(str(made.public)).announcement(raw).round == 3
    assert b"signature" not in ann.to_json()  # unsigned messages are unchanged on the wire
    with pytest.raises(SignatureError, match="not written exactly once"):
        Verifier.from_spec(str(made.public)).signed_bytes(
            raw + sig.encode(), body["signature"], "x"
        )


def test_trusted_key_formats(keys, tmp_path):
    signer, made, _ = keys
    line = tmp_path / "key.txt"
    line.write_text(signer.public_b64 + "\n")
    for spec in (str(made.public), str(line), signer.public_b64):
        assert Verifier.from_spec(spec).key_id == signer.key_id
    for junk in ("not-a-key", str(tmp_path / "missing.pub"), base64.b64encode(b"x" * 31).decode()):
        with pytest.raises(ConfigError, match="neither a PEM"):
            Verifier.from_spec(junk)


def test_fedge_run_with_a_bad_trust_key_is_one_line_error(tmp_path):
    from edge_client.cli import main

    result = CliRunner().invoke(
        main,
        ["run", "--broker", "mqtt://127.0.0.1:1", "--job", "j", "--device-id", "d",
         "--data", str(tmp_path), "--trust-key", "garbage", "--state-dir", str(tmp_path / "s")],
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.output.startswith("error: --trust-key is neither a PEM")


def test_fedcoord_keys_generate_writes_a_private_key_only_the_owner_reads(tmp_path):
    from coordinator.cli import main

    out = tmp_path / "keys"
    result = CliRunner().invoke(main, ["keys", "generate", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "signing.key").stat().st_mode & 0o777 == 0o600
    assert "BEGIN PUBLIC KEY" in (out / "signing.pub").read_text()
    again = CliRunner().invoke(main, ["keys", "generate", "--out", str(out)])
    assert again.exit_code == 1 and "already exists" in again.output


# -- the real coordinator and the real client -----------------------------------------------


def test_a_signing_coordinator_and_verifying_clients_complete_a_job(files, keys, tmp_path):
    signer, made, _ = keys
    bus = MemoryBus()
    clients = []
    for i in range(2):
        cfg = ClientConfig(
            BrokerConfig(), "t", f"edge{i}", data_path="unused", state_dir=tmp_path / f"e{i}",
            heartbeat_s=0, exit_on_stop=True, trust_key=signer.public_b64,
        )  # fmt: skip
        data = random_dataset(files.manifest, n=100, seed=i)
        clients.append(EdgeClient(cfg, MemoryTransport(bus, f"edge{i}"), data=data))
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    config = JobConfig(
        job="t", rounds=2, min_devices=2, min_results=2, round_timeout=30, wait_timeout=30,
        epochs=1, lr=0.05, signing_key=str(made.private),
    )  # fmt: skip
    run_dir = RunDir(tmp_path / "run")
    run_dir.create({}, resume=True)
    transport = MemoryTransport(bus, "coordinator")
    transport.connect()
    state = Coordinator(
        config, transport, ModelBundle(files.tflite, files.manifest, files.initial), run_dir
    ).run()
    for t in threads:
        t.join(15)
    assert state.finished and [h["participants"] for h in state.history] == [["edge0", "edge1"]] * 2
    retained = bus.retained_for(Topics("t").round)[0].payload
    assert json.loads(retained)["signature"]["key"] == signer.key_id


@pytest.mark.board
def test_the_board_environment_verifies_signatures(board, keys, files):
    signer, made, _ = keys
    ann = RoundAnnouncement("demo", 1, 1.0, ("a",), {}, files.manifest.sha256, "1" * 64)
    raw = signer.announcement(ann)
    code = (
        "import sys, numpy\n"
        "from edge_client.signing import Verifier\n"
        "v = Verifier.from_spec(sys.argv[1])\n"
        "a = v.announcement(sys.argv[2].encode())\n"
        "try:\n"
        "    v.announcement(sys.argv[2].replace('demo', 'demX', 1).encode())\n"
        "except Exception as e:\n"
        "    print('refused:', type(e).__name__)\n"
        "print('ok', a.round, numpy.__version__)\n"
    )
    r = board(code, str(made.public), raw.decode())
    assert r.returncode == 0, r.stderr
    assert "refused: SignatureError" in r.stdout and "ok 1 1." in r.stdout  # numpy 1.x


def test_secure_aggregation_stage_messages_verify_only_when_signed_with_the_trusted_key(keys):
    # a forged unmask request could name a board as dropped out and make its holders reveal
    # its mask key: boards with --trust-key take the coordinator's stage messages signed only
    from edge_client.protocol import UnmaskRequest, encode_unmask_request, read_stage

    signer, made, other = keys
    env = encode_unmask_request(
        "demo", 3, "coordinator", "0123456789abcdef", UnmaskRequest(("a", "b"), 9.0)
    )
    verifier = Verifier.from_spec(str(made.public))
    signed = verifier.secagg(signer.secagg(env))
    assert read_stage(signed).body == UnmaskRequest(("a", "b"), 9.0)
    with pytest.raises(SignatureError, match="not signed"):
        verifier.secagg(env.to_bytes())
    with pytest.raises(SignatureError, match="signed by key"):
        verifier.secagg(other.secagg(env))
    forged = signer.secagg(env).replace(b'"survivors":["a","b"]', b'"survivors":["a","c"]')
    with pytest.raises(SignatureError, match="does not match its signature"):
        verifier.secagg(forged)
