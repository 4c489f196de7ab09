"""docs/protocol.md's int8 test vector (section 4) is what the code encodes and decodes."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np

from edge_client.protocol import decode, encode_weights, weights_sha256

DOC = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"
VALUES = [0.0652, -0.0326, 0.00616, -0.00667, 0.0318, 0.00513, -0.0267, 0.0472]


def doc_vector() -> dict[str, str]:
    """The ``label: value`` lines of the text block under "int8 decoding, exactly"."""
    text = DOC.read_text()
    section = text[text.index("### int8 decoding, exactly") :]
    block = section[section.index("```text\n") + 8 :]
    block = block[: block.index("```")]
    return dict(line.split(": ", 1) for line in block.strip().splitlines())


def test_the_docs_int8_vector_matches_the_code() -> None:
    # Prepare
    doc = doc_vector()
    header = doc["header"].encode()
    body = bytes.fromhex(doc["body (hex)"])
    envelope = b"EFLM\x01\x00\x00\x00" + struct.pack("<I", len(header)) + header + body
    # Execute
    encoded = encode_weights(
        {"w": np.array(VALUES, np.float32).reshape(2, 4)},
        kind="global",
        job="demo",
        round=1,
        sender="coordinator",
        encoding="int8",
    )
    decoded = decode(envelope)
    w = decoded.weights()["w"]
    # Assert: the bytes
    assert encoded == envelope
    assert hashlib.sha256(envelope).hexdigest() == doc["envelope sha256"]
    assert f"{len(envelope)} bytes with the sha256 above" in DOC.read_text()
    q = np.frombuffer(body, np.int8)
    assert q.tolist() == [int(v) for v in doc["q"].split()]
    scale = json.loads(header)["tensors"][0]["scale"]
    assert f"{np.float32(scale).view('<u4'):08x}" == doc["float32(scale) (bits, hex)"]
    # the decoded floats, bit for bit, and their digest
    assert w.dtype == np.float32 and w.shape == (2, 4)
    bits = [f"{b:08x}" for b in w.ravel().view("<u4")]
    assert bits == doc["decoded (float32 bits, hex)"].split()
    assert w.ravel().tolist() == [float(np.float32(v)) for v in doc["decoded"].split()]
    assert decoded.weights_sha256() == weights_sha256({"w": w}) == doc["weights_sha256"]
    # the float64 product the doc warns about really gives another digest
    wrong = (q.astype(np.float64) * scale).astype(np.float32).reshape(2, 4)
    assert weights_sha256({"w": wrong}) == doc["weights_sha256 if computed in float64 (wrong)"]
    assert doc["weights_sha256 if computed in float64 (wrong)"] != doc["weights_sha256"]


BOARD_DECODE = """
import struct, sys
from edge_client.protocol import decode
header, body = sys.argv[1].encode(), bytes.fromhex(sys.argv[2])
print(decode(b"EFLM\\x01\\x00\\x00\\x00" + struct.pack("<I", len(header)) + header + body).weights_sha256())
"""


def test_the_board_environment_decodes_the_vector_alike(board) -> None:  # noqa: ANN001
    # the board's numpy 1.x must give the same float32 products as numpy 2.x here
    doc = doc_vector()
    r = board(BOARD_DECODE, doc["header"], doc["body (hex)"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == doc["weights_sha256"]
