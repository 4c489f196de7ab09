"""Simulated network links: a throttling TCP proxy per board in front of the broker.

Every simulated board connects to its own port on 127.0.0.1; :class:`LinkHub` forwards the
bytes to the broker through a token bucket per direction (the link's bandwidth) and a fixed
one-way delay (its latency), so a 2 MB model on a 1 Mbit/s link takes the 16 s it takes and
the client code stays untouched. The hub also takes a board off the network on demand
(:meth:`LinkHub.cut`: every connection closed at once, new ones refused until
:meth:`LinkHub.restore`), as a Wi-Fi drop would.

All links share one asyncio event loop in one thread, so a fleet of dozens of boards costs
one thread, not four per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)

READ_SIZE = 16 * 1024  # largest piece forwarded at once on an unthrottled link
BURST_S = 0.02  # token bucket depth, in seconds of the link's rate (at least MIN_BURST)
MIN_BURST = 1500  # one Ethernet frame


@dataclass(frozen=True)
class LinkSpec:
    """One board's network link; 0 kbit/s means unthrottled."""

    down_kbit: float = 0.0  # broker -> board, kilobits (1000 bits) per second
    up_kbit: float = 0.0  # board -> broker
    latency_ms: float = 0.0  # one way, added to every byte in both directions

    def __post_init__(self) -> None:
        for name in ("down_kbit", "up_kbit", "latency_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, not {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be >= 0 (0: unlimited), not {value!r}")

    def transfer_s(self, down_bytes: int, up_bytes: int) -> float:
        """Time to move ``down_bytes`` to the board and ``up_bytes`` back (+ latency)."""

        def one(size: int, kbit: float) -> float:
            return 0.0 if kbit == 0 else size * 8 / (kbit * 1000)

        return one(down_bytes, self.down_kbit) + one(up_bytes, self.up_kbit) + self.latency_ms / 500


class TokenBucket:
    """``rate`` bytes per second with a small burst; ``rate`` 0 means unlimited."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(MIN_BURST, rate * BURST_S)
        self.tokens = self.burst
        self.stamp = time.monotonic()

    @property
    def chunk(self) -> int:
        return READ_SIZE if self.rate == 0 else int(self.burst)

    async def take(self, n: int) -> None:
        if self.rate == 0:
            return
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:  # wait until the debt is paid: the link is busy that long
            await asyncio.sleep(-self.tokens / self.rate)


class _Link:
    """One board's listener and its live connections (all on the hub's loop)."""

    def __init__(self, name: str, spec: LinkSpec, upstream: tuple[str, int]) -> None:
        self.name, self.spec, self.upstream = name, spec, upstream
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0

    async def listen(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for w in list(self.writers):
            w.transport.abort()  # no FIN, no flush: the network is gone
        self.writers.clear()

    async def _serve(self, board_r: asyncio.StreamReader, board_w: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            log.warning("link %s: broker unreachable: %s", self.name, exc)
            board_w.transport.abort()
            return
        self.connections += 1
        self.writers.update((board_w, broker_w))
        up = _pipe(board_r, broker_w, self.spec.up_kbit, self.spec.latency_ms, self, "up")
        down = _pipe(broker_r, board_w, self.spec.down_kbit, self.spec.latency_ms, self, "down")
        tasks = [asyncio.ensure_future(up), asyncio.ensure_future(down)]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        await asyncio.sleep(self.spec.latency_ms / 1000)  # the other side's last bytes
        for t in tasks:
            t.cancel()
        for w in (board_w, broker_w):
            self.writers.discard(w)
            w.close()


async def _pipe(
    src: asyncio.StreamReader,
    dst: asyncio.StreamWriter,
    kbit: float,
    latency_ms: float,
    link: _Link,
    direction: str,
) -> None:
    """Forward src to dst at ``kbit`` with ``latency_ms`` of delay, until EOF or an error.

    The reader is paced by the token bucket, so at most a bandwidth-delay product is in
    flight and a slow link pushes back on the sender as a real one does."""
    bucket = TokenBucket(kbit * 1000 / 8)
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    delay = latency_ms / 1000

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                return
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            dst.write(data)
            await dst.drain()

    writer = asyncio.ensure_future(deliver())
    try:
        while data := await src.read(bucket.chunk):
            await bucket.take(len(data))
            if direction == "up":
                link.bytes_up += len(data)
            else:
                link.bytes_down += len(data)
            queue.put_nowait((time.monotonic() + delay, data))
            if writer.done():
                break
        queue.put_nowait((0.0, b""))
        await writer
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.cancel()


class LinkHub:
    """Throttled links to one broker, one per board: ``port(name)`` is where it connects."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._links: dict[str, _Link] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="links")

    def start(self, links: Iterable[tuple[str, LinkSpec]]) -> LinkHub:
        self._thread.start()
        for name, spec in links:
            link = _Link(name, spec, self.upstream)
            self._run(link.listen())
            self._links[name] = link
        return self

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def port(self, name: str) -> int:
        return self._links[name].port

    def url(self, name: str) -> str:
        return f"mqtt://127.0.0.1:{self.port(name)}"

    def cut(self, name: str) -> None:
        """Take the board off the network: close its connections, refuse new ones."""
        self._run(self._links[name].cut())

    def restore(self, name: str) -> None:
        """Listen again on the same port (the board's client reconnects by itself)."""
        link = self._links[name]
        if link.server is None:
            self._run(link.listen())

    def is_up(self, name: str) -> bool:
        return self._links[name].server is not None

    def traffic(self, name: str) -> dict[str, int]:
        link = self._links[name]
        return {"bytes_up": link.bytes_up, "bytes_down": link.bytes_down}

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        for link in self._links.values():
            await link.cut()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> LinkHub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
