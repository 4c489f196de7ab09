"""X25519 key pairs, pairwise seeds (X25519 + HKDF) and AEAD-encrypted shares.

Each device makes two key pairs per round (Bonawitz et al. 2017): ``c`` to agree the key
that encrypts the shares it exchanges with a neighbour, ``s`` to agree the pairwise mask
seed ``s_ij``. Both derivations run HKDF-SHA256 over the X25519 shared secret with ``info``
binding the purpose, job, run, round and the two device ids (sorted, so both ends derive
the same bytes). Shares travel as ChaCha20-Poly1305 ciphertexts whose associated data names
sender, recipient and round, so a share replayed to another device, round or direction
fails to decrypt.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

from edge_client.secagg.errors import SecAggError, crypto

KEY_BYTES = 32
NONCE_BYTES = 12
_LABEL = b"edgefl-secagg-v1"


@dataclasses.dataclass(frozen=True)
class RoundContext:
    """What binds derived keys and ciphertexts to one round of one job."""

    job: str
    run: str
    round: int

    @classmethod
    def of_session(cls, job: str, run: str | None, round_: int, session: str) -> RoundContext:
        """A secure round attempt's context: ``run`` is ``<run id>.<session>`` (``-`` for a
        coordinator without run ids), so a retried round never reuses a key or ciphertext."""
        return cls(job, f"{run or '-'}.{session}", round_)

    def info(self, purpose: str, a: str, b: str) -> bytes:
        """HKDF info / AEAD associated data: purpose, round and two device ids."""
        fields = (purpose, self.job, self.run, str(self.round), a, b)
        if any("\n" in f for f in fields):
            raise ValueError("ids in a secure-aggregation context cannot hold newlines")
        return b"\n".join([_LABEL, *(f.encode("utf-8") for f in fields)])


class KeyPair:
    """An X25519 key pair; ``public`` is the raw 32 bytes sent to the others."""

    def __init__(self, private: Any) -> None:
        self._private = private
        serialization = crypto("serialization")
        self.public: bytes = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(crypto("asymmetric.x25519").X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        """Rebuild a key pair from its 32 raw private bytes (e.g. reconstructed from shares)."""
        if len(raw) != KEY_BYTES:
            raise SecAggError(f"an X25519 private key has {KEY_BYTES} bytes, not {len(raw)}")
        return cls(crypto("asymmetric.x25519").X25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        """The raw private key: what a device Shamir-shares so its masks can be removed."""
        serialization = crypto("serialization")
        raw: bytes = self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return raw

    def agree(
        self, peer_public: bytes, ctx: RoundContext, purpose: str, me: str, peer: str
    ) -> bytes:
        """32 bytes both ends derive: HKDF(X25519(mine, theirs), info=ctx/purpose/sorted ids)."""
        x25519 = crypto("asymmetric.x25519")
        if len(peer_public) != KEY_BYTES:
            raise SecAggError(f"{peer}'s public key has {len(peer_public)} bytes, not {KEY_BYTES}")
        try:
            shared = self._private.exchange(x25519.X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as exc:  # e.g. a low-order point: all-zero shared secret
            raise SecAggError(f"{peer}'s public key is unusable: {exc}") from None
        a, b = sorted((me, peer))
        hkdf = crypto("kdf.hkdf").HKDF(
            algorithm=crypto("hashes").SHA256(),
            length=KEY_BYTES,
            salt=None,
            info=ctx.info(purpose, a, b),
        )
        derived: bytes = hkdf.derive(shared)
        return derived


def check_public(raw: bytes, what: str = "a public key") -> bytes:
    """``raw`` if it is an X25519 public key that agrees a usable secret, else SecAggError
    (e.g. a low-order point, whose shared secret is all zeros)."""
    if len(raw) != KEY_BYTES:
        raise SecAggError(f"{what} has {len(raw)} bytes, not {KEY_BYTES}")
    x25519 = crypto("asymmetric.x25519")
    try:
        x25519.X25519PrivateKey.generate().exchange(x25519.X25519PublicKey.from_public_bytes(raw))
    except ValueError as exc:
        raise SecAggError(f"{what} is unusable: {exc}") from None
    return raw


def pairwise_seed(
    keys: KeyPair, peer_public: bytes, ctx: RoundContext, me: str, peer: str
) -> bytes:
    """The pairwise mask seed s_ij (from the ``s`` key pairs)."""
    return keys.agree(peer_public, ctx, "mask", me, peer)


def share_key(keys: KeyPair, peer_public: bytes, ctx: RoundContext, me: str, peer: str) -> bytes:
    """The AEAD key for shares between two devices (from the ``c`` key pairs)."""
    return keys.agree(peer_public, ctx, "share", me, peer)


def _ad(ctx: RoundContext, sender: str, recipient: str) -> bytes:
    return ctx.info("share-ciphertext", sender, recipient)  # ordered: direction matters


def encrypt_share(
    key: bytes, plaintext: bytes, ctx: RoundContext, sender: str, recipient: str
) -> bytes:
    """nonce (12 random bytes) + ChaCha20-Poly1305(plaintext, AD = sender, recipient, round)."""
    aead = crypto("ciphers.aead").ChaCha20Poly1305(key)
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed: bytes = aead.encrypt(nonce, plaintext, _ad(ctx, sender, recipient))
    return nonce + sealed


def decrypt_share(key: bytes, blob: bytes, ctx: RoundContext, sender: str, recipient: str) -> bytes:
    """The plaintext of :func:`encrypt_share`, or SecAggError if it was tampered with or misrouted."""
    from cryptography.exceptions import InvalidTag

    aead = crypto("ciphers.aead").ChaCha20Poly1305(key)
    if len(blob) < NONCE_BYTES + 16:
        raise SecAggError(f"the encrypted share from {sender} to {recipient} is truncated")
    try:
        plain: bytes = aead.decrypt(
            blob[:NONCE_BYTES], blob[NONCE_BYTES:], _ad(ctx, sender, recipient)
        )
    except InvalidTag:
        raise SecAggError(
            f"the encrypted share from {sender} to {recipient} does not decrypt "
            f"(tampered with, or not for round {ctx.round})"
        ) from None
    return plain
