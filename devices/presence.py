"""Fleet presence from the broker: every device's retained status (Last Will = offline).

A device publishes its ``DeviceStatus`` retained on ``{prefix}/{job}/status/{device}``,
and the broker publishes its Last Will (``offline``) when the connection drops, so
subscribing to ``status/+`` returns the current state of every device that ever joined.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from devices.inventory import Inventory
from edge_client.errors import ProtocolError
from edge_client.protocol import DeviceStatus, Topics
from edge_client.transport import BrokerConfig, MqttTransport

log = logging.getLogger(__name__)

QUIET_S = 0.5  # retained messages arrive right after subscribing; stop after this silence
STALE_FACTOR = 3  # a live status is stale after this many missed heartbeats


def read_statuses(
    broker: BrokerConfig, job: str, *, prefix: str, timeout: float = 5.0
) -> dict[str, DeviceStatus]:
    """The retained status of every device of ``job`` (EdgeFLError if the broker refuses)."""
    topics = Topics(job, prefix)
    transport = MqttTransport(broker, f"fedcoord-devices-{os.getpid()}-{time.monotonic_ns()}")
    transport.subscribe(f"{topics.root}/status/+")
    transport.connect(timeout=timeout)
    found: dict[str, DeviceStatus] = {}
    try:
        deadline = time.monotonic() + timeout
        while True:
            wait = min(QUIET_S, deadline - time.monotonic())
            message = transport.get(timeout=max(wait, 0))
            if message is None:
                break
            try:
                parsed = topics.parse(message.topic)
                if parsed.kind != "status" or not message.payload:
                    continue  # b"": a deleted retained status
                status = DeviceStatus.from_json(message.payload)
            except ProtocolError as exc:
                log.warning("ignoring %s: %s", message.topic, exc)
                continue
            if status.device == parsed.device:
                found[status.device] = status
    finally:
        transport.close()
    return found


@dataclass(frozen=True)
class Presence:
    device: str
    status: DeviceStatus | None  # None: never seen on the broker
    in_inventory: bool = True

    def state(self, now: float) -> str:
        if self.status is None:
            return "unknown"
        s = self.status
        overdue = now - s.time > STALE_FACTOR * s.heartbeat_s + 5
        if s.state != "offline" and s.heartbeat_s > 0 and overdue:
            return f"{s.state}?"  # no heartbeat for a while: maybe gone
        return s.state

    def row(self, now: float) -> dict[str, object]:
        s = self.status
        return {
            "device": self.device,
            "state": self.state(now),
            "seen_s": None if s is None else round(max(now - s.time, 0.0), 1),
            "round": None if s is None else s.round,
            "interpreter": "" if s is None else s.interpreter,
            "samples": None if s is None else s.samples,
            "detail": "" if s is None else s.detail,
            "in_inventory": self.in_inventory,
        }


def fleet_presence(inventory: Inventory, statuses: dict[str, DeviceStatus]) -> list[Presence]:
    """Inventory devices in order, then devices seen on the broker but not listed."""
    listed = [d.id for d in inventory.devices]
    out = [Presence(d, statuses.get(d)) for d in listed]
    out += [Presence(d, s, False) for d, s in sorted(statuses.items()) if d not in listed]
    return out


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"
