"""The figures of bench/async_numerics.py's record, as docs/benchmarks.md quotes them.

Pure rendering (no interpreter, no training): bench/doc_sections.py and the tests call
``table(record)`` on bench/results/async_numerics.json. ``Variant`` is a FedBuff setting
as ``--variants`` names it (``k5``, ``k2-a1``, ...).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from doc_figures import lowest_after


@dataclass(frozen=True)
class Variant:
    """A FedBuff setting: server learning rate and staleness exponent a in 1/(1+s)^a."""

    name: str
    server_lr: float = 1.0
    exponent: float = 0.5
    toward_model: bool = False  # the change is (trained - current), not (trained - base)
    k: int | None = None  # buffer size (default --k)
    per_device: int | None = None  # most updates of one board in a buffer (default: the share's)
    hinge: int = 0  # updates at most this many versions behind keep their whole change
    momentum: float = 0.0  # server momentum over versions (fedavgm; 0: FedAvg's step)
    restart: float = 0.0  # a training hearing of a newer version this early starts over, once
    restart_first: bool = False  # ... only a training from the first version (the initial weights)
    ema: float = 0.0  # the model evaluated: the versions' average, decaying by this per version

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``lr0.5``, ``a1``, ``k5``, ``per1``, ``model``, ``h2``, ``lr0.5-a1``: server lr,
        staleness exponent, buffer size, most updates per board in a buffer, changes toward the
        trained model rather than from the update's base, a hinge (updates at most 2 versions
        behind keep their whole change, FedAsync's hinge: the weight is 1/(1+s-2)^a beyond),
        ``mom0.9``: server momentum over the versions (``--strategy fedavgm``), ``r25``: a
        board that hears of a newer version within the first 25 % of its training starts over
        from it (once per training), ``rf25``: the same for trainings from the initial weights
        only, ``ema0.8``: the model evaluated is the versions' average, each older version's
        weight 0.8 times the next one's (bias-corrected, as Adam's moments)."""
        lr, a, toward, k, per, hinge, mom, restart = 1.0, 0.5, False, None, None, 0, 0.0, 0.0
        first, ema = False, 0.0
        for part in text.split("-"):
            if part == "model":
                toward = True
            elif part.startswith("ema"):
                ema = float(part[3:])
            elif part.startswith("rf"):
                restart, first = float(part[2:]) / 100, True
            elif part.startswith("r"):
                restart = float(part[1:]) / 100
            elif part.startswith("mom"):
                mom = float(part[3:])
            elif part.startswith("h"):
                hinge = int(part[1:])
            elif part.startswith("per"):
                per = int(part[3:])
            elif part.startswith("k"):
                k = int(part[1:])
            elif part.startswith("lr"):
                lr = float(part[2:])
            elif part.startswith("a"):
                a = float(part[1:])
            else:
                raise SystemExit(
                    f"unknown variant part {part!r} in {text!r}: use lrX, aY, kN, perN, hN, "
                    "momX, rP, rfP, emaD or model"
                )
        return cls(text, lr, a, toward, k, per, hinge, mom, restart, first, ema)


def _seconds(values: list[float | None]) -> str:
    """``32.8 / 29.0-36.3 s`` (median / min-max over seeds), ``never`` when none reached it,
    and how many seeds did when some did not."""
    got = [v for v in values if v is not None]
    if not got:
        return "never"
    text = f"{statistics.median(got):.1f} s ({min(got):.1f}-{max(got):.1f})"
    return text if len(got) == len(values) else f"{text}, {len(got)} of {len(values)} seeds"


def _points(values: list[float | None]) -> str:
    got = [v for v in values if v is not None]
    if not got:
        return "—"
    return f"{statistics.median(got):+.2f} ({min(got):+.2f} to {max(got):+.2f})"


def _sooner(
    sync: list[dict[str, Any]], rows: list[dict[str, Any]], target: float, horizon: float
) -> str:
    """``, 4.5x sooner``: sync's median time to ``target`` over this mode's (seeds that never
    reached it count as the horizon: a lower bound, ``>=``)."""
    key = f"t{round(100 * target)}"
    mine = [r[key] for r in rows]
    if any(t is None for t in mine):
        return ""
    theirs = [r[key] for r in sync]
    if all(t is None for t in theirs):
        return ", sync never"
    bound = ">=" if any(t is None for t in theirs) else ""
    ratio = statistics.median(horizon if t is None else t for t in theirs) / statistics.median(mine)
    return f", {bound}{ratio:.1f}x sooner"


