"""The coordinator's secure round (coordinator/secure_stages.py) with the boards' side
(edge_client/secure_round.py), in one process: every stage message goes through its real
envelope bytes, but from one list to another instead of MQTT (the real-broker tests are in
test_secure_jobs.py). Real keys, shares, ciphertexts and masks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from coordinator.secure_stages import SecureRound as CoordinatorRound
from edge_client.protocol import (
    Envelope,
    Keys,
    Masked,
    SecAggParams,
    Shares,
    UnmaskReply,
    decode,
    encode_keys,
    encode_masked,
    encode_shares,
    encode_unmask_reply,
    read_stage,
)
from edge_client.secagg import GraphParameters, Share, choose_parameters, choose_quantization
from edge_client.secure_round import SecureRound as BoardRound
from edge_client.secure_round import quantized_update

NAMES = ("w", "b")
SESSION = "00112233aabbccdd"

# (board, stage it is at when the hook runs, its envelope) -> envelope to send instead, or None
Forge = Callable[[str, Envelope], Envelope | None]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """n boards and the coordinator; ``stop_after[stage]`` boards go silent after it."""

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        graph: GraphParameters | None = None,
        stop_after: Mapping[str, Iterable[str]] | None = None,
        forge: Forge | None = None,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.base = {"w": rng.normal(size=(40, 8)).astype(np.float32), "b": np.zeros(8, np.float32)}
        self.devices = [f"d{i:02d}" for i in range(n)]
        self.trained = {
            d: {
                k: (v + rng.normal(0, 0.05, v.shape)).astype(np.float32)
                for k, v in self.base.items()
            }
            for d in self.devices
        }
        self.samples = {d: int(rng.integers(50, 500)) for d in self.devices}
        q = choose_quantization(n, 500, 1.0)
        self.params = SecAggParams(SESSION, q.clip, q.scale, 500, n, q.ring.bits, 5.0)
        self.clock = Clock()
        self.to_coord: list[tuple[str, bytes]] = []
        self.to_boards: list[tuple[str, bytes]] = []
        self.stop_after = {k: set(v) for k, v in (stop_after or {}).items()}
        self.forge = forge
        self.coord = CoordinatorRound(
            job="j", run="r1", round=1, selected=frozenset(self.devices), params=self.params,
            names=NAMES, base=self.base, keys_deadline=self.clock.now + 10,
            publish_all=self._all, publish_to=self._to, clock=self.clock,
            graph_params=(lambda n: graph) if graph else choose_parameters,
        )  # fmt: skip
        self.boards = {
            d: BoardRound(
                device=d,
                job="j",
                run="r1",
                round_=1,
                params=self.params,
                vector=quantized_update(
                    self.trained[d], self.base, NAMES, self.samples[d], self.params
                ),
                publish=self._from(d),
            )  # fmt: skip
            for d in self.devices
        }

    def _from(self, device: str) -> Callable[[Envelope], int]:
        def publish(env: Envelope) -> int:
            if self.forge is not None:
                forged = self.forge(device, env)
                if forged is None:
                    return 0
                env = forged
            raw = env.to_bytes()
            self.to_coord.append((device, raw))
            return len(raw)

        return publish

    def _all(self, env: Envelope) -> int:
        raw = env.to_bytes()
        self.to_boards += [(d, raw) for d in self.devices]
        return len(raw)

    def _to(self, device: str, env: Envelope) -> int:
        raw = env.to_bytes()
        self.to_boards.append((device, raw))
        return len(raw)

    def run(self) -> CoordinatorRound:
        for d in self.devices:
            self.boards[d].start()
        for _ in range(100):
            self._deliver()
            if self.coord.complete:
                return self.coord
            self.clock.now += 6  # past the stage deadline: the stage closes without the silent
            self.coord.advance()
        raise AssertionError("the secure round never completed")

    def _deliver(self) -> None:
        while self.to_coord or self.to_boards:
            while self.to_coord:
                device, raw = self.to_coord.pop(0)
                self.coord.offer(decode(raw), device, len(raw))
            self.coord.advance()
            while self.to_boards:
                device, raw = self.to_boards.pop(0)
                board = self.boards[device]
                if device in self.stop_after.get(board.stage, ()):
                    continue
                board.on_message(read_stage(decode(raw)))
            self.coord.advance()

    def plain_fedavg(self, devices: Iterable[str]) -> dict[str, np.ndarray]:
        devices = list(devices)
        total = sum(self.samples[d] for d in devices)
        return {
            k: (
                sum(self.samples[d] * self.trained[d][k].astype(np.float64) for d in devices)
                / total
            ).astype(np.float32)
            for k in NAMES
        }


def _assert_fedavg(h: Harness, survivors: list[str]) -> None:
    c = h.coord
    assert c.stage == "done", c.failed
    assert list(c.survivors) == survivors
    assert c.total_weight == sum(h.samples[d] for d in survivors)
    expected = h.plain_fedavg(survivors)
    bound = c.record()["error_bound"]
    for k in NAMES:
        ulp = np.spacing(np.abs(expected[k]).astype(np.float32))
        assert c.weights is not None
        assert np.all(np.abs(c.weights[k] - expected[k]) <= bound + ulp)


def test_a_secure_round_without_dropouts_is_plain_fedavg_within_the_bound() -> None:
    h = Harness(5)
    c = h.run()
    _assert_fedavg(h, h.devices)
    record = c.record()
    assert record["graph"] == "complete" and record["k"] == 4 and record["threshold"] == 3
    assert set(record["stages"]) == {"keys", "shares", "masked", "unmask"}
    assert all(s["devices"] == 5 for s in record["stages"].values())
    assert record["recovered"] == [] and c.rejections == []


def test_dropouts_after_keys_shares_and_masked_vector_are_recovered() -> None:
    h = Harness(6, stop_after={"keys": ["d00"], "shares": ["d01"], "masked": ["d02"]})
    c = h.run()
    # d02 sent its vector before going silent: its self seed comes from the others
    _assert_fedavg(h, ["d02", "d03", "d04", "d05"])
    record = c.record()
    assert record["advertised"] == h.devices
    assert record["shared"] == ["d01", "d02", "d03", "d04", "d05"]
    assert record["recovered"] == ["d01"]  # shared, masked its neighbours, sent no vector


def test_a_k_regular_graph_recovers_dropouts() -> None:
    # each device has 7 holders (6 neighbours and itself) and needs t = 4: the 3 that drop
    # out leave every device enough, wherever the random graph seed places them
    h = Harness(
        12, seed=3, graph=GraphParameters(k=6, threshold=4),
        stop_after={"keys": ["d03"], "shares": ["d05"], "masked": ["d08"]},
    )  # fmt: skip
    c = h.run()
    assert c.graph is not None and not c.graph.complete
    _assert_fedavg(h, [d for d in h.devices if d not in ("d03", "d05")])
    assert c.record()["graph"] == "k-regular"


def test_fewer_than_the_threshold_fails_the_attempt_with_a_reason() -> None:
    h = Harness(5, stop_after={"shares": ["d00", "d01", "d02"]})  # t = 3, 2 vectors
    c = h.run()
    assert c.stage == "failed" and c.weights is None
    assert "only 2 devices sent their masked vectors, the threshold is 3" in c.failed
    assert c.record()["failed"] == c.failed


def test_a_malformed_masked_vector_is_excluded_and_recovered_like_a_dropout() -> None:
    def forge(device: str, env: Envelope) -> Envelope | None:
        if device == "d01" and env.meta["stage"] == "masked":
            return encode_masked("j", 1, "d01", SESSION, Masked(np.zeros(7, np.uint32), 32))
        return env

    h = Harness(5, forge=forge)
    c = h.run()
    _assert_fedavg(h, ["d00", "d02", "d03", "d04"])
    (rejection,) = c.rejections
    assert rejection.device == "d01" and rejection.counted
    assert "malformed masked vector: 7 32-bit elements" in rejection.reason


def test_garbage_ciphertexts_fail_the_round_and_blame_their_sender() -> None:
    def forge(device: str, env: Envelope) -> Envelope | None:
        if device == "d02" and env.meta["stage"] == "shares":
            cts = read_stage(env).body
            assert isinstance(cts, Shares)
            garbage = {h: bytes(168) for h in cts.ciphertexts}
            return encode_shares("j", 1, "d02", SESSION, Shares(garbage))
        return env

    h = Harness(5, forge=forge)
    c = h.run()
    assert c.stage == "failed"
    assert "d02" in c.blamed and "did not decrypt" in c.blamed["d02"]
    assert "sent garbage: d02" in c.failed


def test_a_garbage_share_in_an_unmask_reply_excludes_its_sender_and_the_round_completes() -> None:
    def forge(device: str, env: Envelope) -> Envelope | None:
        if device == "d03" and env.meta["stage"] == "unmask-reply":
            reply = read_stage(env).body
            assert isinstance(reply, UnmaskReply)
            bad = {o: Share.from_bytes(s) for o, s in reply.seed_shares.items()}
            seeds = {o: Share(s.x, (s.y + 12345) % (2**521 - 1)).to_bytes() for o, s in bad.items()}
            return encode_unmask_reply("j", 1, "d03", SESSION, UnmaskReply(seeds, {}))
        return env

    h = Harness(6, forge=forge)  # t = 3: five honest replies out-vote the garbage
    c = h.run()
    _assert_fedavg(h, h.devices)
    assert any(r.device == "d03" and "garbage share" in r.reason for r in c.rejections)


def test_a_stage_message_out_of_turn_or_from_a_stranger_is_rejected_not_raised() -> None:
    h = Harness(4)
    stranger = encode_shares("j", 1, "zz", SESSION, Shares({}))
    early = encode_shares("j", 1, "d00", SESSION, Shares({}))
    other = encode_shares("j", 1, "d00", "ffffffffffffffff", Shares({}))
    h.coord.offer(decode(stranger.to_bytes()), "zz", 10)
    h.coord.offer(decode(early.to_bytes()), "d00", 10)
    h.coord.offer(decode(other.to_bytes()), "d00", 10)
    h.coord.offer(decode(early.to_bytes()), "d01", 10)
    reasons = [r.reason for r in h.coord.rejections]
    assert reasons == [
        "device was not selected for this round",
        "shares during the keys stage",
        "for round 1 session ffffffffffffffff, not the open secure round",
        "payload sender 'd00' differs from topic device 'd01'",
    ]
    h.run()
    _assert_fedavg(h, h.devices)  # none of it mattered


def test_boards_refuse_a_threshold_below_a_majority_of_their_neighbourhood() -> None:
    # a curious coordinator announcing t = 2 of 4 neighbours could rebuild secrets from
    # fewer colluders: every board leaves the round instead of sharing
    h = Harness(5, graph=GraphParameters(k=4, threshold=2))
    c = h.run()
    assert c.stage == "failed" and "only 0 devices shared" in c.failed
    assert all(b.stage == "out" for b in h.boards.values())


def test_an_unusable_public_key_is_refused_at_the_keys_stage_and_the_round_goes_on() -> None:
    # a low-order point (all zeros) agrees an all-zero secret: every neighbour of its sender
    # would leave the round, so the coordinator refuses it before the key list goes out
    def forge(device: str, env: Envelope) -> Envelope | None:
        if device == "d04" and env.meta["stage"] == "keys":
            keys = read_stage(env).body
            assert isinstance(keys, Keys)
            return encode_keys("j", 1, "d04", SESSION, Keys(bytes(32), keys.s_public))
        return env

    h = Harness(5, forge=forge)
    c = h.run()
    _assert_fedavg(h, ["d00", "d01", "d02", "d03"])
    (rejection,) = c.rejections
    assert rejection.device == "d04" and "share-encryption key is unusable" in rejection.reason
