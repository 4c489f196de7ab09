"""Helpers of the secure-aggregation job tests (no tests here): real `fedge run` boards, real
edge clients in threads whose stage messages a test may drop or forge, and a recorder that
reassembles what crossed the broker."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from coordinator.config import JobConfig
from edge_client.client import EdgeClient, mqtt_transport
from edge_client.config import ClientConfig
from edge_client.data import Dataset, load_dataset, partition
from edge_client.protocol import Envelope, Reassembler, RoundAnnouncement, Topics, decode
from edge_client.transport import BrokerConfig
from tests.coordinator.board_processes import start_boards, stop
from tests.fixtures.brokers import ReceivedMessage

# (round, stage of the message about to be published, its envelope) -> what to publish
# instead, or None to publish nothing (the board drops out at that point of the round)
Hook = Callable[[int, str, Envelope], Envelope | None]


@contextmanager
def real_boards(
    job: JobConfig,
    broker: BrokerConfig,
    tmp: Path,
    n: int,
    *,
    of: int | None = None,
    slowdown: dict[int, float] | None = None,
) -> Iterator[list[subprocess.Popen]]:
    """``n`` `fedge run` processes sim-00 ... with partitions 0..n-1 of ``of`` (default n);
    board ``i`` slowed ``slowdown[i]`` times (the fleet simulator's pacing)."""
    procs = start_boards(job, broker, tmp, n, slowdown or {}, parts=of or n)
    try:
        yield procs
    finally:
        stop(procs)


def board_log(tmp: Path, i: int) -> str:
    return (tmp / "devices" / f"sim-{i:02d}.log").read_text()


def local_data(index: int, of: int, limit: int = 2000) -> Dataset:
    train = load_dataset("fashion-mnist", "train")
    return train.subset(partition(train.y, of, "iid", 0)[index][:limit])


class HookedBoard(threading.Thread):
    """A real edge client (``EdgeClient``, MQTT, training) in a thread; every secure-round
    message it publishes passes through ``hook`` first."""

    def __init__(
        self, broker: BrokerConfig, job: str, device: str, data: Dataset, state: Path, hook: Hook
    ) -> None:
        super().__init__(daemon=True, name=device)
        config = ClientConfig(broker, job, device, data_path="unused", state_dir=state)
        self.client = EdgeClient(config, mqtt_transport(config), data=data)
        self.hook = hook
        self.errors: list[BaseException] = []
        publish = self.client.secure._publish
        current = self.client.secure

        def hooked(env: Envelope) -> int:
            assert current.current is not None
            out = hook(current.current.round, str(env.meta["stage"]), env)
            return 0 if out is None else publish(out)

        self.client.secure._publish = hooked
        # (round, trained weights, the global it trained from, samples) of every secure round
        # it began: what a test compares the aggregate with (never sent by the board)
        self.began: list[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray], int]] = []
        begin = current.begin

        def recorded(
            ann: RoundAnnouncement,
            trained: Mapping[str, np.ndarray],
            base: Mapping[str, np.ndarray],
            names: Sequence[str],
            samples: int,
        ) -> None:
            self.began.append((ann.round, dict(trained), dict(base), samples))
            begin(ann, trained, base, names, samples)

        current.begin = recorded  # type: ignore[method-assign]

    def run(self) -> None:
        try:
            self.client.run()
        except BaseException as exc:  # surfaced by the test
            self.errors.append(exc)

    def stop(self) -> None:
        self.client.stop()
        self.join(20)


def drop_at(stage: str, round_: int = 1) -> Hook:
    """Publish nothing from ``stage`` on in round ``round_`` (the earlier stages went out)."""
    order = ("keys", "shares", "masked", "unmask-reply")

    def hook(r: int, s: str, env: Envelope) -> Envelope | None:
        return None if r == round_ and order.index(s) >= order.index(stage) else env

    return hook


def hold_at(stage: str, release: threading.Event, round_: int = 1, timeout: float = 60) -> Hook:
    """Publish ``stage``'s message of round ``round_`` only once ``release`` is set (or after
    ``timeout`` s): the coordinator waits for it, so the stage stays open meanwhile."""

    def hook(r: int, s: str, env: Envelope) -> Envelope | None:
        if r == round_ and s == stage:
            release.wait(timeout)
        return env

    return hook


def of_job(messages: list[ReceivedMessage], topics: Topics) -> list[ReceivedMessage]:
    return [m for m in messages if m.topic.startswith(topics.root + "/")]


def envelopes(messages: list[ReceivedMessage], topics: Topics) -> list[tuple[str, Envelope]]:
    """(topic kind, envelope) of every binary message the recorder saw, reassembled."""
    out = []
    reassembler = Reassembler()
    for m in of_job(messages, topics):
        parsed = topics.parse(m.topic)
        if not parsed.is_binary or not m.payload:
            continue
        whole = reassembler.feed(parsed.base, m.payload, index=parsed.chunk)
        if whole is not None:
            out.append((parsed.kind, decode(whole)))
    return out
