"""Ed25519 signatures on the model envelope, round announcements and job control (optional).

The coordinator signs with a private key made by ``fedcoord keys generate``; a board given
``--trust-key`` refuses any model, round announcement or control message that does not
verify, before the interpreter sees a byte. A signing coordinator obeys only control
messages signed with its key (the dashboard signs its admins' decisions with the same key).
Without a trusted key nothing is checked (unsigned jobs work).

Scheme (docs/protocol.md, section 12). A signature object
``{"alg": "ed25519", "key": KEY_ID, "sig": SIG}`` sits in the model envelope's
``meta.signature`` and in an announcement's or a control message's ``signature`` field. ``SIG`` is the standard
base64 (88 characters) of the Ed25519 signature of::

    CONTEXT + the exact published bytes, with SIG replaced by PLACEHOLDER (88 "=")

The signer writes the message with the placeholder, signs those bytes and substitutes the
signature in place (same length, nothing else moves). A verifier reads SIG from the parsed
message, checks it occurs exactly once in the raw bytes, substitutes the placeholder back,
verifies, and then uses the message parsed from those verified bytes. No canonical JSON:
the signed bytes are the bytes on the wire. ``KEY_ID`` is the first 16 hex digits of the
sha256 of the raw 32-byte public key.

``cryptography`` is imported only when a key is used, so boards without it run unsigned jobs.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_client.errors import ConfigError, ProtocolError
from edge_client.protocol import (
    Envelope,
    JobControl,
    RoundAnnouncement,
    SiteEndorsement,
    decode,
    encode_model,
)

ALG = "ed25519"
CONTEXT = b"edgefl-signature-v1\n"  # domain separation: these signatures mean nothing else
SIG_CHARS = 88  # base64 of a 64-byte Ed25519 signature
PLACEHOLDER = "=" * SIG_CHARS
_PLACEHOLDER_B = PLACEHOLDER.encode("ascii")


class SignatureError(ProtocolError):
    """A model, announcement or control message is unsigned, signed by another key, or
    tampered with."""


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "signatures need the 'cryptography' package: pip install cryptography "
            "(or the edgefl[board] / edgefl[coordinator] extra)"
        ) from exc
    return ed25519


def key_id(public_raw: bytes) -> str:
    """Short identifier of a public key: 16 hex digits of sha256(raw 32 bytes)."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def signature_template(kid: str) -> dict[str, str]:
    return {"alg": ALG, "key": kid, "sig": PLACEHOLDER}


class Signer:
    """Signs model envelopes and announcements with an Ed25519 private key."""

    def __init__(self, private_key: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        self._key = private_key
        self.public_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id(self.public_raw)

    @classmethod
    def from_file(cls, path: str | Path) -> Signer:
        """Load an unencrypted PEM (PKCS#8) Ed25519 private key."""
        ed25519 = _crypto()
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
        except OSError as exc:
            raise ConfigError(f"cannot read signing key {path}: {exc.strerror or exc}") from exc
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ConfigError(f"{path} is not an Ed25519 key (make one: fedcoord keys generate)")
        return cls(key)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_raw).decode("ascii")

    @property
    def public_pem(self) -> bytes:
        """The public key as a PEM file (what fedcoord keys generate writes to signing.pub)."""
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign_template(self, template: bytes) -> bytes:
        """Sign bytes holding PLACEHOLDER exactly once; return them with the signature in."""
        if template.count(_PLACEHOLDER_B) != 1:
            raise ProtocolError("a message to sign must hold the signature placeholder once")
        sig = base64.b64encode(self._key.sign(CONTEXT + template))  # always 88 characters
        return template.replace(_PLACEHOLDER_B, sig)

    def model_envelope(
        self, tflite: bytes, manifest: Mapping[str, Any], *, job: str, sender: str
    ) -> bytes:
        """The model envelope with ``meta.signature`` (meta = the manifest)."""
        meta = {**manifest, "signature": signature_template(self.key_id)}
        return self.sign_template(encode_model(tflite, meta, job=job, sender=sender))

    def announcement(self, ann: RoundAnnouncement) -> bytes:
        """The JSON of ``ann`` with its ``signature`` field."""
        template = dataclasses.replace(ann, signature=signature_template(self.key_id))
        return self.sign_template(template.to_json())

    def control(self, ctl: JobControl) -> bytes:
        """The JSON of ``ctl`` with its ``signature`` field."""
        template = dataclasses.replace(ctl, signature=signature_template(self.key_id))
        return self.sign_template(template.to_json())

    def site_endorsement(self, job: str, site: str, site_public_raw: bytes, issued: float) -> bytes:
        """The JSON of a :class:`SiteEndorsement`: this (the job's) key vouches that the site
        ``site`` may announce the rounds of ``job`` to its boards, signed with its own key."""
        key = base64.b64encode(site_public_raw).decode("ascii")
        template = SiteEndorsement(job, site, key, issued, signature_template(self.key_id))
        return self.sign_template(template.to_json())

    def secagg(self, env: Envelope) -> bytes:
        """A coordinator's secure-aggregation stage message with ``meta.signature``."""
        meta = {**env.meta, "signature": signature_template(self.key_id)}
        return self.sign_template(dataclasses.replace(env, meta=meta).to_bytes())

    def verifier(self) -> Verifier:
        """A verifier of this signer's own signatures."""
        return Verifier(self.public_raw)


