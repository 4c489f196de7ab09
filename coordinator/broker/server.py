"""The embedded MQTT broker: listens on a TCP (optionally TLS) port.

Run it in a background thread with its own event loop::

    with EmbeddedBroker(port=0) as broker:      # or broker.start() / broker.stop()
        print(broker.url)                       # mqtt://127.0.0.1:54321

or in the foreground of an asyncio program with ``await broker.serve_forever()``.
State (sessions, retained messages) lives in memory and is lost when the broker
stops, like Mosquitto with ``persistence false``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from collections.abc import Mapping
from types import TracebackType

from coordinator.broker.core import BrokerCore
from coordinator.broker.packets import MAX_REMAINING_LENGTH
from coordinator.broker.session import SessionLimits
from edge_client.errors import ConfigError, EdgeFLError

logger = logging.getLogger(__name__)

MiB = 1024 * 1024
MAX_PACKET_SIZE = MAX_REMAINING_LENGTH + 5  # 256 MiB: the largest packet MQTT can express
_READ_LIMIT = 1 * MiB  # StreamReader buffer target: fewer pause/resume cycles on big payloads
_BACKLOG = 1024  # pending TCP connections (capped by the kernel's somaxconn)


class BrokerError(EdgeFLError):
    """The embedded broker cannot start (e.g. the port is taken) or is misused."""


class EmbeddedBroker:
    """A small MQTT 3.1.1 / 3.1 broker in pure Python (asyncio, standard library only).

    ``users`` maps user names to passwords; when given, every client must log in
    (a missing user name gets CONNACK 5, a wrong one or a wrong password CONNACK 4).
    ``max_packet_size`` bounds any packet a client sends; a larger one closes that
    connection. ``tls`` is a server-side :class:`ssl.SSLContext`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        users: Mapping[str, str] | None = None,
        max_packet_size: int = MAX_PACKET_SIZE,
        tls: ssl.SSLContext | None = None,
        max_inflight: int = 100,  # unacknowledged QoS 1/2 deliveries per client
        max_queued_messages: int = 1000,  # per offline/busy client, like Mosquitto's default
        max_queued_bytes: int = 256 * MiB,  # payload bytes queued per client; 0 = no limit
    ) -> None:
        if not 0 <= port <= 65535:
            raise ConfigError(f"broker port must be in 0..65535, got {port}")
        if not 2 <= max_packet_size <= MAX_PACKET_SIZE:
            raise ConfigError(
                f"max_packet_size must be in 2..{MAX_PACKET_SIZE} bytes, got {max_packet_size}"
            )
        if max_inflight < 1 or max_queued_messages < 0 or max_queued_bytes < 0:
            raise ConfigError("max_inflight must be >= 1 and the queue limits >= 0")
        self._host = host
        self._port = port
        self._users = dict(users) if users is not None else None
        self._max_packet_size = max_packet_size
        self._tls = tls
        self._limits = SessionLimits(max_inflight, max_queued_messages, max_queued_bytes)
        self._core: BrokerCore | None = None
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ properties

    @property
    def host(self) -> str:
        return self._host

    @property
    def port(self) -> int:
        """The listening port (the real one once started, even when created with port 0)."""
        return self._port

    @property
    def url(self) -> str:
        scheme = "mqtts" if self._tls is not None else "mqtt"
        return f"{scheme}://{self._host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def client_count(self) -> int:
        """Clients connected right now (an approximate read from other threads)."""
        return self._core.client_count if self._core is not None else 0

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker({self.url}, {state})"

    # ------------------------------------------------------------ asyncio API

    async def serve_forever(self) -> None:
        """Listen on the current event loop until cancelled (for a foreground process)."""
        await self._open()
        try:
            await asyncio.Event().wait()
        finally:
            await self._close()

    async def _open(self) -> None:
        if self._server is not None:
            raise BrokerError(f"{self!r} is already running")
        core = BrokerCore(
            users=self._users, max_packet_size=self._max_packet_size, limits=self._limits
        )
        try:
            server = await asyncio.start_server(
                core.handle_client,
                self._host,
                self._port,
                ssl=self._tls,
                limit=_READ_LIMIT,
                backlog=_BACKLOG,
            )
        except OSError as exc:
            raise BrokerError(
                f"cannot listen on {self._host}:{self._port}: {exc.strerror or exc}"
            ) from exc
        self._core, self._server = core, server
        self._port = server.sockets[0].getsockname()[1]  # a restart reuses this port
        logger.info("embedded MQTT broker listening on %s", self.url)

    async def _close(self) -> None:
        server, core = self._server, self._core
        if server is None or core is None:
            return
        server.close()
        await core.shutdown()
        await server.wait_closed()
        self._server = None
        logger.info("embedded MQTT broker on %s stopped", self.url)

    # ------------------------------------------------------------ thread API

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        """Start listening in a background thread; returns once the port accepts clients."""
        if self._thread is not None:
            raise BrokerError(f"{self!r} is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._open())
            except BaseException as exc:  # handed to the starting thread
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
                loop.run_until_complete(self._close())
            finally:
                loop.close()

        thread = threading.Thread(target=run, name=f"mqtt-broker-{self._port}", daemon=True)
        thread.start()
        if not ready.wait(timeout):
            raise BrokerError(f"embedded broker did not start within {timeout} s")
        if failure:
            thread.join()
            raise failure[0]
        self._loop, self._thread = loop, thread
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and the listening socket; safe to call twice."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if thread.is_alive():
            raise BrokerError(f"embedded broker did not stop within {timeout} s")
        self._thread = self._loop = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
