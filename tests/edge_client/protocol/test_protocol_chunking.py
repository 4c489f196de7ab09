"""Chunking: split/reassemble round trips, damage, duplicates, and memory bounds."""

from __future__ import annotations

import hashlib
import random
import struct

import pytest

from edge_client.errors import ProtocolError
from edge_client.protocol import (
    CHUNK_HEADER_SIZE,
    DEFAULT_MAX_CHUNK,
    Reassembler,
    Topics,
    chunk_topics,
    chunked,
    parse_chunk,
    split,
)

BASE = "fl/v1/demo/global"
SMALL = 1000  # max_chunk used to get many chunks from small payloads
SLICE = SMALL - CHUNK_HEADER_SIZE


def _payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _feed_all(reassembler: Reassembler, chunks: list[bytes], base: str = BASE) -> list[bytes]:
    return [m for c in chunks if (m := reassembler.feed(base, c)) is not None]


def test_default_chunk_keeps_mqtt_packets_under_one_million_bytes() -> None:
    # Prepare: the longest topic valid ids allow, MQTT 5 fixed header + topic + packet id
    topic = Topics("j" * 64, prefix="/".join(["p" * 64] * 8)).update("d" * 64) + "/4294967295"
    packet = 5 + 2 + len(topic) + 2 + DEFAULT_MAX_CHUNK

    # Assert: leaves > 30 kB for MQTT 5 properties
    assert CHUNK_HEADER_SIZE == 104
    assert packet < 1_000_000 - 30_000


@pytest.mark.parametrize(
    "size",
    [0, 1, SLICE - 1, SLICE, SLICE + 1, 3 * SLICE, 3 * SLICE + 7],
)
def test_split_and_reassemble_round_trip_small_sizes(size: int) -> None:
    # Prepare
    payload = _payload(size)

    # Execute
    chunks = split(payload, SMALL)
    messages = _feed_all(Reassembler(), chunks)

    # Assert
    assert messages == [payload]
    assert len(chunks) == max(1, -(-size // SLICE))
    assert all(len(c) <= SMALL for c in chunks)


@pytest.mark.parametrize(
    "size",
    [
        DEFAULT_MAX_CHUNK - CHUNK_HEADER_SIZE,  # exactly one full default chunk
        DEFAULT_MAX_CHUNK - CHUNK_HEADER_SIZE + 1,  # one byte more: two chunks
        5 * 1024 * 1024 + 3,  # several MiB
    ],
)
def test_split_and_reassemble_round_trip_default_sizes(size: int) -> None:
    # Prepare
    payload = _payload(size, seed=size)

    # Execute
    chunks = split(payload)
    messages = _feed_all(Reassembler(), chunks)

    # Assert
    assert messages == [payload]
    assert all(len(c) <= DEFAULT_MAX_CHUNK for c in chunks)
    assert len(chunks) == -(-size // (DEFAULT_MAX_CHUNK - CHUNK_HEADER_SIZE))


def test_chunk_header_matches_documented_layout() -> None:
    # Prepare
    payload = _payload(2500)

    # Execute
    first = split(payload, SMALL)[0]
    fields = struct.unpack_from("<4sB3s16sIIQ32s32s", first)

    # Assert
    magic, version, reserved, mid, index, count, total, whole, digest = fields
    assert (magic, version, reserved, index, count, total) == (b"EFLC", 1, b"\0\0\0", 0, 3, 2500)
    assert whole == hashlib.sha256(payload).digest()
    assert digest == hashlib.sha256(first[104:]).digest()
    assert first[104:] == payload[:SLICE]
    assert len(mid) == 16


def test_same_message_gets_same_id_and_different_messages_do_not() -> None:
    a1, a2, b = split(b"a" * 10, SMALL), split(b"a" * 10, SMALL), split(b"b" * 10, SMALL)

    assert a1 == a2
    assert parse_chunk(a1[0]).message_id != parse_chunk(b[0]).message_id
    assert parse_chunk(a1[0]).message_id != parse_chunk(split(b"a" * 10, 500)[0]).message_id


def test_shuffled_and_duplicated_chunks_yield_the_message_once() -> None:
    # Prepare
    payload = _payload(20 * SLICE + 5)
    chunks = split(payload, SMALL)
    stream = chunks + chunks[:7] + chunks[3:9]
    random.Random(1).shuffle(stream)
    stream = [c for c in stream if c != chunks[-1]] + [chunks[-1]]  # complete on the last one

    # Execute
    reassembler = Reassembler()
    messages = _feed_all(reassembler, stream)

    # Assert
    assert messages == [payload]
    assert reassembler.pending_count == 0
    assert reassembler.pending_bytes == 0


def test_interleaved_messages_on_different_topics_both_complete() -> None:
    # Prepare
    a, b = _payload(5000, 1), _payload(7000, 2)
    ca, cb = split(a, SMALL), split(b, SMALL)
    stream = [("t/a", c) for c in ca] + [("t/b", c) for c in cb]
    random.Random(3).shuffle(stream)

    # Execute
    reassembler = Reassembler()
    out = {t: m for t, c in stream if (m := reassembler.feed(t, c)) is not None}

    # Assert
    assert out == {"t/a": a, "t/b": b}


def test_topic_index_must_match_chunk_header() -> None:
    chunks = split(_payload(3000), SMALL)

    with pytest.raises(ProtocolError, match="arrived on topic index 0"):
        Reassembler().feed(BASE, chunks[1], index=0)


def test_zero_length_payload_is_a_cleared_retained_message() -> None:
    assert Reassembler().feed(BASE, b"") is None


def _flip(chunk: bytes, offset: int) -> bytes:
    return chunk[:offset] + bytes([chunk[offset] ^ 0x01]) + chunk[offset + 1 :]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda c: c[:50], "shorter than"),
        (lambda c: b"EFLM" + c[4:], "not a chunk"),
        (lambda c: c[:4] + b"\x02" + c[5:], "unsupported chunk version 2"),
        (lambda c: c[:6] + b"\x01" + c[7:], "reserved"),
        (lambda c: _flip(c, 200), "corrupted"),
        (lambda c: c[:-1], "corrupted"),
        (lambda c: c[:24] + struct.pack("<I", 9) + c[28:], "out of range"),
        (lambda c: c[:28] + struct.pack("<I", 0) + c[32:], "out of range"),
        (lambda c: c[:32] + struct.pack("<Q", 10) + c[40:], "carries"),
        (lambda c: c[:28] + struct.pack("<I", 4000) + c[32:], "exceeds the message length"),
    ],
)
def test_damaged_chunks_are_rejected(damage, message: str) -> None:  # noqa: ANN001
    chunk = split(_payload(3000), SMALL)[1]

    with pytest.raises(ProtocolError, match=message):
        Reassembler().feed(BASE, damage(chunk))


