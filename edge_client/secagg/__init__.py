"""Secure aggregation (SecAgg+): the primitives and the masking arithmetic of secure rounds.

The coordinator learns the sum of the round's quantized updates, never one device's update
(docs/secure-aggregation.md). Both sides import this package, without TensorFlow;
``cryptography`` is needed only when its functions run (a clear ConfigError otherwise).

- ``quantize``: clip and fixed-point quantize a weighted update into Z_2^k; dequantize sums.
- ``prg``: mask vectors from a 32-byte seed (ChaCha20 keystream).
- ``keys``: X25519 key pairs, pairwise seeds (HKDF), AEAD for shares.
- ``shamir``: t-of-n sharing of 32-byte secrets over GF(2^521 - 1).
- ``graph``: complete graph or SecAgg+'s random Harary graph, degree and threshold.
- ``masking``: mask one update, unmask the survivors' sum.
- ``updates``: a board's trained weights to its ring vector, the ring sum back to weights.

The rounds themselves: edge_client/secure_round.py (board), coordinator/secure_rounds.py.
"""

from edge_client.secagg.errors import SecAggError, TooFewSurvivorsError, available
from edge_client.secagg.graph import Graph, GraphParameters, build_graph, choose_parameters
from edge_client.secagg.keys import (
    KeyPair,
    RoundContext,
    check_public,
    decrypt_share,
    encrypt_share,
    pairwise_seed,
    share_key,
)
from edge_client.secagg.masking import mask_input, unmask
from edge_client.secagg.prg import SEED_BYTES, mask
from edge_client.secagg.quantize import (
    QuantConfig,
    Ring,
    dequantize_mean,
    dequantize_sum,
    quantize,
    to_signed,
)
from edge_client.secagg.shamir import Share, pack_pair, reconstruct, split, unpack_pair
from edge_client.secagg.updates import (
    choose_quantization,
    clip_l2,
    encode_change,
    flat_change,
    mean_weights,
    quant_config,
)

__all__ = [
    "SEED_BYTES",
    "Graph",
    "GraphParameters",
    "KeyPair",
    "QuantConfig",
    "Ring",
    "RoundContext",
    "SecAggError",
    "Share",
    "TooFewSurvivorsError",
    "available",
    "build_graph",
    "check_public",
    "choose_parameters",
    "choose_quantization",
    "clip_l2",
    "decrypt_share",
    "dequantize_mean",
    "dequantize_sum",
    "encode_change",
    "encrypt_share",
    "flat_change",
    "mask",
    "mask_input",
    "mean_weights",
    "pack_pair",
    "pairwise_seed",
    "quant_config",
    "quantize",
    "reconstruct",
    "share_key",
    "split",
    "to_signed",
    "unmask",
    "unpack_pair",
]
