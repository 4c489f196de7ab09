"""Topic names, parsing and subscriptions of edge_client.protocol.topics."""

from __future__ import annotations

import pytest

from edge_client.errors import ProtocolError
from edge_client.protocol import DEFAULT_PREFIX, ParsedTopic, Topics, chunk_topics


def test_topic_names_follow_the_documented_tree() -> None:
    # Prepare
    topics = Topics("demo")

    # Execute
    names = {
        "model": topics.model,
        "round": topics.round,
        "global": topics.global_weights,
        "update": topics.update("pi-01"),
        "status": topics.status("pi-01"),
        "metrics": topics.metrics,
        "control": topics.control,
        "all": topics.all,
    }

    # Assert
    assert DEFAULT_PREFIX == "fl/v1"
    assert names == {
        "model": "fl/v1/demo/model",
        "round": "fl/v1/demo/round",
        "global": "fl/v1/demo/global",
        "update": "fl/v1/demo/update/pi-01",
        "status": "fl/v1/demo/status/pi-01",
        "metrics": "fl/v1/demo/metrics",
        "control": "fl/v1/demo/control",
        "all": "fl/v1/demo/#",
    }


def test_custom_prefix_is_used_everywhere() -> None:
    topics = Topics("job_1", prefix="lab/fl/v1")

    assert topics.update("dev.7") == "lab/fl/v1/job_1/update/dev.7"
    assert topics.parse("lab/fl/v1/job_1/update/dev.7/0") == ParsedTopic(
        "update", "dev.7", 0, "lab/fl/v1/job_1/update/dev.7"
    )


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("fl/v1/demo/model/0", ParsedTopic("model", None, 0, "fl/v1/demo/model")),
        ("fl/v1/demo/global/12", ParsedTopic("global", None, 12, "fl/v1/demo/global")),
        (
            "fl/v1/demo/update/pi-01/3",
            ParsedTopic("update", "pi-01", 3, "fl/v1/demo/update/pi-01"),
        ),
        (
            "fl/v1/demo/status/pi-01",
            ParsedTopic("status", "pi-01", None, "fl/v1/demo/status/pi-01"),
        ),
        ("fl/v1/demo/round", ParsedTopic("round", None, None, "fl/v1/demo/round")),
        ("fl/v1/demo/metrics", ParsedTopic("metrics", None, None, "fl/v1/demo/metrics")),
        ("fl/v1/demo/control", ParsedTopic("control", None, None, "fl/v1/demo/control")),
    ],
)
def test_parse_classifies_every_kind(topic: str, expected: ParsedTopic) -> None:
    assert Topics("demo").parse(topic) == expected


def test_parsed_chunk_topics_round_trip_with_chunk_topics() -> None:
    # Prepare
    topics = Topics("demo")
    base = topics.update("pi-01")

    # Execute
    parsed = [topics.parse(t) for t in chunk_topics(base, 3)]

    # Assert
    assert [p.chunk for p in parsed] == [0, 1, 2]
    assert {p.base for p in parsed} == {base}
    assert all(p.is_binary for p in parsed)


@pytest.mark.parametrize(
    ("topic", "message"),
    [
        ("fl/v1/other/round", "another job"),
        ("fl/v2/demo/round", "not under prefix"),
        ("$SYS/broker/uptime", "not under prefix"),
        ("fl/v1/demo", "unknown kind"),
        ("fl/v1/demo/weights/0", "unknown kind"),
        ("fl/v1/demo/model", "malformed"),
        ("fl/v1/demo/model/0/1", "malformed"),
        ("fl/v1/demo/update/pi-01", "malformed"),
        ("fl/v1/demo/round/0", "malformed"),
        ("fl/v1/demo/status", "malformed"),
        ("fl/v1/demo/model/01", "chunk index"),
        ("fl/v1/demo/model/-1", "chunk index"),
        ("fl/v1/demo/model/x", "chunk index"),
        ("fl/v1/demo/model/4294967296", "out of range"),
        ("fl/v1/demo/model/99999999999999", "chunk index"),
        ("fl/v1/demo/update/a b/0", "device id"),
        ("fl/v1/demo/status/+", "device id"),
        ("fl/v1/demo/update//0", "device id"),
    ],
)
def test_parse_rejects_foreign_and_malformed_topics(topic: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        Topics("demo").parse(topic)


@pytest.mark.parametrize("job", ["", "a/b", "a+b", "a#", "x" * 65, "sp ace", "é"])
def test_invalid_job_ids_are_rejected(job: str) -> None:
    with pytest.raises(ProtocolError, match="job id"):
        Topics(job)


@pytest.mark.parametrize("prefix", ["", "/fl", "fl/", "fl//v1", "fl/+", "fl/#", "$SYS"])
def test_invalid_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(ProtocolError, match="prefix"):
        Topics("demo", prefix=prefix)


def test_invalid_device_ids_are_rejected_when_building_topics() -> None:
    with pytest.raises(ProtocolError, match="device id"):
        Topics("demo").update("pi/01")


def test_subscriptions_cover_what_each_side_reads() -> None:
    # Prepare
    topics = Topics("demo")

    # Execute
    device = topics.device_subscriptions()
    board = topics.device_subscriptions("pi-01")
    coordinator = topics.coordinator_subscriptions()

    # Assert
    assert device == [
        ("fl/v1/demo/model/#", 1),
        ("fl/v1/demo/global/#", 1),
        ("fl/v1/demo/round", 1),
        ("fl/v1/demo/control", 1),
    ]
    assert board == [  # a board also reads the secure-aggregation stages meant for it
        *device,
        ("fl/v1/demo/secagg-all/#", 1),
        ("fl/v1/demo/secagg-to/pi-01/#", 1),
    ]
    assert coordinator == [
        ("fl/v1/demo/update/+/#", 1),
        ("fl/v1/demo/status/+", 1),
        ("fl/v1/demo/control", 1),
        ("fl/v1/demo/secagg/+/#", 1),
    ]