def test_wrong_whole_message_checksum_drops_the_message() -> None:
    # Prepare: consistent chunks whose data is not the message the checksum names
    good = split(_payload(1500), SMALL)
    other = split(_payload(1500, seed=9), SMALL)
    forged = [c[:72] + o[72:] for c, o in zip(good, other, strict=True)]  # keep id + whole sha
    reassembler = Reassembler()

    # Execute
    assert reassembler.feed(BASE, forged[0]) is None
    with pytest.raises(ProtocolError, match="whole-message sha256"):
        reassembler.feed(BASE, forged[1])

    # Assert
    assert reassembler.pending_count == 0


def test_inconsistent_chunk_is_rejected_without_losing_pending_messages() -> None:
    # Prepare
    payload, other = _payload(5000), _payload(3000, 4)
    chunks, other_chunks = split(payload, SMALL), split(other, SMALL)
    reassembler = Reassembler()
    reassembler.feed(BASE, chunks[0])
    reassembler.feed("t/other", other_chunks[0])
    # same message id, but a different count/total in the header
    liar = chunks[1][:28] + struct.pack("<IQ", 5000, 5000) + chunks[1][40:]
    conflicting = split(_payload(5000, 5), SMALL)[1]
    conflicting = chunks[1][:24] + conflicting[24:]  # same id and index, other data

    # Execute / Assert
    with pytest.raises(ProtocolError, match="disagrees"):
        reassembler.feed(BASE, liar)
    reassembler.feed(BASE, chunks[1])
    with pytest.raises(ProtocolError, match="disagrees|conflicts"):
        reassembler.feed(BASE, conflicting)
    assert _feed_all(reassembler, chunks[2:]) == [payload]
    assert _feed_all(reassembler, other_chunks[1:], "t/other") == [other]


