"""Thousands of virtual devices in one asyncio loop, each with its own MQTT connection.

What the coordinator sees of each device is what it sees of a board: its own client id and
TCP connection, a Last Will and a retained ``online`` status, a subscription to ``round``,
``training`` and ``idle`` statuses around every round it is selected for, an update that
passes every check, and ``offline`` on a clean stop. Nothing is trained (see
:mod:`.updates`). In a secure round (``encoding = "secagg"``) each device runs the board's
own secure-round code through the 4 stages instead of sending its update (:mod:`.secure`).
A controller connection per process receives the global weights, which the devices themselves
do not download (N x model bytes of broker fan-out per round that this load generator leaves
out), and the job's ``control`` (the fleet stops with the job).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from coordinator.broker.packets import Will
from coordinator.loadgen.mqtt import Connection, MqttError
from coordinator.loadgen.secure import SecureDevices
from coordinator.loadgen.updates import Plan, UpdateFactory
from edge_client.errors import EdgeFLError, ProtocolError
from edge_client.protocol import (
    DEFAULT_PREFIX,
    SECAGG,
    DeviceStatus,
    JobControl,
    Reassembler,
    RoundAnnouncement,
    Topics,
    decode,
)
from edge_client.secagg import available as secagg_available

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    job: str = "demo"
    devices: int = 100
    first: int = 0  # index of this process's first device (several processes share a fleet)
    prefix: str = DEFAULT_PREFIX
    plan: Plan = field(default_factory=Plan)
    delay_s: float = 0.0  # each device "trains" uniform(0, delay_s) seconds before sending
    status: bool = True  # publish training/idle around each round, as boards do
    keepalive: int = 60  # seconds; PINGREQs go out every keepalive / 2
    connect_concurrency: int = 100  # connections being opened at once (broker accept backlog)
    send_concurrency: int = 16  # updates being built or written at once (bounds memory)
    secure: bool = True  # take part in secure rounds (needs the cryptography package)


@dataclass
class LoadStats:
    connected: int = 0
    updates: int = 0  # update envelopes sent
    bytes_up: int = 0  # chunk bytes sent
    rounds: set[int] = field(default_factory=set)


class Fleet:
    """The virtual devices of one process; ``run`` returns when the job stops or ``stop`` is set."""

    def __init__(self, cfg: LoadConfig, stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.topics = Topics(cfg.job, cfg.prefix)
        self.stop = stop or threading.Event()
        self.online = threading.Event()  # every device is connected and announced online
        self.stats = LoadStats()
        self.started = time.time()
        self._conns: dict[int, Connection] = {}
        self._answered: dict[int, tuple] = {}  # device -> key of the last announcement answered
        self._announcement: tuple[bytes, RoundAnnouncement, frozenset[str]] | None = None
        self._globals: dict[str, dict[str, np.ndarray]] = {}  # weights_sha256 -> weights
        self._factories: dict[tuple, UpdateFactory] = {}
        self._global_arrived: asyncio.Event | None = None
        self._sending: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._reassembler = Reassembler()  # the controller's global weights
        self._finished = False
        self.secure = SecureDevices(self.topics, cfg.plan, cfg.job)

    # -- lifecycle ---------------------------------------------------------------------
    async def run(self) -> LoadStats:
        cfg = self.cfg
        self._global_arrived = asyncio.Event()
        self._sending = asyncio.Semaphore(cfg.send_concurrency)
        controller = Connection(f"loadgen-{cfg.job}-{cfg.first}", self._on_controller)
        try:
            await controller.open(cfg.host, cfg.port, keepalive=cfg.keepalive)
        except (OSError, asyncio.TimeoutError) as exc:
            raise MqttError(f"cannot reach the broker at {cfg.host}:{cfg.port}: {exc}") from exc
        await controller.subscribe(
            [(f"{self.topics.global_weights}/#", 1), (self.topics.control, 1)]
        )
        opening = asyncio.Semaphore(cfg.connect_concurrency)
        indices = range(cfg.first, cfg.first + cfg.devices)
        await asyncio.gather(*(self._connect(i, opening) for i in indices))
        self.stats.connected = len(self._conns)
        log.info("%d virtual devices online", len(self._conns))
        self.online.set()
        last_ping = time.monotonic()
        while not self.stop.is_set() and not self._finished:
            await asyncio.sleep(0.1)
            if time.monotonic() - last_ping > cfg.keepalive / 2:
                last_ping = time.monotonic()
                for conn in [controller, *self._conns.values()]:
                    if not conn.closed.is_set():
                        conn.ping()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.stats.bytes_up += self.secure.bytes_up
        await self._disconnect_all()
        await controller.close()
        return self.stats

    async def _connect(self, index: int, opening: asyncio.Semaphore) -> None:
        device = self.cfg.plan.device_id(index)
        topic = self.topics.status(device)
        will = Will(topic, DeviceStatus.last_will(device, time.time()).to_json(), 1, True)
        conn = Connection(
            f"edgefl-{self.cfg.job}-{device}", lambda t, p: self._on_topic(index, t, p)
        )
        async with opening:
            for attempt in range(5):
                try:
                    await conn.open(
                        self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive, will=will
                    )
                    break
                except (OSError, MqttError, asyncio.TimeoutError) as exc:
                    if attempt == 4:
                        raise MqttError(f"{device} cannot connect: {exc}") from exc
                    await asyncio.sleep(0.5 * (attempt + 1))
            filters = [(self.topics.round, 1)]
            if self._speaks_secagg:
                filters += [
                    (f"{self.topics.secagg_all}/#", 1),
                    (f"{self.topics.secagg_to(device)}/#", 1),
                ]
            await conn.subscribe(filters)
            await conn.publish(topic, self._status(index, "online"), retain=True)
        self._conns[index] = conn

    async def _disconnect_all(self) -> None:
        async def leave(index: int, conn: Connection) -> None:
            try:
                topic = self.topics.status(self.cfg.plan.device_id(index))
                await conn.publish(topic, self._status(index, "offline"), retain=True)
                await conn.close()
            except MqttError:
                pass

        await asyncio.gather(*(leave(i, c) for i, c in self._conns.items()))

    def _status(self, index: int, state: str, round_: int | None = None) -> bytes:
        device = self.cfg.plan.device_id(index)
        return DeviceStatus(
            device, state, time.time(), round=round_, interpreter="loadgen",
            samples=self.cfg.plan.samples_of(index),
            modes=("sync", SECAGG) if self._speaks_secagg else None,
        ).to_json()  # fmt: skip

    @property
    def _speaks_secagg(self) -> bool:
        return self.cfg.secure and secagg_available()

    # -- messages (called by the connections' reader tasks) ----------------------------
    def _on_controller(self, topic: str, payload: bytes) -> None:
        if not payload:
            return
        try:
            parsed = self.topics.parse(topic)
            if parsed.kind == "control":
                control = JobControl.from_json(payload)
                if control.state == "stopped" and control.time > self.started:
                    log.info("the job stopped: disconnecting the virtual devices")
                    self._finished = True
                return
            whole = self._reassembler.feed(parsed.base, payload, index=parsed.chunk)
            if whole is None:
                return
            envelope = decode(whole, expect_job=self.cfg.job, expect_kind="global")
            self._globals = {envelope.weights_sha256(): envelope.weights()}  # the latest only
            assert self._global_arrived is not None
            self._global_arrived.set()
        except ProtocolError as exc:
            log.warning("controller dropped a message on %s: %s", topic, exc)

    def _on_topic(self, index: int, topic: str, payload: bytes) -> None:
        if topic == self.topics.round:
            self._on_device(index, payload)
        else:
            self.secure.on_stage(index, topic, payload)

    def _on_device(self, index: int, payload: bytes) -> None:
        """A round announcement reached device ``index`` (parsed once per process)."""
        if not payload:
            return
        if self._announcement is None or self._announcement[0] != payload:
            try:
                announcement = RoundAnnouncement.from_json(payload)
            except ProtocolError as exc:
                log.warning("dropped an announcement: %s", exc)
                return
            self._announcement = (payload, announcement, frozenset(announcement.selected))
        _, announcement, selected = self._announcement
        key = (announcement.round, announcement.global_sha256, announcement.deadline)
        device = self.cfg.plan.device_id(index)
        self.secure.on_announcement(index, announcement)
        if announcement.state != "open" or device not in selected:
            return
        if self._answered.get(index) == key or time.time() > announcement.deadline:
            return
        self._answered[index] = key
        task = asyncio.create_task(self._answer(index, announcement))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, index: int, announcement: RoundAnnouncement) -> None:
        if self.cfg.delay_s > 0:
            await asyncio.sleep(random.uniform(0, self.cfg.delay_s))
        assert self._sending is not None
        conn = self._conns.get(index)
        if conn is None:
            return
        device = self.cfg.plan.device_id(index)
        status = self.topics.status(device)
        try:
            async with self._sending:
                secure = announcement.secure is not None
                factory = None if secure else await self._factory(announcement)
                if not (await self._global(announcement) if secure else factory is not None):
                    return
                if self.cfg.status:
                    await conn.publish(
                        status, self._status(index, "training", announcement.round), retain=True
                    )
                if factory is None:  # a secure round: stage 1, then the stage messages
                    self._begin_secure(index, conn, announcement)
                else:
                    await self._send_update(index, conn, factory, announcement.round)
                if self.cfg.status:
                    await conn.publish(
                        status, self._status(index, "idle", announcement.round), retain=True
                    )
        except MqttError as exc:
            log.warning("%s could not send its update: %s", device, exc)

    async def _send_update(
        self, index: int, conn: Connection, factory: UpdateFactory, round_: int
    ) -> None:
        base = self.topics.update(self.cfg.plan.device_id(index))
        for i, chunk in enumerate(factory.chunks(index)):
            await conn.publish(f"{base}/{i}", chunk)
            self.stats.bytes_up += len(chunk)
        self.stats.updates += 1
        self.stats.rounds.add(round_)

    def _begin_secure(self, index: int, conn: Connection, ann: RoundAnnouncement) -> None:
        """Stage 1 of a secure round; the stage messages then drive it (:mod:`.secure`)."""
        device = self.cfg.plan.device_id(index)
        weights = self._globals.get(ann.global_sha256)
        if weights is None:
            log.warning("%s: round %d's global weights were replaced", device, ann.round)
            return

        def publish(topic: str, chunk: bytes) -> None:
            task = asyncio.create_task(conn.publish(topic, chunk))  # writes before it yields
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        try:
            self.secure.begin(index, ann, weights, publish)
        except EdgeFLError as exc:
            log.warning("%s cannot take part in secure round %d: %s", device, ann.round, exc)
            return
        self.stats.updates += 1
        self.stats.rounds.add(ann.round)

    async def _global(self, announcement: RoundAnnouncement, done: bool = False) -> bool:
        """Wait until the controller holds the announced global weights (or ``done``);
        False when they never arrived before the deadline."""
        assert self._global_arrived is not None
        while announcement.global_sha256 not in self._globals and not done:
            if time.time() > announcement.deadline or self.stop.is_set():
                log.warning(
                    "round %d: the announced global weights never arrived", announcement.round
                )
                return False
            self._global_arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._global_arrived.wait(), 0.5)
        return True

    async def _factory(self, announcement: RoundAnnouncement) -> UpdateFactory | None:
        """The round's update factory, once the controller holds the announced global."""
        key = (announcement.round, announcement.global_sha256, announcement.encoding)
        if not await self._global(announcement, key in self._factories):
            return None
        if key not in self._factories:
            self._factories = {
                key: UpdateFactory(
                    self._globals[announcement.global_sha256],
                    self.cfg.plan,
                    job=self.cfg.job,
                    round_=announcement.round,
                    base_sha256=announcement.global_sha256,
                    encoding=announcement.encoding,
                )
            }
        return self._factories[key]


def run_fleet(
    cfg: LoadConfig, stop: threading.Event | None = None, fleet: Fleet | None = None
) -> LoadStats:
    """Run one process's virtual devices until the job stops (or ``stop`` is set)."""
    fleet = fleet or Fleet(cfg, stop)
    return asyncio.run(fleet.run())
