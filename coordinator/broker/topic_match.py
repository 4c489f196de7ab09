"""MQTT topic names, topic filters and wildcard matching (MQTT 3.1.1 section 4.7).

``+`` matches exactly one level, ``#`` (last level only) matches the parent level and
everything below it. Filters that start with a wildcard do not match topics that start
with ``$`` (``$SYS/...``), as the spec requires.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def is_valid_topic_name(topic: str) -> bool:
    """A topic a client may publish to: non-empty, no wildcards, no NUL character."""
    return bool(topic) and "+" not in topic and "#" not in topic and "\0" not in topic


def is_valid_topic_filter(topic_filter: str) -> bool:
    """A filter a client may subscribe to: wildcards only as whole levels, ``#`` last."""
    if not topic_filter or "\0" in topic_filter:
        return False
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if level == "#":
            if index != len(levels) - 1:
                return False
        elif level != "+" and ("+" in level or "#" in level):
            return False
    return True


def topic_matches(topic_filter: str, topic: str) -> bool:
    """True when ``topic`` (a topic name) matches ``topic_filter``.

    >>> topic_matches("sport/+/player1", "sport/tennis/player1")
    True
    >>> topic_matches("#", "$SYS/uptime")
    False
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True  # "a/#" also matches "a" itself (the parent level)
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)


class _Node(Generic[K]):
    __slots__ = ("children", "subscribers")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K]] = {}
        self.subscribers: dict[K, int] = {}  # subscriber key -> granted QoS


class SubscriptionTree(Generic[K]):
    """Subscriptions indexed by topic level, so a publish visits only matching branches.

    Keys identify subscribers (the broker uses client ids); each key holds at most one
    QoS per filter, and :meth:`match` merges overlapping filters to the maximum QoS.
    """

    def __init__(self) -> None:
        self._root: _Node[K] = _Node()

    def add(self, topic_filter: str, key: K, qos: int) -> None:
        """Subscribe ``key`` to ``topic_filter`` (replaces the QoS of an existing one)."""
        node = self._root
        for level in topic_filter.split("/"):
            node = node.children.setdefault(level, _Node())
        node.subscribers[key] = qos

    def remove(self, topic_filter: str, key: K) -> bool:
        """Unsubscribe; returns False when there was no such subscription."""
        path: list[tuple[_Node[K], str]] = []
        node = self._root
        for level in topic_filter.split("/"):
            child = node.children.get(level)
            if child is None:
                return False
            path.append((node, level))
            node = child
        if node.subscribers.pop(key, None) is None:
            return False
        # Prune branches that no longer hold anything.
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.subscribers or child.children:
                break
            del parent.children[level]
        return True

    def match(self, topic: str) -> dict[K, int]:
        """Every subscriber whose filters match ``topic``, with the highest granted QoS."""
        levels = topic.split("/")
        result: dict[K, int] = {}
        dollar = topic.startswith("$")

        def collect(node: _Node[K]) -> None:
            for key, qos in node.subscribers.items():
                if result.get(key, -1) < qos:
                    result[key] = qos

        stack: list[tuple[_Node[K], int]] = [(self._root, 0)]
        while stack:
            node, index = stack.pop()
            wildcards_allowed = not (dollar and index == 0)
            if wildcards_allowed and (hash_node := node.children.get("#")) is not None:
                collect(hash_node)
            if index == len(levels):
                collect(node)
                continue
            if (exact := node.children.get(levels[index])) is not None:
                stack.append((exact, index + 1))
            if wildcards_allowed and (plus := node.children.get("+")) is not None:
                stack.append((plus, index + 1))
        return result

    def __len__(self) -> int:
        count = 0
        stack = [self._root]
        while stack:
            node = stack.pop()
            count += len(node.subscribers)
            stack.extend(node.children.values())
        return count
