"""Watching a job from its MQTT topics: the view model, the follower thread, text rendering.

``JobView`` is the one thread-safe picture of a job that ``fedcoord monitor`` and the web
dashboard both show; ``JobFollower`` feeds it from the broker on a background thread.
"""

from __future__ import annotations

from coordinator.monitoring.follower import JobFollower, message_record
from coordinator.monitoring.view import JobView

__all__ = ["JobFollower", "JobView", "message_record"]
