"""Remembering which updates were already handled (QoS 1 delivers some twice)."""

from __future__ import annotations

from typing import NamedTuple

from edge_client.protocol.envelope import Envelope

DEFAULT_KEEP_ROUNDS = 4  # the current round plus a few late ones


class UpdateKey(NamedTuple):
    """Identity of an update: same job, round, device and body sha256 = same update."""

    job: str
    round: int
    device: str
    sha256: str

    @classmethod
    def of(cls, envelope: Envelope) -> UpdateKey:
        """Key of a decoded update or failure envelope (device = its checked sender)."""
        return cls(envelope.job, envelope.round, envelope.sender, envelope.sha256)


class UpdateDeduper:
    """Set of update keys, bounded to the newest ``keep_rounds`` rounds of each job.

    Adding a key of round ``r`` forgets every key of that job older than
    ``r - keep_rounds + 1``; keys of such old rounds are not stored (``add`` returns False),
    since the coordinator ignores updates for closed rounds anyway.
    """

    def __init__(self, keep_rounds: int = DEFAULT_KEEP_ROUNDS) -> None:
        if keep_rounds < 1:
            raise ValueError("keep_rounds must be >= 1")
        self.keep_rounds = keep_rounds
        self._rounds: dict[str, dict[int, set[tuple[str, str]]]] = {}  # job -> round -> keys

    def __len__(self) -> int:
        return sum(len(keys) for rounds in self._rounds.values() for keys in rounds.values())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and len(key) == 4 and self.seen(UpdateKey(*key))

    def seen(self, key: UpdateKey | tuple[str, int, str, str]) -> bool:
        """Whether this exact update was added before (and is still remembered)."""
        job, round_, device, sha256 = key
        return (device, sha256) in self._rounds.get(job, {}).get(round_, ())

    def add(self, key: UpdateKey | tuple[str, int, str, str]) -> bool:
        """Remember ``key``; True if it was new, False if seen before or too old to keep."""
        job, round_, device, sha256 = key
        rounds = self._rounds.setdefault(job, {})
        newest = max([round_, *rounds])
        oldest_kept = newest - self.keep_rounds + 1
        for old in [r for r in rounds if r < oldest_kept]:
            del rounds[old]
        if round_ < oldest_kept:
            return False
        keys = rounds.setdefault(round_, set())
        if (device, sha256) in keys:
            return False
        keys.add((device, sha256))
        return True

    def forget_job(self, job: str) -> None:
        self._rounds.pop(job, None)
