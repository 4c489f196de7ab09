"""A board's part in a secure round: keys, shares, masked vector, unmask reply.

After training (``RoundWork.train_only``) the board never sends its weights: it quantizes its
sample-weighted, clipped change into the ring (``edge_client.secagg.updates``) and runs the
4 stages of docs/secure-aggregation.md with fresh keys and seeds for this round attempt:

1. :meth:`SecureRound.start`: publish its two X25519 public keys (``keys``).
2. ``key-list`` from the coordinator: build the round's graph, Shamir-share its self seed and
   its mask private key among its holders, publish each pair encrypted for its holder
   (``shares``).
3. ``routed`` (the ciphertexts sent to it): mask the vector with its self seed and the
   pairwise seeds of the neighbours that shared, publish ``masked``, forget the vector.
4. ``unmask`` (the survivors): for each owner whose ciphertext it holds, return the
   self-seed share if the owner survived, else the mask-key share, never both, once.

Everything a stage receives is checked; a bad message ends the board's part (logged), it
never raises out of :meth:`SecureRound.on_message`. Secrets live in memory only: a board
that restarts mid-round has dropped out, which the protocol recovers from.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edge_client.errors import EdgeFLError
from edge_client.protocol import (
    Envelope,
    KeyList,
    Keys,
    Masked,
    RoundAnnouncement,
    Routed,
    SecAggParams,
    Shares,
    StageMessage,
    UnmaskReply,
    UnmaskRequest,
    decode,
    encode_keys,
    encode_masked,
    encode_shares,
    encode_unmask_reply,
    parse_chunk,
    read_stage,
)
from edge_client.secagg import (
    Graph,
    GraphParameters,
    KeyPair,
    RoundContext,
    SecAggError,
    build_graph,
    clip_l2,
    decrypt_share,
    encode_change,
    encrypt_share,
    flat_change,
    mask_input,
    pack_pair,
    pairwise_seed,
    quant_config,
    share_key,
    split,
    unpack_pair,
)

log = logging.getLogger(__name__)

Publish = Callable[[Envelope], int]  # publishes on the board's secagg topic, returns bytes


def quantized_update(
    trained: Mapping[str, np.ndarray],
    base: Mapping[str, np.ndarray],
    names: Sequence[str],
    samples: int,
    params: SecAggParams,
) -> np.ndarray:
    """The ring vector of a board's weighted, clipped change. Shape (P + 1,)."""
    cfg = quant_config(params)
    change = clip_l2(flat_change(trained, base, names), params.l2_clip)
    weight = min(samples, params.max_weight)
    if weight < samples:
        log.warning("secure round: weight %d capped at the round's %d", samples, weight)
    vector, clipped = encode_change(change, weight, cfg)
    if clipped:
        log.info(
            "secure round: %d of %d coordinates of the change clipped to +-%g",
            clipped,
            change.shape[0],
            params.clip,
        )
    return vector


@dataclass
class _Held:
    """What the board holds after the shares stage."""

    graph: Graph
    publics: Mapping[str, Keys]  # advertised keys of the round's members
    shares: dict[str, bytes]  # owner -> decrypted (seed share + key share), filled at stage 3
    undecryptable: list[str]


