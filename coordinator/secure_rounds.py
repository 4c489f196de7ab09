"""The secure round mode (``--secure-aggregation``): every round is a SecAgg+ round.

One round: select devices (site aggregators and devices blamed for garbage in an earlier
attempt left out), publish the global weights, announce the round with ``encoding = "secagg"``
and its parameters (quantization for the selected devices, a fresh session), then drive
:class:`coordinator.secure_stages.SecureRound` through its 4 stages while the inbox pump feeds
it. The unmasked weighted mean of the boards' changes, added to the global weights they
decoded, is folded into the strategy as a single update of the round's total weight, so
fedavg and fedprox give it as is and fedavgm takes its server step from it.

A failed attempt (too few devices for the threshold, secrets that cannot be rebuilt) is retried
with a new session up to ``--max-retries``; when every attempt failed the round keeps the
global weights, its metrics say why, and the job goes on. Implements
``round_mode.RoundMode``.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from coordinator.config import PER_UPDATE_BOUNDS
from coordinator.round_mode import POLL_S, SENDER, JobError
from coordinator.secure_stages import SecureRound
from coordinator.selection import round_size, select_devices
from edge_client.messaging import AnyIncoming, SecAggReceived, StatusReceived, UpdateReceived
from edge_client.protocol import (
    SECAGG,
    DeviceMetrics,
    DeviceStatus,
    Envelope,
    Rejection,
    RoundAnnouncement,
    RoundMetrics,
    SecAggParams,
    decode,
    encode_weights,
)
from edge_client.secagg import choose_quantization

if TYPE_CHECKING:
    from coordinator.server import Coordinator

log = logging.getLogger(__name__)

SITE_INTERPRETER = "site-aggregator"  # a site aggregator's status names it (coordinator/site.py)
DEFAULT_MAX_WEIGHT = 2**16  # the weight cap when no selected device announced its samples


def describe(cfg: Any) -> str:
    """The job's log line: what secure aggregation bounds, and what it turns off."""
    on = [f"each board clips each coordinate of its change to +-{cfg.secagg_clip:g}"]
    if cfg.clip_norm > 0:
        on.append(f"and its change to an L2 norm of {cfg.clip_norm:g} (--clip-norm)")
    on.append("and its weight to the largest sample count the round's boards announced")
    off = [f"--{n.replace('_', '-')}" for n in PER_UPDATE_BOUNDS] + ["the sample check"]
    return (
        "secure aggregation: the coordinator sees masked vectors only; "
        + " ".join(on)
        + " (honest boards; a hostile one can add any vector); OFF, they need single "
        + "updates: "
        + ", ".join(off)
    )


def _cannot_take_part(status: DeviceStatus) -> str:
    """Why a device cannot take part in secure rounds ("" if it can)."""
    if status.interpreter.startswith(SITE_INTERPRETER):
        return "a site aggregator would see its devices' updates in the clear"
    if not status.speaks(SECAGG):
        return (
            "its status does not list the secagg mode (a board without the 'cryptography' "
            "package, pip install cryptography, or one older than secure aggregation)"
        )
    return ""


