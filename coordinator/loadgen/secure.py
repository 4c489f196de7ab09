"""Secure rounds for virtual devices: the board's own stage code behind asyncio connections.

A virtual device selected for a secure round (``encoding = "secagg"``, docs/protocol.md
section 14) quantizes its planned change (the global weights plus ``(variant + 1) * STEP``,
:mod:`.updates`) with the board's ``quantized_update`` and runs the board's own
``edge_client.secure_round.SecureRound`` through the 4 stages: keys, shares, masked vector,
unmask reply. Nothing cryptographic is written here: keys, shares, masks and every check are
the board's code; this module only routes the coordinator's stage messages (``secagg-all``,
``secagg-to/<device>``) to the device's round and publishes what the round sends on
``secagg/<device>``. The quantized vector is computed once per (session, variant, samples):
devices with the same plan send the same change, as their plain updates are the same too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import numpy as np

from coordinator.loadgen.updates import Plan, variant_weights
from edge_client.errors import EdgeFLError
from edge_client.protocol import (
    DEFAULT_MAX_CHUNK,
    Envelope,
    Reassembler,
    RoundAnnouncement,
    Topics,
    decode,
    read_stage,
    split,
)
from edge_client.secure_round import SecureRound, quantized_update

log = logging.getLogger(__name__)

PublishChunk = Callable[[str, bytes], None]  # topic, chunk: written in call order


class SecureDevices:
    """The open secure rounds of one process's virtual devices."""

    def __init__(self, topics: Topics, plan: Plan, job: str, max_chunk: int = DEFAULT_MAX_CHUNK):
        self.topics, self.plan, self.job, self.max_chunk = topics, plan, job, max_chunk
        self.rounds: dict[int, SecureRound] = {}  # device index -> its round attempt
        self.bytes_up = 0  # stage messages sent, all chunks
        self._vectors: dict[tuple[str, int, int], np.ndarray] = {}
        self._reassemblers: dict[int, Reassembler] = {}

    def begin(
        self,
        index: int,
        ann: RoundAnnouncement,
        global_weights: Mapping[str, np.ndarray],
        publish: PublishChunk,
    ) -> None:
        """Quantize device ``index``'s change and advertise its keys (stage 1)."""
        params = ann.secure
        assert params is not None
        device = self.plan.device_id(index)
        variant, samples = self.plan.variant_of(index), self.plan.samples_of(index)
        key = (params.session, variant, samples)
        vector = self._vectors.get(key)
        if vector is None:
            names = list(global_weights)  # the global envelope's order: the manifest's
            trained = variant_weights(global_weights, variant)
            vector = quantized_update(trained, global_weights, names, samples, params)
            self._vectors = {k: v for k, v in self._vectors.items() if k[0] == params.session}
            self._vectors[key] = vector
        base = self.topics.secagg(device)

        def send(env: Envelope) -> int:
            chunks = split(env.to_bytes(), self.max_chunk)
            for i, chunk in enumerate(chunks):
                publish(f"{base}/{i}", chunk)
            sent = sum(len(c) for c in chunks)
            self.bytes_up += sent
            return sent

        sr = SecureRound(
            device=device, job=self.job, run=ann.run, round_=ann.round, params=params,
            vector=vector, publish=send,
        )  # fmt: skip
        self.rounds[index] = sr
        self._reassemblers[index] = Reassembler()
        sr.start()

    def on_stage(self, index: int, topic: str, payload: bytes) -> None:
        """A chunk on ``secagg-all`` or this device's ``secagg-to``."""
        sr = self.rounds.get(index)
        if sr is None or not payload:
            return
        try:
            parsed = self.topics.parse(topic)
            whole = self._reassemblers[index].feed(parsed.base, payload, index=parsed.chunk)
            if whole is None:
                return
            env = decode(whole, expect_job=self.job)
            if env.sender != "coordinator":
                return
            sr.on_message(read_stage(env))  # the board's checks; a bad message ends its part
        except EdgeFLError as exc:
            log.warning("%s: ignoring a stage message: %s", sr.device, exc)
        if sr.finished:
            self._end(index)

    def on_announcement(self, index: int, ann: RoundAnnouncement) -> None:
        """The device's round ends when its attempt closes or another round opens."""
        sr = self.rounds.get(index)
        if sr is None:
            return
        if ann.round != sr.round or ann.state != "open" or ann.secure is None:
            sr.leave(f"round {ann.round} is {ann.state}")
        elif ann.secure.session != sr.session:
            sr.leave("a new attempt of the round opened")
        if sr.finished:
            self._end(index)

    def _end(self, index: int) -> None:
        self.rounds.pop(index, None)
        self._reassemblers.pop(index, None)
