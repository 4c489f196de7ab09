"""The device's retained status topic: online/training/idle/failed/offline, heartbeats, Will."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from edge_client import __version__
from edge_client.protocol import ROUND_MODES, SECAGG, DeviceStatus, Topics
from edge_client.secagg import available as secagg_available
from edge_client.transport import Transport, Will

MAX_DETAIL = 1000  # characters of a status detail or failure reason sent over the wire


def device_will(job: str, device_id: str, *, prefix: str, heartbeat_s: float) -> Will:
    """The Last Will a device registers: a retained ``offline`` status."""
    status = DeviceStatus.last_will(
        device_id, time.time(), heartbeat_s=heartbeat_s, version=__version__
    )
    return Will(Topics(job, prefix).status(device_id), status.to_json())


class StatusReporter:
    """Keeps the current status and publishes it (retained) on changes and heartbeats.

    Until :attr:`enabled` is set (the client is connected) changes are only recorded.
    """

    def __init__(
        self,
        transport: Transport,
        topic: str,
        *,
        device_id: str,
        interpreter: str,
        samples: int,
        heartbeat_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.transport = transport
        self.topic = topic
        self.heartbeat_s = heartbeat_s
        self.clock = clock
        self.enabled = False
        self.current = DeviceStatus(
            device=device_id,
            state="online",
            time=clock(),
            interpreter=interpreter,
            samples=samples,
            heartbeat_s=heartbeat_s,
            version=__version__,
            # this board trains synchronous and buffered rounds, and secure ones when it has
            # the cryptography package
            modes=ROUND_MODES + ((SECAGG,) if secagg_available() else ()),
        )
        self._last_publish = 0.0  # monotonic

    def set(self, state: str, *, round_: int | None = None, detail: str = "") -> None:
        self.current = replace(
            self.current, state=state, time=self.clock(), round=round_, detail=detail[:MAX_DETAIL]
        )
        self.publish()

    def publish(self) -> None:
        if not self.enabled:
            return
        self.transport.publish(self.topic, self.current.to_json(), qos=1, retain=True)
        self._last_publish = time.monotonic()

    def heartbeat(self) -> None:
        """Republish the current status with a fresh ``time`` if the interval has elapsed."""
        due = time.monotonic() - self._last_publish >= self.heartbeat_s
        if self.enabled and self.heartbeat_s > 0 and due:
            self.current = replace(self.current, time=self.clock())
            self.publish()
