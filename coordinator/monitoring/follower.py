"""``JobFollower``: one MQTT connection that subscribes to a job's topics and feeds a JobView.

It subscribes to ``{prefix}/{job}/#`` (the monitor filter of docs/protocol.md), so the
broker first replays the retained state (control, round, metrics, statuses, model, global
weights) and then everything live, updates included. Messages are decoded on the
follower's own thread through an :class:`~edge_client.messaging.Inbox` (malformed ones are
logged and dropped) and folded into the view. The same connection publishes operator
decisions (:meth:`JobFollower.publish_control`) as retained ``JobControl`` messages, signed
with the job's key when it has one (a signing coordinator obeys nothing else).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

from coordinator.monitoring.view import JobView
from edge_client.messaging import AnyIncoming, Inbox
from edge_client.protocol import QOS, Envelope, JobControl, Topics
from edge_client.signing import Signer
from edge_client.transport import BrokerConfig, Message, MqttTransport, Transport

log = logging.getLogger(__name__)

POLL_S = 0.2  # inbox poll interval; also how often the connection state is sampled


class _Tap:
    """Passes a transport's messages through, remembering the last raw one (topic, retain)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.last: Message | None = None

    def get(self, timeout: float | None = None) -> Message | None:
        self.last = self.transport.get(timeout)
        return self.last

    def pending(self) -> int:
        return self.transport.pending()


def message_record(item: AnyIncoming, raw: Message | None, received: float) -> dict[str, Any]:
    """One decoded message as a JSON-ready dict (a line of ``fedcoord monitor --json``).

    JSON messages appear as their fields; envelopes as their wire header (kind, round,
    sender, sha256, tensors, meta), without the binary body.
    """
    value = item.value
    if isinstance(value, Envelope):
        message = value.header()
    else:
        message = {k: (list(v) if isinstance(v, tuple) else v) for k, v in _fields(value).items()}
    topic = raw.topic if raw else ""
    if isinstance(value, Envelope) and topic:
        topic = topic.rsplit("/", 1)[0]  # the base topic, without the chunk index
    return {
        "received": round(received, 3),
        "kind": item.kind,
        "topic": topic,
        "retained": bool(raw.retain) if raw else False,
        "device": item.device,
        "bytes": item.size,
        "message": message,
    }


def _fields(value: object) -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return {"value": repr(value)}


class JobFollower:
    """Background thread: broker -> Inbox -> JobView (and an optional per-message callback)."""

    def __init__(
        self,
        view: JobView,
        broker: BrokerConfig | None = None,
        *,
        transport: Transport | None = None,
        client_id: str | None = None,
        on_message: Callable[[dict[str, Any]], None] | None = None,
        signer: Signer | None = None,
    ) -> None:
        if transport is None and broker is None:
            raise ValueError("JobFollower needs a broker or a transport")
        self.view = view
        self.topics = Topics(view.job, view.prefix)
        cid = client_id or f"monitor-{view.job}-{secrets.token_hex(4)}"[:64]
        self.transport: Transport = transport or MqttTransport(broker, cid)  # type: ignore[arg-type]
        self._tap = _Tap(self.transport)
        self.inbox = Inbox(self._tap, self.topics)
        self.on_message = on_message
        self.signer = signer  # signs published control messages (the job's own key)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> JobFollower:
        """Subscribe, connect (EdgeFLError if the broker is unreachable), start the thread."""
        self.transport.subscribe(self.topics.all, QOS)
        self.transport.connect(timeout)
        self.view.set_connected(self.transport.connected)
        self._thread = threading.Thread(
            target=self._run, name=f"follow-{self.view.job}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self.transport.close()

    def __enter__(self) -> JobFollower:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_idle(self, quiet_s: float = 0.5, timeout: float = 5.0) -> bool:
        """Wait until no message arrived for ``quiet_s`` (the retained replay is done)."""
        deadline = time.monotonic() + timeout
        last = (self.view.version, time.monotonic())
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if self.view.version != last[0] or self.transport.pending():
                last = (self.view.version, time.monotonic())
            elif time.monotonic() - last[1] >= quiet_s:
                return True
        return False

    def publish_control(self, state: str, detail: str = "", *, by: str | None = None) -> JobControl:
        """Publish ``JobControl(state)`` retained on the job's control topic (signed if this
        follower has the job's key); ``by`` says who decided."""
        msg = JobControl(self.view.job, state, time.time(), detail, by)
        data = self.signer.control(msg) if self.signer else msg.to_json()
        self.transport.publish(self.topics.control, data, qos=QOS, retain=True)
        log.info("published job state %s for job %s", state, self.view.job)
        return msg

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:  # a bug must not silently freeze the view
                log.exception("monitor: unexpected error while handling a message; carrying on")

    def _step(self) -> None:
        self.view.set_connected(self.transport.connected)
        item = self.inbox.get(POLL_S)
        self.view.set_rejected(self.inbox.rejected)
        if item is None:
            return
        raw = self._tap.last
        self.view.apply(item, retained=bool(raw and raw.retain))
        if self.on_message is not None:
            self.on_message(message_record(item, raw, time.time()))