def _counts(rows: list[dict[str, Any]]) -> str:
    """Synchronous FedAvg's updates within the horizon, per seed: ``30``, or ``20-30``."""
    counts = sorted({r.get("same_updates") for r in rows})
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def mode_name(mode: str, record: dict[str, Any]) -> str:
    """``synchronous FedAvg, 10 per round`` / ``FedBuff, buffer 5`` for a table row."""
    if mode == "sync":
        return f"synchronous FedAvg, {record['settings']['k']} boards per round"
    v = Variant.parse(mode.removeprefix("fedbuff-"))
    parts = [f"buffer {v.k or record['settings']['k']}"]
    if v.hinge:
        parts.append(f"weight 1/(1+s-{v.hinge})^{v.exponent:g} beyond {v.hinge} behind")
    elif v.exponent != 0.5:
        parts.append(f"weight 1/(1+s)^{v.exponent:g}")
    if v.server_lr != 1.0:
        parts.append(f"server lr {v.server_lr:g}")
    if v.momentum:
        parts.append(f"server momentum {v.momentum:g}")
    if v.per_device is not None:
        parts.append(f"at most {v.per_device} per board")
    if v.restart:
        which = "from the initial weights " if v.restart_first else ""
        parts.append(
            f"trainings {which}started over on a newer version within {100 * v.restart:g} %"
        )
    parts.append("toward the trained model" if v.toward_model else "from its base")
    if v.ema:
        parts.append(f"evaluated as the versions' average decaying by {v.ema:g}")
    return "FedBuff, " + ", ".join(parts)


def table(record: dict[str, Any]) -> str:
    """docs/benchmarks.md's table: per partition and mode, medians (min-max) over the seeds
    (updates and wasted updates: medians).
    "After sync's updates": after as many accepted updates as synchronous FedAvg made within
    the horizon with the same seed (a range when the seeds differ)."""
    seeds = len(record["settings"]["seeds"].split(","))
    targets = [float(x) for x in record["settings"]["targets"].split(",")]
    head = [f"to {round(100 * t)} %" for t in targets]
    horizon = float(record["settings"]["horizon"])
    lines = [
        "| fleet | partition | mode | " + " | ".join(head) + " | accuracy after sync's updates, "
        f"vs sync (points) | accuracy at {record['settings']['horizon']:g} s | updates "
        "(wasted) |",
        "|---|---|---|" + "---|" * (len(head) + 3),
    ]
    for part, modes in record["summary"].items():
        for mode, rows in modes.items():
            assert len(rows) == seeds
            times = [_seconds([r[f"t{round(100 * t)}"] for r in rows]) for t in targets]
            if mode != "sync":
                times[0] += _sooner(modes["sync"], rows, targets[0], horizon)
            same = _counts(rows)
            gap = "—" if mode == "sync" else _points([r.get("gap_points") for r in rows])
            accs = [r["accuracy_at_same_updates"] for r in rows]
            final = [r["final_accuracy"] for r in rows]
            lines.append(
                f"| {record['settings']['fleet']} | {part} | {mode_name(mode, record)} | "
                + " | ".join(times)
                + " | "
                f"{100 * statistics.median(accs):.2f} % at {same}, {gap} | "
                f"{100 * statistics.median(final):.2f} % | "
                f"{statistics.median(r['updates'] for r in rows):.0f} "
                f"({statistics.median(r['wasted'] for r in rows):.0f}) |"
            )
    return "\n".join(lines)


def claims(record: dict[str, Any], partition: str = "iid") -> list[str]:
    """The sentences docs/benchmarks.md says about the table, from the record: when
    synchronous FedAvg reached the first target, how much sooner each FedBuff setting did, and
    how far it was from FedAvg after FedAvg's updates (medians over the seeds, and ranges)."""
    modes = record["summary"][partition]
    target = float(record["settings"]["targets"].split(",")[0])
    key, pct = f"t{round(100 * target)}", f"{round(100 * target)} %"
    horizon = float(record["settings"]["horizon"])
    sync = modes["sync"]
    sync_t = [r[key] for r in sync]
    out = []
    if all(t is not None for t in sync_t):
        out.append(
            f"Synchronous FedAvg reached {pct} at a median {statistics.median(sync_t):.1f} s "
            f"({min(sync_t):.1f}-{max(sync_t):.1f} over the seeds)"
        )
    for mode, rows in modes.items():
        if mode == "sync":
            continue
        times = [r[key] for r in rows]
        gaps = [r["gap_points"] for r in rows if r.get("gap_points") is not None]
        reached = [t for t in times if t is not None]
        if not reached or not gaps:
            continue
        some = "" if len(reached) == len(times) else f" ({len(reached)} of {len(times)} seeds)"
        out.append(
            f"{mode_name(mode, record)}: {pct} at a median {statistics.median(reached):.1f} s"
            + some
            + _sooner(sync, rows, target, horizon)
            + f", {statistics.median(gaps):+.2f} points from FedAvg after its "
            f"{_counts(rows)} updates ({min(gaps):+.2f} to {max(gaps):+.2f}), "
            f"{statistics.median(r['wasted'] for r in rows):.0f} updates wasted"
        )
    return out


