"""MQTT behind a small interface, so round logic runs on a real broker or in memory.

``MqttTransport`` wraps paho-mqtt (callback API v2): it subscribes in ``on_connect``
(so a reconnect resubscribes), hands every message to a queue (never works inside
paho's network thread), reconnects with exponential backoff, and sets a Last Will.
``MemoryBus``/``MemoryTransport`` deliver the same way inside one process for tests
of round logic.
"""

from __future__ import annotations

import logging
import os
import queue
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from edge_client.errors import ConfigError

log = logging.getLogger(__name__)

# Received payload bytes waiting for the worker. Beyond this, paho's network thread waits
# before queueing more, so a burst (thousands of updates at once) stays in the broker and in
# TCP buffers instead of this process's memory: the receiver stays O(bound + model).
DEFAULT_MAX_QUEUED_BYTES = 64 * 1024 * 1024
MAX_BLOCK_S = 10.0  # a worker that takes nothing for this long is stalled: stop waiting for it


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False


@dataclass(frozen=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how to connect. Secrets never appear in ``repr`` or logs."""

    host: str = "127.0.0.1"
    port: int = 1883
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: str | None = None  # CA bundle for mqtts:// (system CAs when None)
    cert_file: str | None = None  # client certificate (mutual TLS), optional
    key_file: str | None = None
    insecure: bool = False  # skip hostname verification (self-signed test setups only)
    keepalive: int = 30  # seconds; the broker fires the Last Will after 1.5x this

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        password_file: str | None = None,
        **kwargs: object,
    ) -> BrokerConfig:
        """``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]``; credentials by argument,
        password file, or ``EDGEFL_MQTT_USERNAME``/``EDGEFL_MQTT_PASSWORD``."""
        parts = urlsplit(url if "://" in url else f"mqtt://{url}")
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError(
                f"unsupported broker URL {url!r}: use mqtt://HOST:PORT or mqtts://HOST:PORT"
            )
        tls = parts.scheme in ("mqtts", "ssl")
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise ConfigError(f"invalid port in broker URL {url!r}") from exc
        if not parts.hostname:
            raise ConfigError(f"broker URL {url!r} has no host")
        if parts.password is not None:
            raise ConfigError(
                "do not put passwords in the broker URL: use --password-file or EDGEFL_MQTT_PASSWORD"
            )
        if password_file:
            try:
                password = Path(password_file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(
                    f"cannot read password file {password_file}: {exc.strerror}"
                ) from exc
        username = username or parts.username or os.environ.get("EDGEFL_MQTT_USERNAME") or None
        password = password or os.environ.get("EDGEFL_MQTT_PASSWORD") or None
        return cls(
            host=parts.hostname, port=port, tls=tls, username=username, password=password, **kwargs
        )  # type: ignore[arg-type]


class Transport(Protocol):
    """What round logic needs from MQTT."""

    def connect(self, timeout: float = 10.0) -> None: ...

    def close(self) -> None: ...

    def subscribe(self, topic_filter: str, qos: int = 1) -> None: ...

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False
    ) -> None: ...

    def get(self, timeout: float | None = None) -> Message | None: ...

    def pending(self) -> int: ...

    def wait_published(self, timeout: float = 30.0) -> bool:
        """Block until every QoS 1 publish was acknowledged (e.g. before exit)."""
        ...

    @property
    def connected(self) -> bool: ...

    @property
    def connections(self) -> int:
        """Successful connections so far: a change tells round logic that it reconnected
        (after a broker restart the retained messages may be gone, updates may be lost)."""
        ...


class MqttTransport:
    """paho-mqtt client: queue-based delivery, resubscribe on reconnect, backoff."""

    # If set, "PID TIME URL" is written here on every successful connect: `fedcoord devices
    # flash` reads it to tell a client that reached its broker from one that loops failing.
    connected_file: Path | None = None

    def __init__(
        self,
        broker: BrokerConfig,
        client_id: str,
        *,
        will: Will | None = None,
        clean_session: bool = True,
        max_queued_bytes: int | None = DEFAULT_MAX_QUEUED_BYTES,
    ) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        self.broker = broker
        self.client_id = client_id
        self._queue: queue.Queue[Message] = queue.Queue()
        self.max_queued_bytes = max_queued_bytes  # None or 0: unbounded
        self._queued_bytes = 0
        self._room = threading.Condition()
        self._stalled = False  # the worker took nothing for MAX_BLOCK_S: queue without waiting
        self._subs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._refused: str | None = None
        self._connections = 0  # successful connections so far (Transport.connections)
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
        )
        c.reconnect_delay_set(min_delay=1, max_delay=30)  # exponential backoff between attempts
        c.max_queued_messages_set(10_000)  # bounded outbox while disconnected
        if broker.username:
            c.username_pw_set(broker.username, broker.password)
        self._tls: ssl.SSLContext | None = None
        if broker.tls:
            ctx = ssl.create_default_context(cafile=broker.ca_file)
            if broker.cert_file:
                ctx.load_cert_chain(broker.cert_file, broker.key_file)
            if broker.insecure:
                ctx.check_hostname = False
            c.tls_set_context(ctx)
            self._tls = ctx
        if will is not None:
            c.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self._client = c

    # paho callbacks: network thread, keep them tiny ----------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if reason_code.is_failure:
            self._refused = str(reason_code)
            log.warning("broker %s refused the connection: %s", self.broker.url, reason_code)
            return
        self._refused = None
        with self._lock:
            subs = list(self._subs.items())
        if subs:
            client.subscribe(subs)
        self._connections += 1
        self._connected.set()
        log.info("connected to %s as %s", self.broker.url, self.client_id)
        if self.connected_file is not None:
            self._write_connected_file(self.connected_file)

    def _write_connected_file(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(f"{os.getpid()} {time.time():.3f} {self.broker.url}\n")
            os.replace(tmp, path)
        except OSError as exc:  # only the flash's health check needs it
            log.warning("cannot write %s: %s", path, exc)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        if self._connected.is_set():
            log.warning("disconnected from %s (%s); reconnecting", self.broker.url, reason_code)
        self._connected.clear()

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        payload = bytes(msg.payload)
        self._wait_for_room(len(payload))
        self._queue.put(Message(msg.topic, payload, bool(msg.retain)))

    def _wait_for_room(self, size: int) -> None:
        """Backpressure: block the network thread while the queue holds max_queued_bytes.

        Not reading the socket makes the broker hold the next messages (QoS 1: they are
        acknowledged only once queued here, so nothing is lost)."""
        with self._room:
            limit = self.max_queued_bytes
            deadline = time.monotonic() + MAX_BLOCK_S
            while limit and self._queued_bytes and self._queued_bytes + size > limit:
                if self._stalled or not self._connected.is_set():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.warning(
                        "receive queue full (%d bytes) and not drained for %.0f s: queueing anyway",
                        self._queued_bytes,
                        MAX_BLOCK_S,
                    )
                    self._stalled = True
                    break
                self._room.wait(remaining)
            self._queued_bytes += size

    # Transport -----------------------------------------------------------------------
    def connect(self, timeout: float = 10.0) -> None:
        """Connect and start the network thread; paho keeps reconnecting afterwards."""
        from edge_client.errors import EdgeFLError

        try:
            self._client.connect_async(
                self.broker.host, self.broker.port, keepalive=self.broker.keepalive
            )
        except (OSError, ValueError) as exc:
            raise EdgeFLError(f"cannot connect to broker {self.broker.url}: {exc}") from exc
        self._client.loop_start()
        deadline = time.monotonic() + timeout
        while not self._connected.wait(0.1):
            if self._refused and (
                "not authorized" in self._refused.lower() or "bad user" in self._refused.lower()
            ):
                self.close()
                raise EdgeFLError(
                    f"broker {self.broker.url} refused the credentials ({self._refused})"
                )
            if time.monotonic() > deadline:
                self.close()
                problem = self._tls_problem()
                if problem:
                    raise EdgeFLError(f"TLS with broker {self.broker.url} failed: {problem}")
                raise EdgeFLError(
                    f"cannot reach broker {self.broker.url} within {timeout:.0f} s: is it running?"
                )

    def _tls_problem(self) -> str | None:
        """Why a TLS handshake with the broker fails (paho retries silently), if it does."""
        if self._tls is None:
            return None
        import socket

        try:
            with (
                socket.create_connection((self.broker.host, self.broker.port), timeout=3) as raw,
                self._tls.wrap_socket(raw, server_hostname=self.broker.host),
            ):
                return None
        except ssl.SSLCertVerificationError as exc:
            return (
                f"certificate verify failed: {exc.verify_message} "
                "(is --ca-file the CA that signed the broker's certificate?)"
            )
        except (ssl.SSLError, OSError) as exc:
            return str(exc) or type(exc).__name__

    def close(self) -> None:
        self._connected.clear()  # first: a deliberate disconnect is not an outage to log
        with self._room:
            self._room.notify_all()  # the network thread stops waiting for queue room
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()
            self._connected.clear()

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        with self._lock:
            self._subs[topic_filter] = qos
        if self._connected.is_set():
            self._client.subscribe(topic_filter, qos)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc not in (self._mqtt.MQTT_ERR_SUCCESS, self._mqtt.MQTT_ERR_NO_CONN):
            log.warning("publish to %s failed: %s", topic, self._mqtt.error_string(info.rc))

    def wait_published(self, timeout: float = 30.0) -> bool:
        """Block until paho's outbox is empty (QoS 1 acknowledged), e.g. before exit."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self._client._out_messages:  # paho keeps unacknowledged QoS>0 here
                return True
            time.sleep(0.05)
        return False

    def get(self, timeout: float | None = None) -> Message | None:
        try:
            message = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        with self._room:
            self._queued_bytes -= len(message.payload)
            if self._stalled and self._queued_bytes <= (self.max_queued_bytes or 0) // 2:
                self._stalled = False
            self._room.notify()
        return message

    def pending(self) -> int:
        """Messages received and not yet taken with ``get``."""
        return self._queue.qsize()

    @property
    def queued_bytes(self) -> int:
        """Payload bytes received and not yet taken with ``get``."""
        return self._queued_bytes

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def connections(self) -> int:
        return self._connections


