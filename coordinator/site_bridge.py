"""The Mosquitto bridge between a site broker and the central one (``fedcoord site
--bridge-config``): the central job's retained state comes down, the site's update and status
go up, nothing else crosses."""

from __future__ import annotations

from edge_client.protocol import DEFAULT_PREFIX


def bridge_config(
    site_id: str,
    job: str,
    central: str,
    *,
    local_prefix: str = "central/fl/v1",
    remote_prefix: str = DEFAULT_PREFIX,
) -> str:
    """A Mosquitto ``conf.d`` snippet for the site broker: the central job's model, global
    weights, round and control come down under ``local_prefix``; the site's update and
    status go up. ``central`` is ``HOST:PORT`` of the central broker."""
    local, remote = f"{local_prefix}/{job}/", f"{remote_prefix}/{job}/"
    lines = [
        f"connection {site_id}-uplink",
        f"address {central}",
        f"clientid bridge-{job}-{site_id}",
        "cleansession true",
        "notifications false",
        "bridge_protocol_version mqttv311",
        "try_private true",  # Mosquitto to Mosquitto: retained flags survive the bridge
        *(f"topic {t} in 1 {local} {remote}" for t in ("model/#", "global/#", "round", "control")),
        f"topic update/{site_id}/# out 1 {local} {remote}",
        f"topic status/{site_id} out 1 {local} {remote}",
    ]
    return "\n".join(lines) + "\n"