class SecureRound:
    """One board in one secure round attempt (``session``)."""

    def __init__(
        self,
        *,
        device: str,
        job: str,
        run: str | None,
        round_: int,
        params: SecAggParams,
        vector: np.ndarray,
        publish: Publish,
    ) -> None:
        self.device = device
        self.job, self.round, self.params = job, round_, params
        self.session = params.session
        self.ctx = RoundContext.of_session(job, run, round_, params.session)
        self._vector: np.ndarray | None = vector
        self._publish = publish
        self.c, self.s = KeyPair.generate(), KeyPair.generate()
        self._self_seed = secrets.token_bytes(32)
        self._held: _Held | None = None
        self.stage = "new"  # new, keys, shares, masked, done, out
        self.bytes_sent = 0

    def start(self) -> None:
        """Stage 1: advertise the public keys."""
        self._send(encode_keys(*self._head(), Keys(self.c.public, self.s.public)))
        self.stage = "keys"

    def on_message(self, msg: StageMessage) -> None:
        """Take the coordinator's next stage message; a bad one ends this board's part."""
        if msg.session != self.session or msg.round != self.round or self.stage in ("done", "out"):
            return
        try:
            match msg.body:
                case KeyList() as kl if self.stage == "keys":
                    self._share(kl)
                case Routed() as routed if self.stage == "shares":
                    self._mask(routed)
                case UnmaskRequest() as req if self.stage == "masked":
                    self._answer(req)
                case _:
                    return  # a duplicate, or a stage this board is not at
        except EdgeFLError as exc:
            self.leave(f"{msg.stage}: {exc}")

    def leave(self, why: str) -> None:
        """Drop out of the round and forget the secrets (the others recover without it)."""
        if self.stage not in ("done", "out"):
            log.warning("secure round %d: leaving the round (%s)", self.round, why)
        self.stage = "out"
        self._vector, self._held = None, None

    @property
    def finished(self) -> bool:
        return self.stage in ("done", "out")

    # -- stages ------------------------------------------------------------------------------
    def _head(self) -> tuple[str, int, str, str]:
        return self.job, self.round, self.device, self.session

    def _send(self, env: Envelope) -> None:
        self.bytes_sent += self._publish(env)

    def _share(self, kl: KeyList) -> None:
        """Stage 2: split the self seed and the mask key among the holders, encrypt, send."""
        members = sorted(kl.keys)
        mine = kl.keys.get(self.device)
        if mine is None or (mine.c_public, mine.s_public) != (self.c.public, self.s.public):
            raise SecAggError("the key list does not hold this board's keys")
        graph = build_graph(members, kl.graph_seed, GraphParameters(kl.k, kl.threshold))
        degree = len(graph.neighbours(self.device))
        if len(members) < 3 or not degree // 2 < graph.threshold <= degree + 1:
            raise SecAggError(
                f"refusing threshold {kl.threshold} for {degree} neighbours among "
                f"{len(members)} members: it must be a majority of the neighbourhood (and a "
                "round needs 3 members)"
            )
        holders = graph.holders(self.device)
        xs = [graph.index(h) for h in holders]
        seed_shares = split(self._self_seed, graph.threshold, xs)
        key_shares = split(self.s.private_bytes(), graph.threshold, xs)
        out = {}
        for holder, a, b in zip(holders, seed_shares, key_shares):
            key = share_key(self.c, kl.keys[holder].c_public, self.ctx, self.device, holder)
            out[holder] = encrypt_share(key, pack_pair(a, b), self.ctx, self.device, holder)
        self._held = _Held(graph, dict(kl.keys), {}, [])
        self._send(encode_shares(*self._head(), Shares(out)))
        self.stage = "shares"

    def _mask(self, routed: Routed) -> None:
        """Stage 3: keep the shares sent to this board, mask with those who shared, send y."""
        held, vector = self._held, self._vector
        assert held is not None and vector is not None
        allowed = set(held.graph.holders(self.device))
        senders = set(routed.ciphertexts)
        if not senders <= allowed or self.device not in senders:
            raise SecAggError("the routed shares do not match this board's neighbourhood")
        for owner, blob in routed.ciphertexts.items():
            key = share_key(self.c, held.publics[owner].c_public, self.ctx, self.device, owner)
            try:
                plain = decrypt_share(key, blob, self.ctx, owner, self.device)
                unpack_pair(plain)
                held.shares[owner] = plain
            except SecAggError as exc:
                log.warning("secure round %d: %s", self.round, exc)
                held.undecryptable.append(owner)
        pairwise = {
            j: pairwise_seed(self.s, held.publics[j].s_public, self.ctx, self.device, j)
            for j in sorted(senders - {self.device})
        }
        ring = quant_config(self.params).ring
        y = mask_input(
            vector, me=self.device, self_seed=self._self_seed, pairwise=pairwise, ring=ring
        )
        self._vector = None  # the plain vector is no longer needed
        self._send(encode_masked(*self._head(), Masked(y, ring.bits)))
        self.stage = "masked"

    def _answer(self, req: UnmaskRequest) -> None:
        """Stage 4: one share per owner held: the seed share of survivors, the key share of
        the others; nothing when this board is not a survivor or too few survived."""
        held = self._held
        assert held is not None
        survivors = set(req.survivors)
        if self.device not in survivors:
            raise SecAggError("this board is not among the survivors: not answering")
        if len(survivors) < held.graph.threshold:
            raise SecAggError(
                f"only {len(survivors)} survivors, below the threshold {held.graph.threshold}"
            )
        seeds, keys = {}, {}
        for owner, plain in held.shares.items():
            seed_share, key_share = unpack_pair(plain)
            if owner in survivors:
                seeds[owner] = seed_share.to_bytes()
            else:
                keys[owner] = key_share.to_bytes()
        reply = UnmaskReply(seeds, keys, tuple(sorted(held.undecryptable)))
        self._send(encode_unmask_reply(*self._head(), reply))
        self.stage = "done"
        self._held = None
        log.info(
            "secure round %d: unmask reply sent (%d seed shares, %d key shares)",
            self.round,
            len(seeds),
            len(keys),
        )


