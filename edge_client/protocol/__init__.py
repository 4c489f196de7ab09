"""The wire protocol shared by devices and the coordinator: topics, envelopes, chunks, JSON.

The one source of truth for what goes over MQTT (specified in docs/protocol.md). Imports
only the standard library and numpy (numpy 1.x and 2.x), so it runs on the boards.

Publishing a binary message::

    payload = encode_weights(weights, kind="update", job="demo", round=3, sender="pi-01",
                             samples=12000, meta={"base_sha256": announcement.global_sha256})
    for topic, chunk in chunked(Topics("demo").update("pi-01"), payload):
        client.publish(topic, chunk, qos=1)

Receiving one (on a worker thread, never in the paho callback)::

    parsed = topics.parse(msg.topic)
    whole = reassembler.feed(parsed.base, msg.payload, index=parsed.chunk)
    if whole is not None:
        envelope = decode(whole, expect_job="demo", expect_sender=parsed.device)
"""

from __future__ import annotations

from edge_client.protocol.chunking import (
    CHUNK_HEADER_SIZE,
    DEFAULT_MAX_CHUNK,
    Chunk,
    Reassembler,
    chunk_topics,
    chunked,
    message_id,
    parse_chunk,
    split,
)
from edge_client.protocol.dedupe import UpdateDeduper, UpdateKey
from edge_client.protocol.envelope import (
    DEFAULT_MAX_HEADER,
    Envelope,
    decode,
    encode_failure,
    encode_model,
    encode_weights,
    envelope_bytes,
)
from edge_client.protocol.messages import (
    BUFFERED,
    ROUND_MODES,
    DeviceStatus,
    JobControl,
    RoundAnnouncement,
    SiteEndorsement,
    StartOver,
)
from edge_client.protocol.metrics import DeviceMetrics, FoldedUpdate, Rejection, RoundMetrics
from edge_client.protocol.secagg import (
    SECAGG,
    KeyList,
    Keys,
    Masked,
    Routed,
    SecAggParams,
    Shares,
    StageMessage,
    UnmaskReply,
    UnmaskRequest,
    encode_key_list,
    encode_keys,
    encode_masked,
    encode_routed,
    encode_shares,
    encode_unmask_reply,
    encode_unmask_request,
    read_stage,
)
from edge_client.protocol.tensors import TensorSpec, weights_sha256
from edge_client.protocol.topics import DEFAULT_PREFIX, QOS, ParsedTopic, Topics
from edge_client.protocol.update_meta import UpdateMeta
from edge_client.protocol.validation import ID_PATTERN, PROTOCOL_VERSION, check_id, dumps, loads

__all__ = [
    "BUFFERED",
    "CHUNK_HEADER_SIZE",
    "DEFAULT_MAX_CHUNK",
    "DEFAULT_MAX_HEADER",
    "DEFAULT_PREFIX",
    "ID_PATTERN",
    "PROTOCOL_VERSION",
    "QOS",
    "SECAGG",
    "ROUND_MODES",
    "Chunk",
    "DeviceMetrics",
    "DeviceStatus",
    "Envelope",
    "FoldedUpdate",
    "JobControl",
    "KeyList",
    "Keys",
    "Masked",
    "ParsedTopic",
    "Reassembler",
    "Rejection",
    "RoundAnnouncement",
    "SiteEndorsement",
    "StartOver",
    "RoundMetrics",
    "Routed",
    "SecAggParams",
    "Shares",
    "StageMessage",
    "TensorSpec",
    "Topics",
    "UnmaskReply",
    "UnmaskRequest",
    "UpdateDeduper",
    "UpdateKey",
    "UpdateMeta",
    "check_id",
    "chunk_topics",
    "chunked",
    "decode",
    "dumps",
    "encode_failure",
    "encode_key_list",
    "encode_keys",
    "encode_masked",
    "encode_model",
    "encode_routed",
    "encode_shares",
    "encode_unmask_reply",
    "encode_unmask_request",
    "encode_weights",
    "envelope_bytes",
    "loads",
    "message_id",
    "parse_chunk",
    "read_stage",
    "split",
    "weights_sha256",
]
