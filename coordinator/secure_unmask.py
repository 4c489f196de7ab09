"""The last stage of a secure round: check the returned shares, rebuild the secrets, unmask.

Each survivor's reply holds, per owner whose ciphertext it held, the owner's self-seed share
(the owner's masked vector arrived) or its mask-key share (the owner shared but sent no
vector). A reply is refused whole when it gives the wrong kind of share for an owner, a share
of an owner it cannot hold, or a share at another index than its own (its Shamir x).

Garbage among the shares of one secret: Shamir reconstruction checks the shares beyond the
threshold t against the polynomial and rejects results that are not 32-byte secrets, so a
secret whose shares disagree is rebuilt again without each responder in turn; a responder
whose removal makes the rest agree sent garbage (``excluded``, its shares dropped from every
secret). If no single responder explains it, or too few shares are left, the owner's secret
cannot be rebuilt and the attempt fails; the owner is ``blamed`` when its shares disagree
among themselves or holders reported its ciphertexts undecryptable (it sent garbage).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge_client.errors import EdgeFLError
from edge_client.protocol import SecAggParams, UnmaskReply
from edge_client.secagg import (
    Graph,
    RoundContext,
    SecAggError,
    Share,
    TooFewSurvivorsError,
    mean_weights,
    quant_config,
    reconstruct,
    unmask,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnmaskInputs:
    graph: Graph
    ctx_job: str
    ctx_run: str | None
    round: int
    params: SecAggParams
    names: Sequence[str]
    base: Mapping[str, np.ndarray]
    masked: Mapping[str, np.ndarray]  # survivor -> y
    sharers: Sequence[str]
    mask_publics: Mapping[str, bytes]
    replies: Mapping[str, UnmaskReply]


@dataclass
class UnmaskResult:
    weights: dict[str, np.ndarray] | None = None  # base + weighted mean change; None: failed
    total_weight: int = 0
    failed: str = ""
    excluded: dict[str, str] = field(default_factory=dict)  # responder -> why its reply was dropped
    blamed: dict[str, str] = field(default_factory=dict)  # owner -> the garbage it sent


Secrets = dict[str, dict[str, Share]]  # owner -> responder -> share


def unmask_round(inp: UnmaskInputs) -> UnmaskResult:
    """The weighted mean from the survivors' vectors and the returned shares."""
    result = UnmaskResult()
    seeds, keys, accused = _gather(inp, result)
    t = inp.graph.threshold
    for kind, table in (("self seed", seeds), ("mask key", keys)):
        for owner in sorted(table):
            culprit = _find_culprit(table[owner], t, f"the {kind} of {owner}")
            if culprit is not None:
                result.excluded[culprit] = f"returned a garbage share of the {kind} of {owner}"
                for shares in (*seeds.values(), *keys.values()):
                    shares.pop(culprit, None)
    try:
        total = unmask(
            graph=inp.graph,
            ctx=RoundContext.of_session(inp.ctx_job, inp.ctx_run, inp.round, inp.params.session),
            ring=quant_config(inp.params).ring,
            length=next(iter(inp.masked.values())).shape[0],
            masked=inp.masked,
            sharers=inp.sharers,
            mask_publics=inp.mask_publics,
            seed_shares={o: list(s.values()) for o, s in seeds.items()},
            key_shares={o: list(s.values()) for o, s in keys.items()},
        )
        result.weights, result.total_weight = mean_weights(
            total, quant_config(inp.params), inp.base, inp.names
        )
    except EdgeFLError as exc:
        result.failed = str(exc)
        _blame(inp, exc, seeds, keys, accused, result)
    return result


def _gather(
    inp: UnmaskInputs, result: UnmaskResult
) -> tuple[Secrets, Secrets, dict[str, list[str]]]:
    survivors, sharers = set(inp.masked), set(inp.sharers)
    seeds: Secrets = {o: {} for o in sorted(survivors)}
    keys: Secrets = {o: {} for o in sorted(sharers - survivors)}
    accused: dict[str, list[str]] = {}
    for responder, reply in sorted(inp.replies.items()):
        may_hold = set(inp.graph.holders(responder)) & sharers
        x = inp.graph.index(responder)
        try:
            parsed: list[tuple[Secrets, str, Share]] = []
            for table, kind, shares, owners in (
                (seeds, "self-seed", reply.seed_shares, survivors),
                (keys, "mask-key", reply.key_shares, sharers - survivors),
            ):
                for owner, raw in shares.items():
                    if owner not in may_hold or owner not in owners:
                        raise SecAggError(f"a {kind} share of {owner}, which it may not give")
                    share = Share.from_bytes(raw)
                    if share.x != x:
                        raise SecAggError(f"a share at index {share.x}, its own index is {x}")
                    parsed.append((table, owner, share))
        except SecAggError as exc:
            result.excluded[responder] = f"unusable unmask reply: {exc}"
            continue
        for table, owner, share in parsed:
            table[owner][responder] = share
        for owner in reply.undecryptable:
            accused.setdefault(owner, []).append(responder)
    return seeds, keys, accused


def _find_culprit(shares: dict[str, Share], t: int, what: str) -> str | None:
    """The one responder whose share disagrees with the others (None if they agree, too few
    are left to tell, or no single responder explains the disagreement)."""
    try:
        reconstruct(list(shares.values()), t, what)
        return None
    except TooFewSurvivorsError:
        return None
    except SecAggError:
        pass
    if len(shares) <= t:
        return None
    for responder in sorted(shares):
        rest = [s for r, s in shares.items() if r != responder]
        try:
            reconstruct(rest, t, what)
        except SecAggError:
            continue
        log.warning("%s: the share returned by %s disagrees with the others", what, responder)
        return responder
    return None


def _blame(
    inp: UnmaskInputs,
    exc: EdgeFLError,
    seeds: Secrets,
    keys: Secrets,
    accused: Mapping[str, list[str]],
    result: UnmaskResult,
) -> None:
    """Name the owners whose garbage made the attempt fail."""
    t = inp.graph.threshold
    for kind, table in (("self seed", seeds), ("mask key", keys)):
        for owner, shares in table.items():
            try:
                reconstruct(list(shares.values()), t, f"the {kind} of {owner}")
                continue
            except TooFewSurvivorsError:
                if owner in accused:
                    by = ", ".join(accused[owner])
                    result.blamed[owner] = f"its encrypted shares did not decrypt for {by}"
            except SecAggError:
                result.blamed[owner] = f"the shares of its {kind} disagree (garbage shares)"
    if result.blamed:
        names = ", ".join(f"{d} ({why})" for d, why in sorted(result.blamed.items()))
        result.failed = f"{exc}; sent garbage: {names}"