class SecureRounds:
    """The board's secure rounds: starts one after training, feeds it the coordinator's
    stage messages (verified in a signed job), ends it when its round closes."""

    def __init__(
        self,
        device: str,
        job: str,
        publish: Publish,
        *,
        verify: Callable[[bytes], Envelope] | None = None,
    ) -> None:
        self.device, self.job = device, job
        self._publish = publish
        self.verify = verify  # Verifier.secagg in a signed job
        self.current: SecureRound | None = None
        self._deadline = 0.0  # the announcement deadline of the current one's attempt

    def begin(
        self,
        ann: RoundAnnouncement,
        trained: Mapping[str, np.ndarray],
        base: Mapping[str, np.ndarray],
        names: Sequence[str],
        samples: int,
    ) -> None:
        """Quantize the trained change and advertise keys (stage 1); raises EdgeFLError."""
        params = ann.secure
        assert params is not None
        vector = quantized_update(trained, base, names, samples, params)
        self.current = SecureRound(
            device=self.device,
            job=self.job,
            run=ann.run,
            round_=ann.round,
            params=params,
            vector=vector,
            publish=self._publish,
        )
        self._deadline = ann.deadline
        self.current.start()
        log.info(
            "secure round %d: trained; keys advertised (session %s)", ann.round, params.session
        )

    def on_envelope(self, env: Envelope, raw: bytes) -> None:
        """A coordinator's stage message (from ``secagg-all`` or this board's ``secagg-to``)."""
        if self.current is None or self.current.finished:
            return
        if env.sender != "coordinator":
            return
        try:
            if self.verify is not None:
                env = self.verify(raw)
            msg = read_stage(env)
        except EdgeFLError as exc:
            log.warning("secure round: ignoring a stage message: %s", exc)
            return
        self.current.on_message(msg)

    def on_announcement(self, ann: RoundAnnouncement) -> None:
        """A round announcement: the current secure round ends when its attempt is over."""
        cur = self.current
        if cur is None or cur.finished:
            return
        same = ann.round == cur.round and ann.deadline == self._deadline
        if not same or ann.state != "open":  # the coordinator closes after the unmask stage
            cur.leave(f"round {ann.round} is {ann.state}" if same else "another round opened")


def left_out(
    payload: bytes,
    ann: RoundAnnouncement,
    device: str,
    verify: Callable[[bytes], Envelope] | None = None,
) -> bool:
    """Whether a queued ``secagg-all`` chunk is the key list of ``ann``'s secure round without
    ``device``: the keys stage closed (an over-selected round reached its target) while the
    board was still training, so it stops. A key list of more than one chunk (thousands of
    devices) is not looked at: the board then finishes and its keys are refused."""
    params = ann.secure
    if params is None:
        return False
    try:
        chunk = parse_chunk(payload)
        if chunk.count != 1:
            return False
        env = verify(chunk.data) if verify is not None else decode(chunk.data)
        msg = read_stage(env)
    except EdgeFLError:
        return False
    same = msg.round == ann.round and msg.session == params.session
    return same and isinstance(msg.body, KeyList) and device not in msg.body.keys
