"""Shamir secret sharing of a 32-byte secret over GF(2^521 - 1), with Python ints.

Why not a library: the only well-kept candidate on PyPI is PyCryptodome's
``Crypto.Protocol.SecretSharing.Shamir`` (16-byte secrets over GF(2^128)); it would add a
second cryptography library to every board for some 60 lines of polynomial arithmetic, and
its ``combine`` cannot tell garbage shares from good ones. Here the secret is one element of
the Mersenne-prime field p = 2^521 - 1 (a 32-byte secret is < 2^256 << p):

- ``split``: a random polynomial of degree t-1 (coefficients from ``secrets``) with the
  secret as constant term, evaluated at the holders' indexes x = 1..n.
- ``reconstruct``: Lagrange interpolation at 0 from any t shares. Extra shares are checked
  against the interpolated polynomial (inconsistent shares -> SecAggError naming them), and
  a result that is not below 2^256 cannot be a secret: with exactly t shares, a garbage share
  is caught this way except with probability about 2^-265.

A share on the wire is ``x`` (4 bytes, big-endian) + ``y`` (66 bytes, big-endian).
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Sequence

from edge_client.secagg.errors import SecAggError, TooFewSurvivorsError

PRIME = 2**521 - 1
SECRET_BYTES = 32
_Y_BYTES = 66  # ceil(521 / 8)
SHARE_BYTES = 4 + _Y_BYTES


@dataclasses.dataclass(frozen=True)
class Share:
    """One point (x, y) of the sharing polynomial; x is the holder's index, 1..2^32-1."""

    x: int
    y: int

    def to_bytes(self) -> bytes:
        return self.x.to_bytes(4, "big") + self.y.to_bytes(_Y_BYTES, "big")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Share:
        if len(raw) != SHARE_BYTES:
            raise SecAggError(f"a share has {SHARE_BYTES} bytes, not {len(raw)}")
        x, y = int.from_bytes(raw[:4], "big"), int.from_bytes(raw[4:], "big")
        if x == 0 or y >= PRIME:
            raise SecAggError("a share is malformed (index 0 or value outside the field)")
        return cls(x, y)


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> list[Share]:
    """Shares of ``secret`` at the indexes ``xs``; any ``threshold`` of them rebuild it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"the secret must have {SECRET_BYTES} bytes, not {len(secret)}")
    if len(set(xs)) != len(xs) or any(not 0 < x < 2**32 for x in xs):
        raise ValueError("share indexes must be distinct integers in 1..2^32-1")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} is not within 1..{len(xs)} (the share holders)")
    coeffs = [int.from_bytes(secret, "big")] + [
        secrets.randbelow(PRIME) for _ in range(threshold - 1)
    ]
    return [Share(x, _evaluate(coeffs, x)) for x in xs]


def _evaluate(coeffs: Sequence[int], x: int) -> int:
    y = 0
    for c in reversed(coeffs):  # Horner
        y = (y * x + c) % PRIME
    return y


def _inverses(values: Sequence[int]) -> list[int]:
    """The inverses mod PRIME of nonzero ``values`` with one ``pow`` (batch inversion)."""
    prefix, acc = [], 1
    for v in values:
        prefix.append(acc)
        acc = acc * v % PRIME
    inv = pow(acc, -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inv * prefix[i] % PRIME
        inv = inv * values[i] % PRIME
    return out


def _interpolate(points: Sequence[Share], at: Sequence[int]) -> list[int]:
    """The values at each of ``at`` of the polynomial of degree < len(points) through
    ``points`` (barycentric Lagrange form: O(t^2) for the weights, then O(t) per value; every
    inverse from one batch inversion)."""
    xs = [p.x for p in points]
    dens = []
    for i, xi in enumerate(xs):
        den = 1
        for j, xj in enumerate(xs):
            if i != j:
                den = den * (xi - xj) % PRIME
        dens.append(den)
    targets = [z for z in at if z not in xs]
    diffs = sorted({(z - xi) % PRIME for z in targets for xi in xs})  # few: indexes are small
    invs = _inverses(dens + diffs)
    t = len(xs)
    wy = [p.y * w % PRIME for p, w in zip(points, invs[:t])]  # y_i / prod_{j != i}(x_i - x_j)
    inverse = dict(zip(diffs, invs[t:]))
    values = {p.x: p.y for p in points}
    for z in targets:
        total, ell = 0, 1
        for xi, a in zip(xs, wy):
            total += a * inverse[(z - xi) % PRIME]
            ell = ell * (z - xi) % PRIME
        values[z] = total % PRIME * ell % PRIME
    return [values[z] for z in at]


def reconstruct(shares: Sequence[Share], threshold: int, what: str = "the secret") -> bytes:
    """The secret from at least ``threshold`` shares (all of them checked for consistency)."""
    distinct = {s.x: s for s in shares}
    if len(distinct) != len(shares):
        raise SecAggError(f"{what}: two shares have the same index")
    if len(shares) < threshold:
        raise TooFewSurvivorsError(
            f"{what}: {len(shares)} shares arrived, {threshold} are needed (too many dropped out)"
        )
    base, extra = list(shares[:threshold]), list(shares[threshold:])
    *expected, value = _interpolate(base, [*(s.x for s in extra), 0])
    bad = [s.x for s, y in zip(extra, expected) if y != s.y]
    if bad:
        raise SecAggError(f"{what}: the shares are inconsistent (indexes {bad} disagree)")
    if value >= 2 ** (8 * SECRET_BYTES):
        raise SecAggError(f"{what}: the shares are garbage (they do not rebuild a 32-byte secret)")
    return value.to_bytes(SECRET_BYTES, "big")


def pack_pair(seed_share: Share, key_share: Share) -> bytes:
    """What a device encrypts for one neighbour: its self-seed share, then its mask-key share."""
    return seed_share.to_bytes() + key_share.to_bytes()


def unpack_pair(raw: bytes) -> tuple[Share, Share]:
    """(self-seed share, mask-key share) from :func:`pack_pair`'s bytes."""
    if len(raw) != 2 * SHARE_BYTES:
        raise SecAggError(f"a share pair has {2 * SHARE_BYTES} bytes, not {len(raw)}")
    return Share.from_bytes(raw[:SHARE_BYTES]), Share.from_bytes(raw[SHARE_BYTES:])