# -- in memory ------------------------------------------------------------------------------


class MemoryBus:
    """A broker in one process: wildcards, retained messages, Last Will on ``drop``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._retained: dict[str, bytes] = {}
        self._clients: list[MemoryTransport] = []
        self.published: list[Message] = []  # every message, for assertions

    def attach(self, client: MemoryTransport) -> None:
        with self._lock:
            self._clients.append(client)

    def detach(self, client: MemoryTransport, *, fire_will: bool) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
        if fire_will and client.will is not None:
            self.publish(client.will.topic, client.will.payload, retain=client.will.retain)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        from paho.mqtt.client import topic_matches_sub as matches

        with self._lock:
            self.published.append(Message(topic, payload, retain))
            if retain:
                if payload:
                    self._retained[topic] = payload
                else:
                    self._retained.pop(topic, None)
            targets = [c for c in self._clients if any(matches(f, topic) for f in c.filters)]
        for c in targets:
            c._deliver(Message(topic, payload, False))

    def retained_for(self, topic_filter: str) -> list[Message]:
        from paho.mqtt.client import topic_matches_sub as matches

        with self._lock:
            return [
                Message(t, p, True) for t, p in self._retained.items() if matches(topic_filter, t)
            ]


class MemoryTransport:
    def __init__(self, bus: MemoryBus, client_id: str, *, will: Will | None = None) -> None:
        self.bus, self.client_id, self.will = bus, client_id, will
        self.filters: list[str] = []
        self._queue: queue.Queue[Message] = queue.Queue()
        self._connected = False
        self._connections = 0

    def connect(self, timeout: float = 10.0) -> None:
        self.bus.attach(self)
        self._connected = True
        self._connections += 1

    def close(self) -> None:
        self.bus.detach(self, fire_will=False)
        self._connected = False

    def drop(self) -> None:
        """Vanish without DISCONNECT: the bus publishes the Last Will."""
        self.bus.detach(self, fire_will=True)
        self._connected = False

    def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        self.filters.append(topic_filter)
        for m in self.bus.retained_for(topic_filter):
            self._deliver(m)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        self.bus.publish(topic, payload, retain=retain)

    def get(self, timeout: float | None = None) -> Message | None:
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def pending(self) -> int:
        """Messages received and not yet taken with ``get``."""
        return self._queue.qsize()

    def wait_published(self, timeout: float = 30.0) -> bool:
        return True  # the bus delivers inside publish()

    def _deliver(self, message: Message) -> None:
        self._queue.put(message)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def connections(self) -> int:
        return self._connections