def _public_from_text(text: str, source: str) -> bytes:
    text = text.strip()
    if text.startswith("-----BEGIN"):
        ed25519 = _crypto()
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_public_key(text.encode())
        except ValueError as exc:
            raise ConfigError(f"{source} is not a PEM public key: {exc}") from exc
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise ConfigError(f"{source} is not an Ed25519 public key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(
            f"{source} is neither a PEM Ed25519 public key file nor 44 characters of base64 "
            "(fedcoord keys generate prints both)"
        )
    return raw


class Verifier:
    """Checks signatures against one trusted Ed25519 public key."""

    def __init__(self, public_raw: bytes) -> None:
        ed25519 = _crypto()
        self._key = ed25519.Ed25519PublicKey.from_public_bytes(public_raw)
        self.key_id = key_id(public_raw)

    @classmethod
    def from_spec(cls, spec: str) -> Verifier:
        """``spec``: a file (PEM public key, or one base64 line) or the base64 key itself."""
        path = Path(spec).expanduser()
        if path.is_file():
            try:
                return cls(
                    _public_from_text(path.read_text(encoding="ascii"), f"--trust-key {path}")
                )
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"cannot read trusted key {path}: {exc}") from exc
        return cls(_public_from_text(spec, "--trust-key"))

    def signed_bytes(self, raw: bytes, signature: object, what: str) -> bytes:
        """The bytes the signer signed (``raw`` with the placeholder back), if they verify."""
        from cryptography.exceptions import InvalidSignature

        if signature is None:
            raise SignatureError(f"{what} is not signed")
        if not isinstance(signature, dict) or signature.get("alg") != ALG:
            raise SignatureError(f"{what} has no {ALG} signature object")
        if signature.get("key") != self.key_id:
            raise SignatureError(
                f"{what} is signed by key {str(signature.get('key'))[:16]!r}, "
                f"this device trusts key {self.key_id}"
            )
        sig = signature.get("sig")
        sig_bytes = b""
        if isinstance(sig, str) and len(sig) == SIG_CHARS:
            with contextlib.suppress(binascii.Error, ValueError):
                sig_bytes = base64.b64decode(sig, validate=True)
        if len(sig_bytes) != 64:
            raise SignatureError(f"{what} has a malformed signature")
        token = sig.encode("ascii")
        if raw.count(token) != 1:
            raise SignatureError(f"{what}: its signature is not written exactly once")
        template = raw.replace(token, _PLACEHOLDER_B)
        try:
            self._key.verify(sig_bytes, CONTEXT + template)
        except InvalidSignature:
            raise SignatureError(
                f"{what} does not match its signature (tampered with or truncated)"
            ) from None
        return template

    def model(self, raw: bytes) -> Envelope:
        """Decode and verify a model envelope; returns the envelope parsed from signed bytes."""
        env = decode(raw, expect_kind="model")
        signed = self.signed_bytes(raw, env.meta.get("signature"), "the model")
        return decode(signed, expect_kind="model")

    def secagg(self, raw: bytes) -> Envelope:
        """Decode and verify a coordinator's secure-aggregation stage message."""
        env = decode(raw, expect_kind="secagg")
        what = f"the secure-aggregation {str(env.meta.get('stage'))[:20]!r} message"
        signed = self.signed_bytes(raw, env.meta.get("signature"), what)
        return decode(signed, expect_kind="secagg")

    def announcement(self, raw: bytes, *, site_keys: bool = True) -> RoundAnnouncement:
        """Parse and verify a round announcement (from the verified bytes).

        Signed with this (the job's) key, or (unless ``site_keys`` is False: the central
        job's own rounds) by a site aggregator with a key this key endorsed: then the
        announcement carries the endorsement, which must verify with this key and name the
        announcement's job."""
        ann = RoundAnnouncement.from_json(raw)
        what, verifier = f"the round {ann.round} announcement", self
        signature = ann.signature
        signer = signature.get("key") if isinstance(signature, dict) else None
        if site_keys and ann.endorsement is not None and signer != self.key_id:
            verifier = self.endorsed_site(ann.endorsement, ann.job)
            what = f"{what} of site {verifier.site!r}"
        signed = verifier.signed_bytes(raw, signature, what)
        return RoundAnnouncement.from_json(signed)

    def endorsed_site(self, endorsement: str, job: str) -> SiteVerifier:
        """The verifier of a site's key, if ``endorsement`` (a SiteEndorsement's exact JSON)
        verifies with this key and is for ``job``; SignatureError otherwise."""
        try:
            # (a lone surrogate such as \ud800 is a valid JSON escape but encodes to no bytes)
            raw = endorsement.encode("utf-8")
            parsed = SiteEndorsement.from_json(raw)
        except (ProtocolError, UnicodeEncodeError) as exc:
            raise SignatureError(f"the site endorsement is malformed: {exc}") from None
        what = f"the endorsement of site {parsed.site!r}"
        endorsed = SiteEndorsement.from_json(self.signed_bytes(raw, parsed.signature, what))
        if endorsed.job != job:
            raise SignatureError(
                f"{what} is for job {endorsed.job!r}, not {job!r}: a site key vouched for "
                "in one job announces nothing in another"
            )
        return SiteVerifier(endorsed.public_raw, endorsed.site)

    def control(self, raw: bytes) -> JobControl:
        """Parse and verify a control message (from the verified bytes)."""
        ctl = JobControl.from_json(raw)
        signed = self.signed_bytes(raw, ctl.signature, f"the control message {ctl.state!r}")
        return JobControl.from_json(signed)


class SiteVerifier(Verifier):
    """Checks a site aggregator's signatures: its key, endorsed by the job's (see
    :meth:`Verifier.endorsed_site`); only its round announcements are ever checked with it."""

    def __init__(self, public_raw: bytes, site: str) -> None:
        super().__init__(public_raw)
        self.site = site
