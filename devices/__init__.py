"""Boards: profiles, the fleet inventory, broker security files, flashing, presence.

- ``profiles``: what a board is (RAM, CPU, architecture, Python, glibc, interpreter).
- ``inventory``: the fleet's TOML file (hosts, SSH, device ids, data, profiles).
- ``security``: per-device MQTT passwords, Mosquitto password file, ACL, conf snippet.
- ``wheels``, ``bundle``: the client wheel, locked dependency wheels, a device's bundle.
- ``ssh``, ``remote_scripts``, ``flash``: installing a bundle on a board over SSH.
- ``presence``: device statuses from the broker.

The command line is ``fedcoord devices`` (coordinator/commands/devices.py); see docs/fleet.md.
"""
