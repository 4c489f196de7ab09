"""Unit tests of topic validation and wildcard matching (MQTT 3.1.1 section 4.7)."""

from __future__ import annotations

import pytest

from coordinator.broker.topic_match import (
    SubscriptionTree,
    is_valid_topic_filter,
    is_valid_topic_name,
    topic_matches,
)

CASES = [
    # filter, topic, matches
    ("a/b/c", "a/b/c", True),
    ("a/b/c", "a/b", False),
    ("a/b", "a/b/c", False),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a/b/d", False),
    ("a/+", "a/", True),  # an empty level is a level
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("+", "a", True),
    ("sport/tennis/player1/#", "sport/tennis/player1", True),  # '#' includes the parent
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking/wimbledon", True),
    ("sport/#", "sport", True),
    ("sport/tennis/#", "sport/tennis", True),
    ("sport/tennis/#", "sport", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),
    ("#", "a/b/c", True),
    ("#", "/", True),
    ("+/#", "a", True),
    ("+/+/#", "a", False),
    ("#", "$SYS/uptime", False),  # wildcards at level 1 never match '$' topics
    ("+/uptime", "$SYS/uptime", False),
    ("$SYS/#", "$SYS/uptime", True),
    ("$SYS/+", "$SYS/uptime", True),
    ("a/#", "a/$b", True),  # only the first level is special
    ("A/b", "a/b", False),  # case-sensitive
    ("a/b ", "a/b", False),  # spaces are significant
]


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), CASES)
def test_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), CASES)
def test_tree_agrees_with_topic_matches(topic_filter: str, topic: str, expected: bool) -> None:
    tree: SubscriptionTree[str] = SubscriptionTree()
    tree.add(topic_filter, "client", 1)

    matched = tree.match(topic)

    assert matched == ({"client": 1} if expected else {})


@pytest.mark.parametrize(
    ("topic_filter", "valid"),
    [
        ("a/b", True),
        ("#", True),
        ("+", True),
        ("a/+/b/#", True),
        ("/", True),
        ("", False),
        ("a/#/b", False),
        ("a#", False),
        ("a/b#", False),
        ("a+/b", False),
        ("a/+b", False),
        ("a/\0", False),
    ],
)
def test_is_valid_topic_filter(topic_filter: str, valid: bool) -> None:
    assert is_valid_topic_filter(topic_filter) is valid


@pytest.mark.parametrize(
    ("topic", "valid"),
    [("a/b", True), ("/", True), ("$SYS/x", True), ("", False), ("a/+", False), ("a/#", False)],
)
def test_is_valid_topic_name(topic: str, valid: bool) -> None:
    assert is_valid_topic_name(topic) is valid


def test_tree_overlapping_filters_give_max_qos_once() -> None:
    tree: SubscriptionTree[str] = SubscriptionTree()
    tree.add("a/+", "c1", 0)
    tree.add("a/#", "c1", 2)
    tree.add("a/b", "c1", 1)
    tree.add("a/b", "c2", 0)

    matched = tree.match("a/b")

    assert matched == {"c1": 2, "c2": 0}


def test_tree_add_replaces_qos_and_remove_prunes() -> None:
    tree: SubscriptionTree[str] = SubscriptionTree()
    tree.add("a/b/c", "c1", 0)
    tree.add("a/b/c", "c1", 2)
    assert tree.match("a/b/c") == {"c1": 2}
    assert len(tree) == 1

    assert tree.remove("a/b/c", "c1") is True
    assert tree.remove("a/b/c", "c1") is False
    assert tree.remove("x/y", "c1") is False

    assert tree.match("a/b/c") == {}
    assert len(tree) == 0
    assert tree._root.children == {}  # empty branches are pruned


def test_tree_handles_very_deep_topics() -> None:
    tree: SubscriptionTree[str] = SubscriptionTree()
    tree.add("#", "all", 0)
    tree.add("/".join(["+"] * 5000), "plus", 1)

    matched = tree.match("/".join(["x"] * 5000))

    assert matched == {"all": 0, "plus": 1}
