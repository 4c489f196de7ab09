"""Key material a job can use: an Ed25519 signing key pair, and a small TLS CA with a
broker (server) certificate and optional client certificates. Uses ``cryptography``.

Private keys are written unencrypted with mode 0600; keep them on the coordinator (the
signing key) and the broker (the server key). Boards get only public material: the
signing public key and the CA certificate (plus their own client key for mutual TLS).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_client.errors import ConfigError, ProtocolError
from edge_client.protocol import check_id
from edge_client.signing import Signer

SIGNING_KEY = "signing.key"
SIGNING_PUB = "signing.pub"
CA_DAYS = 3650  # the CA outlives the certificates it signs
CERT_DAYS = 825  # the longest leaf validity browsers accept; irrelevant to MQTT but sane


def _crypto() -> Any:
    try:
        import cryptography  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError(
            "keys and certificates need the 'cryptography' package: pip install cryptography"
        ) from exc


def _write(path: Path, data: bytes, *, private: bool, force: bool) -> None:
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists: remove it or pass --force")
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600 if private else 0o644)  # also when the file existed


@dataclass(frozen=True)
class SigningKeys:
    private: Path
    public: Path
    key_id: str
    public_b64: str


def generate_signing_key(out: str | Path, *, force: bool = False) -> SigningKeys:
    """Write ``out/signing.key`` (PKCS#8 PEM, 0600) and ``out/signing.pub`` (PEM)."""
    _crypto()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    d = Path(out)
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for name in (SIGNING_KEY, SIGNING_PUB):
        if (d / name).exists() and not force:
            raise ConfigError(f"{d / name} already exists: remove it or pass --force")
    _write(d / SIGNING_KEY, private, private=True, force=force)
    _write(d / SIGNING_PUB, public, private=False, force=force)
    signer = Signer(key)
    return SigningKeys(d / SIGNING_KEY, d / SIGNING_PUB, signer.key_id, signer.public_b64)


# -- TLS ---------------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate clock skew


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> Any:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgefl"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _load_ca(d: Path) -> tuple[Any, Any] | None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    crt, key = d / "ca.crt", d / "ca.key"
    if not (crt.exists() and key.exists()):
        return None
    try:
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot load the CA in {d}: {exc}") from exc
    return cert, private


def _make_ca(d: Path, days: int) -> tuple[Any, Any]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key = _new_key()
    name = _name("edgefl CA")
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    _write(d / "ca.key", _key_pem(key), private=True, force=False)
    _write(d / "ca.crt", _cert_pem(cert), private=False, force=False)
    return cert, key


def _leaf(
    ca: tuple[Any, Any], common_name: str, hosts: Iterable[str], *, server: bool, days: int
) -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    ca_cert, ca_key = ca
    key = _new_key()
    alt: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alt.append(x509.DNSName(host))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now())
        .not_valid_after(_now() + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if alt:
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return _cert_pem(builder.sign(ca_key, hashes.SHA256())), _key_pem(key)


@dataclass(frozen=True)
class CertFiles:
    ca: Path
    created_ca: bool
    written: tuple[Path, ...]


def generate_certs(
    out: str | Path,
    *,
    hosts: Iterable[str] = (),
    clients: Iterable[str] = (),
    days: int = CERT_DAYS,
    force: bool = False,
) -> CertFiles:
    """A CA (``ca.crt``/``ca.key``, reused when present), a broker certificate for
    ``hosts`` (``server.crt``/``server.key``) and a certificate per client name
    (``client-NAME.crt``/``.key``, mutual TLS)."""
    _crypto()
    hosts, clients = list(hosts), list(clients)
    for c in clients:
        try:
            check_id(c, "client name")
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from None
    if not hosts and not clients:
        raise ConfigError("give at least one --host (the broker's address) or --client NAME")
    if days < 1:
        raise ConfigError("--days must be at least 1")
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    ca = _load_ca(d)
    created = ca is None
    if ca is None:
        ca = _make_ca(d, CA_DAYS)
    written: list[Path] = []
    jobs = [("server", hosts[0], hosts, True)] if hosts else []
    jobs += [(f"client-{c}", c, [], False) for c in clients]
    for stem, *_ in jobs:
        for ext in (".crt", ".key"):
            if (d / f"{stem}{ext}").exists() and not force:
                raise ConfigError(f"{d / (stem + ext)} already exists: remove it or pass --force")
    for stem, cn, names, server in jobs:
        cert, key = _leaf(ca, cn, names, server=server, days=days)
        _write(d / f"{stem}.crt", cert, private=False, force=True)
        _write(d / f"{stem}.key", key, private=True, force=True)
        written += [d / f"{stem}.crt", d / f"{stem}.key"]
    return CertFiles(d / "ca.crt", created, tuple(written))
