"""Splitting binary messages into MQTT-sized chunks and putting them back together.

Every binary message (an envelope) travels as ``count`` chunks on ``<base topic>/<index>``,
even when ``count`` is 1. Each chunk is a 104-byte header followed by a slice of the message
(all integers little endian)::

    offset  size  field
    0       4     magic b"EFLC"
    4       1     chunk format version (u8, = 1)
    5       3     reserved, zero
    8       16    message id
    24      4     index (u32, 0-based)
    28      4     count (u32, >= 1)
    32      8     total message length in bytes (u64)
    40      32    sha256 of the whole message
    72      32    sha256 of this chunk's data
    104     ...   data: message[index * size : (index + 1) * size]

:func:`split` derives the message id from the message's sha256, its length and the slice
size, so publishing the same message again yields the same chunks and a receiver dedupes
them. Receivers treat the id as opaque.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_client.errors import ProtocolError

logger = logging.getLogger(__name__)

CHUNK_MAGIC = b"EFLC"
CHUNK_VERSION = 1
_HEADER = struct.Struct("<4sB3s16sIIQ32s32s")
CHUNK_HEADER_SIZE = _HEADER.size  # 104

DEFAULT_MAX_CHUNK = 960_000
"""Bytes per MQTT payload (chunk header included). A PUBLISH packet adds a fixed header
(<= 5 bytes), the topic (2 + its length, under 300 bytes for valid ids), a packet id (2) and,
with MQTT 5, properties; 40,000 bytes of headroom keep every packet under 1,000,000 bytes, so
brokers limited to "1 MB" (EMQX's default 1 MiB, or a decimal 10^6) accept it."""

DEFAULT_MAX_PENDING = 32  # incomplete messages held at once (all topics)
DEFAULT_MAX_BYTES = 256 * 1024 * 1024  # chunk data held at once; also the largest message
DEFAULT_MAX_PER_TOPIC = 2  # incomplete messages per base topic (see Reassembler)
_MAX_COUNT = 2**32 - 1


@dataclass(frozen=True)
class Chunk:
    """A parsed, checksum-verified chunk."""

    message_id: bytes
    index: int
    count: int
    total: int
    message_sha256: bytes
    data: bytes = field(repr=False)
    data_sha256: bytes = field(default=b"", repr=False)  # verified sha256 of ``data``


def parse_chunk(payload: bytes | bytearray | memoryview) -> Chunk:
    """Parse one chunk and verify its header and data checksum."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"chunk must be bytes, got {type(payload).__name__}")
    raw = bytes(payload)
    if len(raw) < CHUNK_HEADER_SIZE:
        raise ProtocolError(
            f"chunk is {len(raw)} bytes, shorter than its {CHUNK_HEADER_SIZE}-byte header"
        )
    magic, version, reserved, mid, index, count, total, whole, digest = _HEADER.unpack_from(raw)
    if magic != CHUNK_MAGIC:
        raise ProtocolError(f"not a chunk: magic {magic!r}, expected {CHUNK_MAGIC!r}")
    if version != CHUNK_VERSION:
        raise ProtocolError(
            f"unsupported chunk version {version} (this side reads {CHUNK_VERSION})"
        )
    if reserved != b"\0\0\0":
        raise ProtocolError("chunk reserved bytes are not zero")
    data = raw[CHUNK_HEADER_SIZE:]
    if count < 1 or index >= count:
        raise ProtocolError(f"chunk index {index} is out of range for count {count}")
    if count > max(1, total):
        raise ProtocolError(f"chunk count {count} exceeds the message length {total}")
    if len(data) > total or (total > 0 and not data):
        raise ProtocolError(f"chunk {index} carries {len(data)} bytes of a {total}-byte message")
    if count == 1 and len(data) != total:
        raise ProtocolError(f"single chunk carries {len(data)} bytes, header says {total}")
    if hashlib.sha256(data).digest() != digest:
        raise ProtocolError(f"chunk {index} of {count} is corrupted (data sha256 mismatch)")
    return Chunk(mid, index, count, total, whole, data, digest)


def message_id(message_sha256: bytes, total: int, slice_size: int) -> bytes:
    """The 16-byte id :func:`split` gives a message (same message, same split -> same id)."""
    seed = b"EFLC-id" + message_sha256 + struct.pack("<QQ", total, slice_size)
    return hashlib.sha256(seed).digest()[:16]


def split(
    payload: bytes | bytearray | memoryview, max_chunk: int = DEFAULT_MAX_CHUNK
) -> list[bytes]:
    """Chunks of ``payload``, each at most ``max_chunk`` bytes including its header."""
    if isinstance(max_chunk, bool) or not isinstance(max_chunk, int):
        raise ProtocolError(f"max_chunk must be an integer, got {type(max_chunk).__name__}")
    if max_chunk <= CHUNK_HEADER_SIZE:
        raise ProtocolError(
            f"max_chunk must exceed the {CHUNK_HEADER_SIZE}-byte chunk header, got {max_chunk}"
        )
    view = memoryview(bytes(payload))
    total = len(view)
    size = max_chunk - CHUNK_HEADER_SIZE
    count = max(1, -(-total // size))
    if count > _MAX_COUNT:
        raise ProtocolError(
            f"a {total}-byte message needs {count} chunks; the limit is {_MAX_COUNT}"
        )
    whole = hashlib.sha256(view).digest()
    mid = message_id(whole, total, size)
    chunks = []
    for index in range(count):
        data = view[index * size : (index + 1) * size]
        digest = whole if count == 1 else hashlib.sha256(data).digest()
        header = _HEADER.pack(
            CHUNK_MAGIC, CHUNK_VERSION, b"\0\0\0", mid, index, count, total, whole, digest
        )
        chunks.append(header + bytes(data))
    return chunks


def chunk_topics(base_topic: str, count: int, start: int = 0) -> list[str]:
    """``[f"{base_topic}/{i}" for i in range(start, count)]``.

    ``chunk_topics(base, old_count, start=new_count)`` lists the retained chunks a shorter
    republish leaves behind; publish a zero-length retained payload on each to clear them.
    """
    return [f"{base_topic}/{index}" for index in range(start, count)]


def chunked(
    base_topic: str, payload: bytes, max_chunk: int = DEFAULT_MAX_CHUNK
) -> list[tuple[str, bytes]]:
    """(topic, chunk) pairs to publish for one message, in index order."""
    chunks = split(payload, max_chunk)
    return list(zip(chunk_topics(base_topic, len(chunks)), chunks, strict=True))


@dataclass
class _Pending:
    count: int
    total: int
    message_sha256: bytes
    last_seen: float
    chunks: dict[int, bytes] = field(default_factory=dict)
    received: int = 0


class Reassembler:
    """Collects chunks per base topic and returns each message once all its chunks arrived.

    Not thread-safe: feed it from one thread (the worker that drains the MQTT queue).

    - Idempotent: a duplicate chunk is ignored. A message sent again after it completed is
      returned again (QoS 1 duplicates): dedupe at the application level.
    - Bounded: at most ``max_pending`` incomplete messages and ``max_bytes`` of chunk data;
      the oldest incomplete message is dropped to make room. A message longer than
      ``max_bytes`` is rejected.
    - A new message id on a base topic that already holds ``max_per_topic`` incomplete
      messages drops the oldest of them. With 1, any newer message replaces a partial one;
      the default 2 keeps a fresh transfer alive when a stale retained chunk of an older,
      longer message arrives in the middle of it.
    - ``timeout_s`` (optional) drops incomplete messages that received no chunk for that
      long, measured with ``clock``.
    - Bad chunks raise ProtocolError and leave every pending message as it was, except a
      message whose reassembled bytes fail the whole-message checksum: it is dropped.
    """

    def __init__(
        self,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_per_topic: int = DEFAULT_MAX_PER_TOPIC,
        timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_pending < 1 or max_bytes < 1 or max_per_topic < 1:
            raise ValueError("max_pending, max_bytes and max_per_topic must be >= 1")
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.max_per_topic = max_per_topic
        self.timeout_s = timeout_s
        self._clock = clock
        self._pending: OrderedDict[tuple[str, bytes], _Pending] = OrderedDict()
        self._bytes = 0

    @property
    def pending_count(self) -> int:
        """Incomplete messages held."""
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        """Chunk data held for incomplete messages."""
        return self._bytes

    def feed(
        self, base_topic: str, chunk: bytes | bytearray | memoryview, *, index: int | None = None
    ) -> bytes | None:
        """Add one chunk received on ``<base_topic>/<index>``; the whole message when complete.

        A zero-length payload (a retained message being cleared) is ignored. ``index``, the
        chunk level of the topic, is checked against the chunk header when given.
        """
        if isinstance(chunk, (bytes, bytearray, memoryview)) and len(chunk) == 0:
            return None
        part = parse_chunk(chunk)
        if index is not None and index != part.index:
            raise ProtocolError(f"chunk {part.index} arrived on topic index {index}")
        if part.total > self.max_bytes:
            raise ProtocolError(
                f"message of {part.total} bytes exceeds the reassembly limit of "
                f"{self.max_bytes} bytes"
            )
        now = self._clock()
        self._expire(now)
        if part.count == 1:  # the data is the whole message, its sha256 already verified
            if part.data_sha256 != part.message_sha256:
                raise ProtocolError(
                    f"message on {base_topic!r} failed its whole-message sha256 check"
                )
            return part.data
        key = (base_topic, part.message_id)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._start(key, part, now)
        else:
            _check_consistent(pending, part, base_topic)
        pending.last_seen = now
        if part.index in pending.chunks:
            if pending.chunks[part.index] != part.data:
                raise ProtocolError(
                    f"chunk {part.index} on {base_topic!r} conflicts with an earlier copy"
                )
            return None
        if pending.received + len(part.data) > pending.total:
            raise ProtocolError(
                f"chunks on {base_topic!r} carry more than the declared {pending.total} bytes"
            )
        self._make_room(len(part.data), keep=key)
        pending.chunks[part.index] = part.data
        pending.received += len(part.data)
        self._bytes += len(part.data)
        if len(pending.chunks) < pending.count:
            return None
        self._drop(key)
        message = b"".join(pending.chunks[i] for i in range(pending.count))
        if len(message) != pending.total:
            raise ProtocolError(
                f"message on {base_topic!r} is {len(message)} bytes, its chunks "
                f"declare {pending.total}"
            )
        return _verified(message, pending.message_sha256, base_topic)

    def discard(self, base_topic: str) -> int:
        """Drop the incomplete messages of one base topic; how many were dropped."""
        keys = [key for key in self._pending if key[0] == base_topic]
        for key in keys:
            self._drop(key)
        return len(keys)

    def clear(self) -> None:
        """Drop every incomplete message."""
        self._pending.clear()
        self._bytes = 0

    def _start(self, key: tuple[str, bytes], part: Chunk, now: float) -> _Pending:
        same_topic = [k for k in self._pending if k[0] == key[0]]
        while len(same_topic) >= self.max_per_topic:
            self._evict(same_topic.pop(0), "a newer message started on the same topic")
        while len(self._pending) >= self.max_pending:
            self._evict(next(iter(self._pending)), "too many incomplete messages")
        pending = _Pending(part.count, part.total, part.message_sha256, now)
        self._pending[key] = pending
        return pending

    def _make_room(self, size: int, keep: tuple[str, bytes]) -> None:
        while self._bytes + size > self.max_bytes:
            victim = next((k for k in self._pending if k != keep), None)
            if victim is None:  # unreachable: a message is never longer than max_bytes
                break
            self._evict(victim, "reassembly memory limit reached")

    def _expire(self, now: float) -> None:
        if self.timeout_s is None:
            return
        stale = [k for k, p in self._pending.items() if now - p.last_seen > self.timeout_s]
        for key in stale:
            self._evict(key, f"no chunk for {self.timeout_s} s")

    def _evict(self, key: tuple[str, bytes], why: str) -> None:
        pending = self._pending[key]
        logger.warning(
            "dropping incomplete message %s on %s (%d of %d chunks): %s",
            key[1].hex()[:12],
            key[0],
            len(pending.chunks),
            pending.count,
            why,
        )
        self._drop(key)

    def _drop(self, key: tuple[str, bytes]) -> None:
        pending = self._pending.pop(key)
        self._bytes -= pending.received


def _check_consistent(pending: _Pending, part: Chunk, base_topic: str) -> None:
    if (pending.count, pending.total, pending.message_sha256) != (
        part.count,
        part.total,
        part.message_sha256,
    ):
        raise ProtocolError(
            f"chunk {part.index} on {base_topic!r} disagrees with earlier chunks of its message "
            f"(count {part.count} vs {pending.count}, total {part.total} vs {pending.total})"
        )


def _verified(message: bytes, expected_sha256: bytes, base_topic: str) -> bytes:
    if hashlib.sha256(message).digest() != expected_sha256:
        raise ProtocolError(f"message on {base_topic!r} failed its whole-message sha256 check")
    return message
