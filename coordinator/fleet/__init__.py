"""Simulated fleets: boards with their own speed, availability and network link.

- ``spec``: the fleet file (TOML) and presets; ``speed``: slow-down factors and sources.
- ``schedule``: seeded offline sessions (or a trace) and dropout decisions.
- ``link``: a throttling proxy per board in front of the broker.
- ``budget``: calibration, CPU demand estimate and measured utilisation.
- ``boards``: board processes (kill, reboot, CPU accounting); ``runner``: all of it around a job.

See docs/fleet-simulation.md.
"""
