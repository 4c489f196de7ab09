"""Mask vectors from a 32-byte seed: the ChaCha20 keystream read as ring elements.

``mask(seed, n, ring)`` encrypts ``n * k/8`` zero bytes with ChaCha20 (key = seed, nonce =
16 zero bytes: a seed is used for one vector only) and reads the bytes as little-endian
unsigned k-bit integers, uniform in Z_2^k.
"""

from __future__ import annotations

import numpy as np

from edge_client.secagg.errors import crypto
from edge_client.secagg.quantize import Ring

SEED_BYTES = 32
_NONCE = bytes(16)  # cryptography's ChaCha20 nonce: 4-byte counter + 12-byte nonce, all zero


def mask(seed: bytes, n: int, ring: Ring) -> np.ndarray:
    """The mask vector of ``n`` ring elements expanded from ``seed``. Shape (n,)."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a mask seed has {SEED_BYTES} bytes, not {len(seed)}")
    ciphers = crypto("ciphers")
    algorithms = crypto("ciphers.algorithms")
    encryptor = ciphers.Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(n * ring.dtype.itemsize))
    return np.frombuffer(stream, dtype=ring.dtype.newbyteorder("<")).astype(ring.dtype)
