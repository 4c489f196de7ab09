"""The synchronous round mode, with its semi-synchronous variant.

One round: select devices among those online, publish the global weights (retained) and the
announcement, collect updates until every selected device replied, the deadline passed or,
with ``--over-select``, the target number of updates arrived; then close the round (the
round-wide influence bounds decide) and ask the strategy for the new global weights. A round
with too few updates is retried (``--max-retries``). Implements ``round_mode.RoundMode``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from coordinator.round_mode import POLL_S, SENDER, JobError
from coordinator.rounds import RoundCollector
from coordinator.selection import round_size, select_devices
from edge_client.protocol import (
    DeviceStatus,
    RoundAnnouncement,
    RoundMetrics,
    decode,
    encode_weights,
)

if TYPE_CHECKING:
    from coordinator.server import Coordinator

log = logging.getLogger(__name__)

_OFFLINE = DeviceStatus("unknown", "offline", 0.0)


class SyncRounds:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coord = coordinator
        self.cfg = coordinator.cfg

    def run_round(
        self, round_: int, weights: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], RoundMetrics]:
        t0 = time.time()
        previous: RoundCollector | None = None
        for attempt in range(self.cfg.max_retries + 1):
            collector, bytes_down = self._collect(round_, weights, attempt, previous)
            if len(collector.accepted) >= self.cfg.min_results:
                break
            previous = collector
            log.warning(
                "round %d attempt %d closed with %d of %d required updates",
                round_,
                attempt + 1,
                len(collector.accepted),
                self.cfg.min_results,
            )
        else:
            raise JobError(
                f"round {round_} got fewer than {self.cfg.min_results} updates in {self.cfg.max_retries + 1} "
                "attempts: check the devices' status and logs, or lower --min-results"
            )
        new_weights = self.coord.strategy.finish()
        self.coord.late.closed(collector)
        metrics = self._metrics(round_, collector, bytes_down, time.time() - t0)
        return new_weights, metrics

    def _collect(
        self,
        round_: int,
        weights: Mapping[str, np.ndarray],
        attempt: int,
        previous: RoundCollector | None = None,
    ) -> tuple[RoundCollector, int]:
        coord = self.coord
        coord.drain()  # an operator's pause or stop that arrived since the last round
        coord.wait_while_paused()
        if coord.control_state == "stopped":
            raise JobError(f"stopped by the operator before round {round_} opened")
        selected: tuple[str, ...] = ()
        online: set[str] = set()
        while not selected:  # a round never opens with no device selected
            online = coord.wait_for_devices()
            selected = select_devices(
                online,
                round_,
                fraction=self.cfg.fraction,
                k=self.cfg.clients_per_round,
                seed=self.cfg.seed,
                over_select=self.cfg.over_select,
            )
        target = 0
        if self.cfg.over_select > 1:
            needed = round_size(
                len(online), fraction=self.cfg.fraction, k=self.cfg.clients_per_round
            )
            target = max(needed, self.cfg.min_results) if needed < len(selected) else 0
        payload = encode_weights(
            weights,
            kind="global",
            job=self.cfg.job,
            round=round_,
            sender=SENDER,
            encoding=self.cfg.encoding,
        )
        global_sha = decode(payload).weights_sha256()  # what devices will decode and train from
        sent = coord.publish_global(payload)
        deadline = time.time() + self.cfg.round_timeout
        announcement = RoundAnnouncement(
            job=self.cfg.job,
            round=round_,
            deadline=deadline,
            selected=selected,
            hyperparams={"epochs": self.cfg.epochs, "lr": self.cfg.lr, "attempt": attempt},
            model_sha256=coord.model.manifest.sha256,
            global_sha256=global_sha,
            encoding=self.cfg.encoding,
            run=coord.run_id,
        )
        coord.publish_announcement(announcement)
        log.info(
            "round %d: %d devices selected%s, deadline in %.0f s",
            round_,
            len(selected),
            f" (closes at {target} updates)" if target else "",
            self.cfg.round_timeout,
        )
        collector = RoundCollector.open(
            self.cfg.job,
            round_,
            selected,
            global_sha,
            coord.model.manifest,
            coord.strategy,
            weights,
            self.cfg.max_update_norm,
            bounds=coord.bounds,
            announced={d: s.samples for d, s in coord.devices.items() if s.samples > 0},
        )
        collector.target = target
        if previous is not None:  # late updates an earlier attempt of this round handled
            self._carry_late(previous, collector)
        for device in selected:  # went offline between selection and announcement
            if coord.devices.get(device, _OFFLINE).state == "offline":
                collector.drop(device)
        coord.handle_pending(collector)
        while not collector.complete() and time.time() < deadline:
            coord.pump(POLL_S, collector)
            if coord.control_state == "stopped":
                break
        if not collector.complete():
            missing = sorted(collector.selected - collector.replied - collector.dropped)
            log.warning("round %d closed at its deadline without %s", round_, ", ".join(missing))
        collector.cancelled = collector.still_training()
        if collector.cancelled:
            log.info(
                "round %d reached its %d updates: closed without waiting for %s",
                round_,
                target,
                ", ".join(sorted(collector.cancelled)),
            )
        if collector.dropped:
            log.info(
                "round %d: not waited for %s (offline)",
                round_,
                ", ".join(sorted(collector.dropped)),
            )
        coord.publish_announcement(dataclasses.replace(announcement, state="closed"))
        collector.close()  # round-wide bounds decide, the held updates are folded
        return collector, sent * len(selected)

    @staticmethod
    def _carry_late(previous: RoundCollector, collector: RoundCollector) -> None:
        """The earlier attempt got too few updates and its aggregate is dropped: late updates
        it folded are lost with it (counted as wasted), those it discarded stay counted."""
        collector.late_discarded.update(previous.late_discarded)
        collector.wasted += previous.wasted
        for device, late_round in previous.late_folded.items():
            collector.late_discarded[device] = (
                f"late update for round {late_round} was folded into an earlier attempt "
                f"of round {previous.round}, which got too few updates"
            )
            collector.wasted += 1

    def _metrics(
        self,
        round_: int,
        c: RoundCollector,
        bytes_down: int,
        duration: float,
    ) -> RoundMetrics:
        return RoundMetrics(
            job=self.cfg.job,
            round=round_,
            participants=tuple(sorted(r.device for r in c.accepted)),
            bytes_up=c.bytes_up,
            bytes_down=bytes_down,
            duration_s=round(duration, 3),
            devices=tuple(c.results.values()),
            failed=tuple(sorted(r.device for r in c.results.values() if r.failed)),
            samples=sum(r.samples for r in c.accepted),
            selected=tuple(sorted(c.selected)),
            rejected={r.device: r.reason for r in c.rejections if r.counted},
            updates_aggregated=c.aggregated,
            time=time.time(),
            dropped=tuple(sorted(c.dropped - c.replied)),
            rejections=tuple(c.rejections),
            contested=tuple(sorted(c.contested & {r.device for r in c.accepted})),
            bytes_rejected=c.bytes_rejected,
            target_updates=c.target,
            cancelled=tuple(sorted(c.cancelled)),
            wasted=c.wasted,
            late_discarded=dict(c.late_discarded),
            late_folded=dict(c.late_folded),
        )