class SecureRounds:
    def __init__(self, coordinator: Coordinator) -> None:
        self.coord = coordinator
        self.cfg = coordinator.cfg
        self.names = [w.name for w in coordinator.model.manifest.weights]
        self._said: set[str] = set()  # devices already said to be left out
        log.warning("%s", describe(self.cfg))

    def run_round(
        self, round_: int, weights: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], RoundMetrics]:
        t0 = time.time()
        blamed: dict[str, str] = {}
        failures: list[str] = []
        for attempt in range(self.cfg.max_retries + 1):
            sr, bytes_down = self._attempt(round_, weights, attempt, blamed)
            if sr.stage == "done":
                break
            failures.append(sr.failed)
            blamed.update(sr.blamed)
            log.warning("round %d attempt %d failed: %s", round_, attempt + 1, sr.failed)
        new_weights = dict(weights)
        if sr.stage == "done" and sr.weights is not None:
            strategy = self.coord.strategy
            strategy.begin(weights)
            strategy.accept(sr.weights, sr.total_weight)
            new_weights = strategy.finish()
        else:
            log.warning(
                "round %d failed in all %d attempts: the global weights stay as they were",
                round_,
                len(failures),
            )
        metrics = self._metrics(round_, sr, bytes_down, time.time() - t0, failures)
        return new_weights, metrics

    # -- one attempt -----------------------------------------------------------------------------
    def _attempt(
        self,
        round_: int,
        weights: Mapping[str, np.ndarray],
        attempt: int,
        blamed: Mapping[str, str],
    ) -> tuple[SecureRound, int]:
        coord, cfg = self.coord, self.cfg
        coord.drain()
        coord.wait_while_paused()
        if coord.control_state == "stopped":
            raise JobError(f"stopped by the operator before round {round_} opened")
        selected, target = self._select(round_, blamed)
        payload = encode_weights(
            weights, kind="global", job=cfg.job, round=round_, sender=SENDER, encoding=cfg.encoding
        )
        decoded = decode(payload)  # what the boards train from and add their changes to
        sent = coord.publish_global(payload)
        params = self._params(selected)
        deadline = time.time() + cfg.round_timeout
        announcement = RoundAnnouncement(
            job=cfg.job,
            round=round_,
            deadline=deadline,
            selected=selected,
            hyperparams={"epochs": cfg.epochs, "lr": cfg.lr, "attempt": attempt},
            model_sha256=coord.model.manifest.sha256,
            global_sha256=decoded.weights_sha256(),
            encoding=SECAGG,
            run=coord.run_id,
            secagg=params.to_dict(),
        )
        coord.publish_announcement(announcement)
        log.info(
            "round %d: %d devices selected for a secure round (%d-bit ring, session %s), "
            "training deadline in %.0f s",
            round_,
            len(selected),
            params.bits,
            params.session,
            cfg.round_timeout,
        )
        sr = SecureRound(
            job=cfg.job,
            run=coord.run_id,
            round=round_,
            selected=frozenset(selected),
            params=params,
            names=self.names,
            base=decoded.weights(),
            keys_deadline=deadline,
            publish_all=self._publish_all,
            publish_to=self._publish_to,
            target=target,
            min_survivors=cfg.min_results,
        )
        for device in selected:  # went offline between selection and announcement
            status = coord.devices.get(device)
            if status is None or status.state == "offline":
                sr.drop(device)
        while not sr.complete:
            coord.pump(POLL_S, on_item=lambda item: self._on_item(sr, item))
            sr.advance()
            if coord.control_state == "stopped" and not sr.complete:
                sr.stage, sr.failed = "failed", "stopped by the operator"
        coord.publish_announcement(dataclasses.replace(announcement, state="closed"))
        down = sum(s.bytes_down for s in sr.stages.values())
        return sr, sent * len(selected) + down

    def _select(self, round_: int, blamed: Mapping[str, str]) -> tuple[tuple[str, ...], int]:
        coord, cfg = self.coord, self.cfg
        selected: tuple[str, ...] = ()
        online: set[str] = set()
        give_up = time.monotonic() + cfg.wait_timeout
        while not selected:  # a round never opens with no device selected
            if time.monotonic() > give_up:
                raise JobError(
                    f"round {round_}: no online device can take part in a secure round (site "
                    f"aggregators and boards without secagg never do; blamed this round: {', '.join(blamed) or 'none'})"
                )
            online = {d for d in coord.wait_for_devices() if d not in blamed}
            for device in sorted(online):
                why = _cannot_take_part(coord.devices[device])
                if why:
                    online.discard(device)
                    if device not in self._said:
                        self._said.add(device)
                        log.warning("%s is never selected in a secure job: %s", device, why)
            selected = select_devices(
                online,
                round_,
                fraction=cfg.fraction,
                k=cfg.clients_per_round,
                seed=cfg.seed,
                over_select=cfg.over_select,
            )
            if not selected:
                coord.pump(POLL_S)
        target = 0
        if cfg.over_select > 1:
            needed = round_size(len(online), fraction=cfg.fraction, k=cfg.clients_per_round)
            target = max(needed, cfg.min_results) if needed < len(selected) else 0
        return selected, target

    def _params(self, selected: tuple[str, ...]) -> SecAggParams:
        announced = [self.coord.devices[d].samples for d in selected if d in self.coord.devices]
        max_weight = max(announced, default=0) or DEFAULT_MAX_WEIGHT
        q = choose_quantization(len(selected), max_weight, self.cfg.secagg_clip)
        return SecAggParams(
            session=secrets.token_hex(8),
            clip=q.clip,
            scale=q.scale,
            max_weight=q.max_weight,
            n_devices=q.n_devices,
            bits=q.ring.bits,
            stage_timeout=self.cfg.secagg_timeout,
            l2_clip=self.cfg.clip_norm,
        )

    def _sign(self, env: Envelope) -> bytes:
        signer = self.coord.signer
        return signer.secagg(env) if signer is not None else env.to_bytes()

    def _publish_all(self, env: Envelope) -> int:
        coord = self.coord
        return coord.publisher.publish(coord.topics.secagg_all, self._sign(env))

    def _publish_to(self, device: str, env: Envelope) -> int:
        coord = self.coord
        return coord.publisher.publish(coord.topics.secagg_to(device), self._sign(env))

    def _on_item(self, sr: SecureRound, item: AnyIncoming) -> bool:
        """Stage messages, failure reports and plain updates go to the secure round; True if
        taken (statuses also go on to the coordinator, which keeps presence)."""
        match item:
            case SecAggReceived(env, device, size) if device:
                sr.offer(env, device, size)
                return True
            case UpdateReceived(env, device, size) if device:
                if env.kind == "failure" and env.round == sr.round and env.sender == device:
                    sr.fail_device(device, env.reason)
                    sr.bytes_by_device[device] = sr.bytes_by_device.get(device, 0) + size
                    log.warning("device %s failed round %d: %s", device, sr.round, env.reason)
                else:
                    why = "a plain update in a secure job: not looked at"
                    sr.rejections.append(Rejection(device, env.sender, env.round, why, False, size))
                    log.warning("ignored an update from %s: %s", device, why)
                return True
            case StatusReceived(status, device) if device and status.state == "offline":
                if sr.drop(device):
                    log.warning("round %d: selected device %s went offline", sr.round, device)
        return False

    # -- metrics ---------------------------------------------------------------------------------
    def _metrics(
        self,
        round_: int,
        sr: SecureRound,
        bytes_down: int,
        duration: float,
        failures: list[str],
    ) -> RoundMetrics:
        record = sr.record()
        if failures:
            record["attempts"] = [*failures, *([] if sr.failed else ["done"])]
        devices = tuple(
            DeviceMetrics(d, bytes_up=b, failed=sr.reported.get(d, ""))
            for d, b in sr.bytes_by_device.items()
        )
        participants = tuple(sr.participants())
        return RoundMetrics(
            job=self.cfg.job,
            round=round_,
            participants=participants,
            bytes_up=sum(sr.bytes_by_device.values()),
            bytes_down=bytes_down,
            duration_s=round(duration, 3),
            devices=devices,
            failed=tuple(sorted(sr.reported)),
            samples=sr.total_weight,
            selected=tuple(sorted(sr.selected)),
            rejected={r.device: r.reason for r in sr.rejections if r.counted},
            updates_aggregated=len(participants),
            time=time.time(),
            dropped=tuple(sorted(sr.dropped)),
            rejections=tuple(sr.rejections),
            bytes_rejected=sum(r.bytes for r in sr.rejections),
            target_updates=sr.target,
            cancelled=tuple(sorted(sr.cancelled)),
            secagg=record,
        )