def test_newer_message_replaces_partial_one_on_the_same_topic() -> None:
    # Prepare
    old, new = split(_payload(3000, 1), SMALL), split(_payload(3000, 2), SMALL)
    reassembler = Reassembler(max_per_topic=1)

    # Execute
    reassembler.feed(BASE, old[0])
    reassembler.feed(BASE, new[0])
    late_old = [reassembler.feed(BASE, c) for c in old[1:]]

    # Assert: the old message was dropped, so its remaining chunks start it over (incomplete)
    assert late_old == [None] * (len(old) - 1)
    assert reassembler.pending_count == 1


def test_default_keeps_a_transfer_alive_across_a_stale_retained_chunk() -> None:
    # Prepare: a stale retained chunk 5 of an older 6-chunk message arrives mid-transfer
    stale = split(_payload(5500, 1), SMALL)
    fresh_payload = _payload(2500, 2)
    fresh = split(fresh_payload, SMALL)
    reassembler = Reassembler()

    # Execute
    messages = _feed_all(reassembler, [fresh[0], stale[5], fresh[1], fresh[2]])

    # Assert
    assert messages == [fresh_payload]
    assert reassembler.pending_count == 1  # the stale partial, bounded by the limits


def test_memory_bound_evicts_oldest_partial_messages() -> None:
    # Prepare: each message holds 2 * SLICE bytes after two chunks; room for three
    reassembler = Reassembler(max_bytes=6 * SLICE + 10, max_pending=100)
    messages = [split(_payload(4 * SLICE, seed), SMALL) for seed in range(5)]

    # Execute
    for i, chunks in enumerate(messages):
        reassembler.feed(f"t/{i}", chunks[0])
        reassembler.feed(f"t/{i}", chunks[1])

    # Assert: oldest two evicted, bound held
    assert reassembler.pending_bytes <= 6 * SLICE + 10
    assert reassembler.pending_count == 3
    assert _feed_all(reassembler, messages[4][2:], "t/4") == [
        b"".join(parse_chunk(c).data for c in messages[4])
    ]
    assert _feed_all(reassembler, messages[0][2:], "t/0") == []


def test_pending_count_bound_evicts_oldest() -> None:
    # Prepare
    reassembler = Reassembler(max_pending=2)
    messages = [split(_payload(3000, seed), SMALL) for seed in range(3)]

    # Execute
    for i, chunks in enumerate(messages):
        reassembler.feed(f"t/{i}", chunks[0])

    # Assert
    assert reassembler.pending_count == 2
    assert _feed_all(reassembler, messages[0][1:], "t/0") == []
    assert len(_feed_all(reassembler, messages[2][1:], "t/2")) == 1


def test_message_larger_than_the_limit_is_refused() -> None:
    with pytest.raises(ProtocolError, match="exceeds the reassembly limit"):
        Reassembler(max_bytes=2000).feed(BASE, split(_payload(3000), SMALL)[0])


def test_timeout_drops_idle_partial_messages_with_injected_clock() -> None:
    # Prepare
    now = [100.0]
    reassembler = Reassembler(timeout_s=30.0, clock=lambda: now[0])
    a, b = split(_payload(3000, 1), SMALL), split(_payload(3000, 2), SMALL)
    reassembler.feed("t/a", a[0])
    now[0] = 120.0
    reassembler.feed("t/b", b[0])

    # Execute
    now[0] = 140.0  # a idle 40 s, b idle 20 s
    result = reassembler.feed("t/b", b[1])

    # Assert
    assert result is None
    assert reassembler.pending_count == 1
    assert _feed_all(reassembler, a[1:], "t/a") == []


def test_discard_and_clear_release_memory() -> None:
    reassembler = Reassembler()
    reassembler.feed("t/a", split(_payload(3000, 1), SMALL)[0])
    reassembler.feed("t/b", split(_payload(3000, 2), SMALL)[0])

    assert reassembler.discard("t/a") == 1
    assert reassembler.pending_count == 1
    reassembler.clear()
    assert (reassembler.pending_count, reassembler.pending_bytes) == (0, 0)


def test_chunked_pairs_topics_with_chunks_and_chunk_topics_lists_stale_ones() -> None:
    pairs = chunked(BASE, _payload(2500), SMALL)

    assert [t for t, _ in pairs] == [f"{BASE}/0", f"{BASE}/1", f"{BASE}/2"]
    assert chunk_topics(BASE, 5, start=3) == [f"{BASE}/3", f"{BASE}/4"]


def test_split_refuses_a_chunk_size_that_cannot_hold_data() -> None:
    with pytest.raises(ProtocolError, match="max_chunk"):
        split(b"abc", CHUNK_HEADER_SIZE)
