"""Stop a simulated job after a wall-clock budget, as an operator would (a stop control).

Benchmarks compare round modes at equal wall time: ``simulate_fleet(stop_after_s=...)``
publishes the job's ``stopped`` control message (signed with the job's key in a signed job)
that many seconds after the first board started its first local training (the fleet is up
and the job under way: how long 20 board processes take to start on this machine is not the
fleet's). The coordinator obeys it like any operator's stop: the round or version open then
closes, the boards exit, and the run directory keeps every completed round. The simulator
then ends normally and writes its summary.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType

from coordinator.config import JobConfig
from edge_client.protocol import JobControl, Topics
from edge_client.transport import BrokerConfig, MqttTransport

log = logging.getLogger(__name__)

BY = "fleet simulator"


class WallClockStop:
    """A context manager: ``seconds`` (None: never) after ``start`` is set, stop ``job``."""

    def __init__(
        self,
        job: JobConfig,
        broker: BrokerConfig,
        seconds: float | None,
        start: threading.Event,
    ) -> None:
        self.job, self.broker, self.seconds, self.start = job, broker, seconds, start
        self.reached = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WallClockStop:
        if self.seconds is not None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="fleet-deadline")
            self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(15)

    def _run(self) -> None:
        assert self.seconds is not None
        while not self.start.wait(0.2):
            if self._done.is_set():
                return
        if self._done.wait(self.seconds):
            return
        self.reached.set()
        self._stop()

    def _stop(self) -> None:
        detail = f"the simulation's wall-clock budget of {self.seconds:g} s is over"
        log.info("fleet: %s: stopping the job", detail)
        ctl = JobControl(self.job.job, "stopped", time.time(), detail, by=BY)
        data = ctl.to_json()
        if self.job.signing_key and not self.job.unsigned:
            from edge_client.signing import Signer

            data = Signer.from_file(self.job.signing_key).control(ctl)
        transport = MqttTransport(self.broker, f"fleet-deadline-{self.job.job}")
        try:
            transport.connect()
            transport.publish(Topics(self.job.job, self.job.prefix).control, data)
            transport.wait_published(10)
        except Exception:  # a failed stop must not crash the simulator: the job runs on
            log.exception("fleet: could not publish the stop at the end of the wall budget")
        finally:
            transport.close()