def _runs(record: dict[str, Any], partition: str, mode: str) -> list[dict[str, Any]]:
    """The record's runs (one per seed) of ``mode`` on ``partition``."""
    return [r for r in record["runs"] if (r["partition"], r["mode"]) == (partition, mode)]


def dips(record: dict[str, Any], partition: str = "iid", floor: float = 0.84) -> list[str]:
    """Per FedBuff setting, how low its versions fell once they had first reached ``floor``
    (within half the horizon: the first wave of stale updates), median and range over the
    seeds: ``FedBuff, buffer 2, ...: down to 81.84 % (81.51-82.41)``; first, the phrase that
    says what is measured."""
    until = float(record["settings"]["horizon"]) / 2
    out = [f"once they had first reached {100 * floor:g} % (within the first {until:g} s"]
    for mode in record["summary"][partition]:
        if mode == "sync":
            continue
        found = (lowest_after(r["points"], floor, until) for r in _runs(record, partition, mode))
        lows = [x for x in found if x is not None]
        if lows:
            out.append(
                f"{mode_name(mode, record)}: down to {100 * statistics.median(lows):.2f} % "
                f"({100 * min(lows):.2f}-{100 * max(lows):.2f})"
            )
    return out


def none_sooner(record: dict[str, Any], default: str, partition: str = "iid") -> str:
    """``neither crossed 85 % sooner``: whether no FedBuff setting but ``default`` reached the
    first target sooner than ``default`` in the median over the seeds (``NOT SO: ...`` if one
    did)."""
    modes = record["summary"][partition]
    key = f"t{round(100 * float(record['settings']['targets'].split(',')[0]))}"
    horizon = float(record["settings"]["horizon"])

    def median(mode: str) -> float:
        return statistics.median(horizon if r[key] is None else r[key] for r in modes[mode])

    others = [m for m in modes if m not in ("sync", default)]
    phrase = f"{'neither' if len(others) <= 2 else 'none'} crossed {key[1:]} % sooner"
    return phrase if all(median(m) >= median(default) for m in others) else "NOT SO: " + phrase


def swings(record: dict[str, Any], partition: str, after: float) -> list[str]:
    """Per mode, how far its global models ranged from ``after`` virtual seconds to the
    horizon: ``FedBuff, buffer 2, ...: 74.32-85.10 %`` (the medians over the seeds of each
    seed's lowest and highest), first the phrase that says what is measured."""
    horizon = float(record["settings"]["horizon"])
    out = [f"from {after:g} s to {horizon:g} s"]
    for mode in record["summary"][partition]:
        lows, highs = [], []
        for run in _runs(record, partition, mode):
            accs = [p["accuracy"] for p in run["points"] if after <= p["t"] <= horizon]
            if accs:
                lows.append(min(accs))
                highs.append(max(accs))
        if lows:
            out.append(
                f"{mode_name(mode, record)}: {100 * statistics.median(lows):.2f}-"
                f"{100 * statistics.median(highs):.2f} %"
            )
    return out


def restarts(record: dict[str, Any], partition: str = "iid") -> list[str]:
    """Per FedBuff setting that starts trainings over (variants rP, rfP), how many did within
    the horizon, median and range over the seeds: ``FedBuff, ...: 94 (94-94) trainings``."""
    out = []
    for mode, rows in record["summary"][partition].items():
        counts = [r.get("restarted", 0) for r in rows]
        if mode == "sync" or not any(counts):
            continue
        out.append(
            f"{mode_name(mode, record)}: {statistics.median(counts):g} ({min(counts)}-"
            f"{max(counts)}) trainings started over"
        )
    return out
