"""The prose figures of docs/benchmarks.md's three fleet sections, from bench/fleet.py's records.

``modes_claims``, ``stale_changes_claims`` and ``scoring_claims`` are the phrases that quote
figures in "Round modes on simulated fleets", "Follow-up: damping the waves of stale updates"
and "Scoring on the side, and four repeats". Each reads ``Records``: a bench record
(bench/results/fleet.json, fleet_stale_changes.json, fleet_scoring.json,
fleet_scoring_more.json: its date, commit, settings and wall time) with its raw records under
bench/results/NAME/ (per-version accuracy, time and buffer in ``metrics.jsonl``;
``events.jsonl``; ``summary.json``; ``bench.json``), whose figures and tables
bench/fleet_figures.py recomputes. A phrase whose statement the records no longer support
comes out prefixed with ``NOT_SO``, so the doc check fails on it until the sentence is
rewritten. bench/doc_sections.py quotes them with the tables; tests/test_benchmark_figures.py
checks the doc has them:

    .venv/bin/python bench/doc_sections.py --render
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from doc_figures import lowest_after, span_of, times
from fleet_figures import (
    SPEEDUP_TARGET,
    acceptance_table,
    figures,
    label,
    megabytes,
    pct,
    read_run,
    repeats_summary,
    table,
    time_to,
    zero,
)

NOT_SO = "the records no longer say: "
BOARDS = {"rpi5": "Pi 5", "rpi4": "Pi 4", "rpi3bplus": "Pi 3B+", "rpi-zero2w": "Zero 2 W"}
WORDS = ["no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
ORDINALS = ["", "first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
TEST_IMAGES = 10_000  # Fashion-MNIST's test set: what the coordinator scores every model on


def board(profile: str) -> str:
    """``rpi3bplus-32`` (a fleet file's board profile) -> ``Pi 3B+``."""
    return BOARDS.get(profile.rsplit("-", 1)[0], profile)


def _unless(holds: bool, phrase: str) -> str:
    return phrase if holds else NOT_SO + phrase


def _words(values: list[int]) -> str:
    """[3, 3] -> 'three'; [3, 4] -> 'three or four'."""
    lo, hi = min(values), max(values)
    return WORDS[lo] if lo == hi else f"{WORDS[lo]} or {WORDS[hi]}"


def _repeats(ks: list[int]) -> str:
    """[0] -> 'repeat 0'; [1, 2, 3] -> 'repeats 1-3'."""
    return f"repeat {ks[0]}" if len(ks) == 1 else f"repeats {span_of(ks)}"


def _day(date: str) -> str:
    """'2026-12-06 18:17 UTC' -> '6 December 2026'."""
    d = datetime.strptime(date[:10], "%Y-%m-%d")
    return f"{d.day} {d:%B %Y}"


def _p1(v: dict[str, Any]) -> str:
    return f"{100 * v['accuracy']:.1f} %"


def _points(gap: float) -> str:
    """-2.95 -> '2.95 points below'."""
    return f"{abs(gap):.2f} points {'above' if gap >= 0 else 'below'}"


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


class Records:
    """A fleet bench record (bench/results/NAME.json) read with its raw records
    (bench/results/NAME/): every figure here is recomputed from the raw records."""

    def __init__(self, record: dict[str, Any], raw: Path) -> None:
        self.record, self.settings, self.raw = record, record["settings"], raw
        self.targets: list[float] = self.settings["targets"]
        self.result = figures(raw, self.targets)
        self.runs: list[dict[str, Any]] = self.result["runs"]
        self.files = {r["name"]: read_run(raw / r["name"]) for r in self.runs}
        self.events = {
            name: [json.loads(x) for x in (raw / name / "events.jsonl").read_text().splitlines()]
            for name in self.files
        }
        self.key = f"{100 * self.targets[0]:g}"  # "85": time_to's key of the first target
        self.target = f"{self.key} %"

    def repeat_numbers(self) -> list[int]:
        """The repeats (seeds) this record ran: ``--first-repeat`` onwards."""
        first = self.settings.get("first_repeat", 0)
        return list(range(first, first + self.settings["repeats"]))

    def cycles(self, name: str) -> list[float]:
        """The estimated cycle of board ``name`` (``Pi 5``) in every run of this record."""
        return [
            b["cycle_s_estimated"]
            for x in self.runs
            for p, b in x["by_profile"].items()
            if board(p) == name
        ]

    def tables(self) -> list[str]:
        return [*table(self.result, self.targets).split("\n\n"), acceptance_table(self.result)]

    def run(
        self, mode: str, partition: str = "iid", fleet: str = "mixed-pi", repeat: int = 0
    ) -> dict[str, Any]:
        (r,) = (
            r
            for r in self.runs
            if (r["mode"], r["partition"], r["fleet"], r["repeat"])
            == (mode, partition, fleet, repeat)
        )
        return r

    def acceptance(self, mode: str, partition: str = "iid", repeat: int = 0) -> dict[str, Any]:
        (a,) = (
            a
            for a in self.result["acceptance"]
            if (a["mode"], a["partition"], a["repeat"]) == (mode, partition, repeat)
        )
        return a

    def to(self, run: dict[str, Any], target: str | None = None) -> str:
        """The run's time to the target (the first by default): '88 s', or '> 180 s'."""
        return time_to(run["time_to"][target or self.key], run["budget_s"])

    def boards(self, run: dict[str, Any]) -> dict[str, str]:
        """Device id -> board name (``Pi 5``) of every board of ``run``'s fleet."""
        summary = self.files[run["name"]]["summary"]
        return {n: board(b["profile"]) for n, b in summary["boards"].items()}

    def versions(self, run: dict[str, Any]) -> list[dict[str, Any]]:
        """Every global model of ``run`` in order: version, t (s since the first training),
        accuracy, the boards that sent its updates and, for a buffered version, each
        update's board, base (1: trained from the initial weights) and staleness."""
        files = self.files[run["name"]]
        boards = self.boards(run)
        t0 = zero(files)
        return [
            {
                "version": m["round"],
                "t": m["time"] - t0,
                "accuracy": m["accuracy"],
                "boards": {boards[d] for d in m["participants"]},
                "updates": [
                    {"board": boards[u["device"]], "base": u["base"], "staleness": u["staleness"]}
                    for u in m.get("buffer", ())
                ],
            }
            for m in files["metrics"]
        ]

    def reached(self, run: dict[str, Any]) -> dict[str, Any]:
        """The first global model at or above the first target."""
        return next(v for v in self.versions(run) if v["accuracy"] >= self.targets[0])

    def offline(self, run: dict[str, Any]) -> list[tuple[str, float, float | None]]:
        """(board, went offline, came back or None) on the run's clock, in order."""
        files = self.files[run["name"]]
        shift = zero(files) - files["summary"]["measured"]["started_at"]  # events: since start
        boards = self.boards(run)
        out = []
        for i, e in enumerate(self.events[run["name"]]):
            if e["event"] == "offline":
                back = next(
                    (
                        x["t"] - shift
                        for x in self.events[run["name"]][i:]
                        if x["event"] == "online" and x["device"] == e["device"]
                    ),
                    None,
                )
                out.append((boards[e["device"]], e["t"] - shift, back))
        return out


def _first(v: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The updates of ``v`` that are ``name`` boards' first (trained from the initial weights)."""
    return [u for u in v["updates"] if u["board"] == name and u["base"] == 1]


def _first_at(versions: list[dict[str, Any]], mark: float) -> float | None:
    """Seconds to the first of ``versions`` at or above ``mark`` (None: none got there)."""
    return next((v["t"] for v in versions if v["accuracy"] >= mark), None)


def _stretch(vs: list[dict[str, Any]], holds: Callable[[dict[str, Any]], bool]) -> list[Any]:
    """The first run of consecutive versions that ``holds``."""
    i = next(i for i, v in enumerate(vs) if holds(v))
    j = next((j for j in range(i, len(vs)) if not holds(vs[j])), len(vs))
    return vs[i:j]


def _only_first(name: str) -> Callable[[dict[str, Any]], bool]:
    """Made only of ``name`` boards' first updates."""
    return lambda v: bool(v["updates"]) and len(_first(v, name)) == len(v["updates"])


def _holds_first(name: str) -> Callable[[dict[str, Any]], bool]:
    """Holds at least one of ``name`` boards' first updates."""
    return lambda v: bool(_first(v, name))


def _accuracies(vs: list[dict[str, Any]]) -> str:
    """'77.5 %', or '83.7, 82.2 and 80.7 %'."""
    xs = [f"{100 * v['accuracy']:.1f}" for v in vs]
    return f"{xs[0]} %" if len(xs) == 1 else f"{', '.join(xs[:-1])} and {xs[-1]} %"


def _numbers(vs: list[dict[str, Any]]) -> str:
    """'version 3', or 'versions 7-9'."""
    return (
        f"version {vs[0]['version']}"
        if len(vs) == 1
        else f"versions {span_of([v['version'] for v in vs])}"
    )


def _staleness(vs: list[dict[str, Any]], name: str) -> str:
    return span_of([u["staleness"] for v in vs for u in _first(v, name)])


def _pi3_dip(vs: list[dict[str, Any]]) -> float:
    """The lowest version made only of the Pi 3B+s' first updates (their first wave)."""
    return min(v["accuracy"] for v in _stretch(vs, _only_first("Pi 3B+")))


def modes_claims(main: Records, repeats: list[dict[str, Any]]) -> list[str]:
    """The prose of "Round modes on simulated fleets" (bench/results/fleet.json and
    bench/results/fleet/); ``repeats``: the acceptance rows of the later repeats of the rule
    before boards started over (bench/results/fleet_scoring*.json ...), which it quotes."""
    rec, s, T = main.record, main.settings, main.target
    x3 = f"{SPEEDUP_TARGET:g}x"
    out = [
        f"({_day(rec['date'])}, main at `{rec['commit']}`, {rec['bench_wall_s'] / 60:.1f} minutes)"
    ]
    steps = [
        b[0] - a[0]
        for f in main.files.values()
        for a, b in zip(f["bench"]["load_samples"], f["bench"]["load_samples"][1:])
    ]
    out.append(f"the load average sampled every {statistics.median(steps):.0f} s")
    out.append(f"or {s['round_timeout_s']:g} s passed")
    budget = s["budget_s"]
    out.append(
        f"{budget['mixed-pi']:g} s (mixed-pi) or {budget['homogeneous']:g} s (homogeneous) "
        "after that moment"
    )
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in main.runs:
        groups.setdefault((r["fleet"], r["partition"]), []).append(r)
    sync_n = all(
        next(r for r in g if r["mode"] == "sync")["accepted_updates"] == g[0]["same_updates"]["n"]
        for g in groups.values()
    )
    out.append(_unless(sync_n, "(synchronous FedAvg's, every time)"))

    # Costs, before their table
    (update,) = {megabytes(r["update_bytes_per_accepted_update"]) for r in main.runs}
    out.append(f"an update itself is {update}")
    summaries = [f["summary"] for f in main.files.values()]
    (cap,) = {x["estimate"]["max_utilisation"] for x in summaries}
    refused = any(x["estimate"]["oversubscribed"] for x in summaries)
    out.append(
        _unless(not refused, f"(the refusal rule: at most {100 * cap:.0f} %; no run was refused)")
    )

    # What the records show: the load and the mix of speeds
    medians = [r["load_average"]["median"] for r in main.runs]
    fedbuff_highest = all(
        min(r["load_average"]["median"] for r in g if r["mode"].startswith("fedbuff"))
        > max(r["load_average"]["median"] for r in g if not r["mode"].startswith("fedbuff"))
        for g in groups.values()
    )
    out.append(
        _unless(
            fedbuff_highest,
            f"stayed at {span_of(medians, '{:.1f}')} (median per run; the FedBuff runs highest",
        )
    )
    mixed_fb = [
        r for r in main.runs if r["fleet"] == "mixed-pi" and r["mode"].startswith("fedbuff")
    ]

    def trainings(name: str) -> str:
        per = [
            round(p["trainings_per_board"], 1)
            for r in mixed_fb
            for profile, p in r["by_profile"].items()
            if board(profile) == name
        ]
        return span_of(per, "{:g}")

    out.append(
        f"in the FedBuff runs on `mixed-pi` a Pi 5 started {trainings('Pi 5')} local trainings "
        f"and a Zero 2 W {trainings('Zero 2 W')}"
    )

    # mixed-pi, IID
    sync, five, two = main.run("sync"), main.run("fedbuff"), main.run("fedbuff2")
    a5, a2 = main.acceptance("fedbuff"), main.acceptance("fedbuff2")
    out.append(
        _unless(
            all(1 < a["speedup_to_85"] < SPEEDUP_TARGET for a in (a5, a2)),
            f"FedBuff is faster, not {x3} faster",
        )
    )
    rounds = main.versions(sync)
    k = next(i for i, v in enumerate(rounds) if v["accuracy"] >= main.targets[0]) + 1
    out.append(
        _unless(
            all("Zero 2 W" in v["boards"] for v in rounds[:k]),
            f"Synchronous FedAvg reached {T} in {main.to(sync)} ({WORDS[k]} rounds, each as "
            f"long as its slowest board, a Zero 2 W); FedBuff with the default buffer of "
            f"{s['buffer_size']} in {main.to(five)} ({a5['speedup_to_85']:.2f}x sooner) and "
            f"with a buffer of 2 in {main.to(two)} ({a2['speedup_to_85']:.2f}x)",
        )
    )
    hi = f"{100 * main.targets[1]:g}"
    out.append(
        _unless(
            all(
                (r["time_to"][hi] is None) == (r["mode"] in ("sync", "semi"))
                for r in groups[("mixed-pi", "iid")]
            ),
            f"Only FedBuff reached {hi} % within the budget ({main.to(five, hi)} and "
            f"{main.to(two, hi)})",
        )
    )
    out.append(
        _unless(
            min(five["accuracy_at_budget"], two["accuracy_at_budget"]) > sync["accuracy_at_budget"],
            f"both ended above FedAvg ({pct(five['accuracy_at_budget'])} and "
            f"{pct(two['accuracy_at_budget'])} against {pct(sync['accuracy_at_budget'])} at "
            f"{sync['budget_s']:g} s)",
        )
    )
    out.append(
        f"After the same {two['same_updates']['n']} accepted updates, the buffer of 2 was "
        f"{_points(a2['same_updates_gap_points'])} FedAvg ({_met(a2['same_updates_met'])}); "
        f"the buffer of 5, {_points(a5['same_updates_gap_points'])} "
        f"({_met(a5['same_updates_met'])})"
    )

    # Why not 3x
    third = sync["time_to"][main.key] / SPEEDUP_TARGET
    zeros = min(
        v["t"] for r in (sync, five, two) for v in main.versions(r) if "Zero 2 W" in v["boards"]
    )
    out.append(
        _unless(
            third < rounds[0]["t"] and third < zeros,
            f"*Why not {x3}.* {WORDS[int(SPEEDUP_TARGET)].capitalize()} times sooner than "
            f"{main.to(sync)} is within one synchronous round, before any Zero 2 W has "
            "delivered an update",
        )
    )
    first = min(main.versions(r)[0]["t"] for r in (five, two))
    out.append(
        _unless(
            first < third, f"FedBuff's versions are there by then (the first after {first:.0f} s)"
        )
    )
    vs = main.versions(two)
    pi4, pi3 = _stretch(vs, _only_first("Pi 4")), _stretch(vs, _only_first("Pi 3B+"))
    early = vs[: vs.index(pi4[0])]
    (size,) = {len(v["updates"]) for v in early}
    (fast,) = {u["board"] for v in early for u in v["updates"]}
    top = vs[vs.index(pi3[0]) - 1]
    out.append(
        f"With a buffer of 2: {_p1(early[-1])} at version {early[-1]['version']} "
        f"({WORDS[size]} {fast} updates each), {_accuracies(pi4)} at {_numbers(pi4)} (the Pi 4s' "
        f"first updates, trained from the initial weights, {_staleness(pi4, 'Pi 4')} versions "
        f"behind), {_p1(top)} at version {top['version']}, then {_accuracies(pi3)} at "
        f"{_numbers(pi3)}, made only of the Pi 3B+s' first updates (from the initial weights, "
        f"{_staleness(pi3, 'Pi 3B+')} versions behind)"
    )
    out.append(
        f"{T} at version {main.reached(two)['version']} "
        f"(`bench/results/{main.raw.name}/{two['name']}/metrics.jsonl`"
    )
    latest = [a for a in repeats if a["mode"] == "fedbuff2-model"]
    out.append(
        f"without starting over: {statistics.median(a['speedup_to_85'] for a in latest):.2f}x in the "
        f"median of {WORDS[len(latest)]} paired runs, met in "
        f"{sum(a['speedup_met'] for a in latest)} of {len(latest)}"
    )

    # mixed-pi, Dirichlet
    d = "dirichlet:0.5"
    dsync, dsemi, d5, d2 = (main.run(m, d) for m in ("sync", "semi", "fedbuff", "fedbuff2"))
    g5, g2 = (main.acceptance(m, d)["same_updates_gap_points"] for m in ("fedbuff", "fedbuff2"))
    out.append(_unless(max(g5, g2) < 0, "FedBuff is not better per update"))
    out.append(
        _unless(
            dsync["time_to"][main.key] is None,
            f"FedAvg did not reach {T} in {dsync['budget_s']:g} s "
            f"({pct(dsync['accuracy_at_budget'])}); semi-synchronous did in {main.to(dsemi)}, "
            f"FedBuff in {main.to(d5)} and {main.to(d2)}",
        )
    )
    out.append(
        _unless(
            dsync["accepted_updates"] == d2["same_updates"]["n"],
            f"After FedAvg's {d2['same_updates']['n']} updates FedBuff was {-g5:.2f} and "
            f"{-g2:.2f} points behind",
        )
    )

    # homogeneous
    hom = groups[("homogeneous", "iid")]
    h2, h5 = main.run("fedbuff2", fleet="homogeneous"), main.run("fedbuff", fleet="homogeneous")
    hv = main.versions(h2)
    j = next((i for i in range(len(hv) - 1) if hv[i + 1]["accuracy"] >= hv[i]["accuracy"]), 0)
    out.append(
        f"On IID data the buffer of 2 fell from {_p1(hv[0])} (version {hv[0]['version']}) to "
        f"{_p1(hv[j])} (version {hv[j]['version']}) and ended at "
        f"{pct(h2['accuracy_at_budget'])}; the buffer of 5 ended at "
        f"{pct(h5['accuracy_at_budget'])}"
    )
    hsync = main.run("sync", fleet="homogeneous")
    out.append(
        _unless(
            max(hom, key=lambda r: r["accuracy_at_budget"]) is hsync,
            f"(FedAvg was best there: {pct(hsync['accuracy_at_budget'])} at "
            f"{hsync['budget_s']:g} s on IID)",
        )
    )

    # Costs
    twos = [r for r in main.runs if r["mode"] == "fedbuff2"]
    fives = [r for r in main.runs if r["mode"] == "fedbuff"]
    syncs = [r for r in main.runs if r["mode"] == "sync"]
    (boards,) = {len(f["summary"]["boards"]) for f in main.files.values()}

    def mb(rs: list[dict[str, Any]]) -> str:
        return span_of([r["link_bytes_per_accepted_update"] / 1e6 for r in rs], "{:.2f}")

    out.append(
        f"{update} x {boards} per version, so with a buffer of 2 the links carried {mb(twos)} MB "
        f"per accepted update against {mb(syncs)} MB synchronous"
    )
    rejected = [
        (r, x)
        for r in twos
        for m in main.files[r["name"]]["metrics"]
        for x in m.get("rejections", ())
    ]
    (bound,) = {re.findall(r"at most (\d+)", x["reason"])[0] for _, x in rejected}
    on_mixed = [
        main.files[r["name"]]["summary"]["boards"][x["device"]]["profile"]
        for r, x in rejected
        if r["fleet"] == "mixed-pi"
    ]
    zero_ws = sum(board(p) == "Zero 2 W" for p in on_mixed)
    out.append(
        _unless(
            len(rejected) == sum(r["wasted_updates"] for r in twos)
            and all(x["reason"].startswith("stale update") for _, x in rejected),
            f"A buffer of 2 also wasted {span_of([r['wasted_updates'] for r in twos])} updates, "
            f"every one more than {bound} versions behind when it arrived (on mixed-pi, "
            f"{zero_ws} of {len(on_mixed)} were the Zero 2 Ws')",
        )
    )
    out.append(f"the buffer of 5 wasted {span_of([r['wasted_updates'] for r in fives])}")
    fedbuffs = [r for r in main.runs if r["mode"].startswith("fedbuff")]
    out.append(
        f"used {span_of([r['coordinator_process_cpu_s'] for r in fedbuffs])} s of CPU in FedBuff "
        f"runs against {span_of([r['coordinator_process_cpu_s'] for r in syncs])} s synchronous"
    )

    # Semi-synchronous
    semis = [r for r in main.runs if r["mode"] == "semi"]
    mixed = groups[("mixed-pi", "iid")] + groups[("mixed-pi", d)]

    def accepted(mode: str) -> list[float]:
        return [r["accepted_updates"] for r in mixed if r["mode"].startswith(mode)]

    semi = main.run("semi")
    dfirst = min(groups[("mixed-pi", d)], key=lambda r: r["time_to"][main.key] or 1e9)
    out.append(
        _unless(
            max(accepted("sync")) < min(accepted("semi"))
            and max(accepted("semi")) < min(accepted("fedbuff")),
            f"was between the two on mixed-pi in accepted updates ({span_of(accepted('semi'))}, "
            f"against {span_of(accepted('sync'))} synchronous and {span_of(accepted('fedbuff'))} "
            "FedBuff)",
        )
    )
    out.append(
        _unless(
            semi["time_to"][main.key] > sync["time_to"][main.key] and dfirst is dsemi,
            f"reached {T} after FedAvg on IID ({main.to(semi)}) but first on Dirichlet "
            f"({main.to(dsemi)})",
        )
    )
    out.append(
        _unless(
            all(
                min(g, key=lambda r: r["link_bytes_per_accepted_update"])["mode"] == "semi"
                for g in groups.values()
            ),
            "carried the fewest link bytes per accepted update in every configuration "
            f"({mb(semis)} MB)",
        )
    )
    out.append(f"({len(main.runs)} runs in {rec['bench_wall_s'] / 60:.0f} minutes)")
    return out


def stale_changes_claims(follow: Records, main: Records) -> list[str]:
    """The prose of "Follow-up: damping the waves of stale updates"
    (bench/results/fleet_stale_changes.json and its raw records), against the main run's."""
    T, x3 = follow.target, f"{SPEEDUP_TARGET:g}x"
    out = [f"({follow.record['bench_wall_s'] / 60:.1f} minutes;"]
    hm, ha, hs = (
        follow.run(m, fleet="homogeneous") for m in ("fedbuff2-model", "fedbuff2-a1", "sync")
    )
    paper = main.run("fedbuff2", fleet="homogeneous")
    out.append(
        f"Where the buffer of 2 with the FedBuff paper's rule ended at "
        f"{pct(paper['accuracy_at_budget'])} (main run), weighting stale changes `1/(1+s)` "
        f"ended at {pct(ha['accuracy_at_budget'])} and stepping toward the trained model at "
        f"{pct(hm['accuracy_at_budget'])}, against {pct(hs['accuracy_at_budget'])} for "
        f"synchronous FedAvg in the same run; toward-model reached {T} in {follow.to(hm)} "
        f"(FedAvg {follow.to(hs)})"
    )
    mm, ma, ms = (follow.run(m) for m in ("fedbuff2-model", "fedbuff2-a1", "sync"))
    am, aa = follow.acceptance("fedbuff2-model"), follow.acceptance("fedbuff2-a1")
    before = main.acceptance("fedbuff2")
    out.append(
        _unless(
            all(before["speedup_to_85"] < a["speedup_to_85"] < SPEEDUP_TARGET for a in (am, aa)),
            f"Mixed fleet: closer, still short of {x3}",
        )
    )
    out.append(
        f"Toward the trained model: {T} in {follow.to(mm)} against {follow.to(ms)} for FedAvg "
        f"in this run, {am['speedup_to_85']:.2f}x; {pct(mm['accuracy_at_budget'])} at "
        f"{mm['budget_s']:g} s against {pct(ms['accuracy_at_budget'])}; after the same "
        f"{mm['same_updates']['n']} updates {_points(am['same_updates_gap_points'])} FedAvg "
        f"({_met(am['same_updates_met'])}). With `1/(1+s)`: {aa['speedup_to_85']:.2f}x, "
        f"{aa['same_updates_gap_points']:+.2f} points"
    )
    out.append(
        f"toward the trained model down to {pct(_pi3_dip(follow.versions(mm)))} "
        f"({pct(_pi3_dip(main.versions(main.run('fedbuff2'))))} in the main run), with "
        f"`1/(1+s)` only to {pct(_pi3_dip(follow.versions(ma)))}"
    )
    v1 = follow.versions(mm)[0]
    out.append(
        _unless(
            all(u["base"] == 1 for u in v1["updates"]),
            f"a model about as good as version 1 ({WORDS[len(v1['updates'])]} such updates "
            f"averaged: {pct(v1['accuracy'])})",
        )
    )
    old = main.run("sync")
    start = [
        r.files[x["name"]]["summary"]["measured"]["started_at"]
        for r, x in ((follow, ms), (main, old))
    ]
    out.append(
        f"Synchronous FedAvg took {follow.to(ms)} to {T} here and {main.to(old)} in the main run "
        f"(same settings and seeds, {abs(start[0] - start[1]) / 60:.0f} minutes apart)"
    )
    speedups = sorted(a["speedup_to_85"] for a in (before, am, aa))
    out.append(
        _unless(
            max(speedups) < SPEEDUP_TARGET,
            f"so {speedups[0]:.2f}x, {speedups[1]:.2f}x and {speedups[2]:.2f}x are not "
            f"distinguishable from each other by these runs; none reaches {x3}",
        )
    )
    return out


def scoring_claims(scoring: list[Records], main: Records, follow: Records) -> list[str]:
    """The prose of "Scoring on the side, and four repeats" (bench/results/fleet_scoring.json,
    fleet_scoring_more.json and their raw records), against the runs before scoring moved to
    a worker thread (the main run and the follow-up)."""
    T, x3, goal = scoring[0].target, f"{SPEEDUP_TARGET:g}x", scoring[0].targets[0]
    inline = [main, follow]
    scoring_s = [
        TEST_IMAGES * f["summary"]["calibration"]["eval_sample_s"]
        for r in inline
        for f in r.files.values()
    ]
    out = [f"{span_of(scoring_s, '{:.2f}')} s per version on one core of this machine"]
    every = [
        x["budget_s"] / x["global_models"]
        for r in inline
        for x in r.runs
        if x["mode"].startswith("fedbuff2")
    ]
    out.append(f"one every {span_of(every, '{:.1f}')} s with a buffer of 2")
    (budget,) = {r.settings["budget_s"]["mixed-pi"] for r in scoring}
    out.append(f"a {budget:g} s budget")
    for r in scoring:
        ks = r.repeat_numbers()
        out.append(
            f"(repeats {' and '.join(map(str, ks))}, {r.record['bench_wall_s'] / 60:.1f} minutes)"
        )
    (commit,) = {r.record["commit"] for r in scoring}
    out.append(f"(main at `{commit}`;")
    for r in scoring:
        out += r.tables()

    rows = [a for r in scoring for a in r.result["acceptance"]]
    model = [a for a in rows if a["mode"] == "fedbuff2-model"]
    out.append(
        _unless(
            statistics.median(a["speedup_to_85"] for a in model) >= SPEEDUP_TARGET
            and not all(a["speedup_met"] for a in model),
            f"**Issue 12's {x3} target: met in the median, not in every run.**",
        )
    )
    out += [repeats_summary(rows, "fedbuff2-model"), repeats_summary(rows, "fedbuff2-a1-model")]
    syncs = [x for r in scoring for x in r.runs if x["mode"] == "sync"]
    ks = {
        [v["version"] for v in r.versions(x)].index(r.reached(x)["version"]) + 1
        for r in scoring
        for x in r.runs
        if x["mode"] == "sync"
    }
    (k,) = ks
    out.append(
        f"Synchronous FedAvg took {span_of([x['time_to'][scoring[0].key] for x in syncs])} s to "
        f"{T} (its {ORDINALS[k]} round)"
    )

    # Where the time goes: the toward-model runs, repeat by repeat
    waves = []
    for r in scoring:
        for x in r.runs:
            if x["mode"] != "fedbuff2-model":
                continue
            vs = r.versions(x)
            wave = _stretch(vs, _holds_first("Pi 3B+"))
            i0 = vs.index(wave[0])
            low = min(wave, key=lambda v: v["accuracy"])
            il = vs.index(low)
            reached = r.reached(x)
            waves.append(
                {
                    "repeat": x["repeat"],
                    "peak": max(vs[:i0], key=lambda v: v["accuracy"]),
                    "fast": {u["board"] for v in vs[:i0] for u in v["updates"]},
                    "staleness": [u["staleness"] for v in wave for u in _first(v, "Pi 3B+")],
                    "spread": wave[-1]["t"] - wave[0]["t"],
                    "fall": il - i0 + 1,
                    "low": low,
                    "back": next(v for v in vs[il + 1 :] if v["accuracy"] >= goal),
                    "start": wave[0]["t"],
                    "reached": reached,
                    "before": reached["t"] < wave[0]["t"],
                    "speedup": r.acceptance(x["mode"], repeat=x["repeat"])["speedup_to_85"],
                    "offline": r.offline(x)[:2],
                    "seed": r.files[x["name"]]["summary"]["seed"],
                }
            )
    waves.sort(key=lambda w: w["repeat"])
    (fast,) = {frozenset(w["fast"]) for w in waves}
    order = [b for b in BOARDS.values() if b in fast]
    out.append(
        f"climbed to {span_of([100 * w['peak']['accuracy'] for w in waves], '{:.1f}')} % in "
        f"{span_of([w['peak']['t'] for w in waves])} s from the "
        + " and ".join(f"{b}s'" for b in order)
        + " updates; then the Pi 3B+s' first updates (trained from the initial weights, "
        f"{span_of([s for w in waves for s in w['staleness']])} versions stale) were aggregated "
        f"within {max(w['spread'] for w in waves):.1f} s of each other and pulled "
        f"{_words([w['fall'] for w in waves])} versions in a row down to "
        f"{span_of([100 * w['low']['accuracy'] for w in waves], '{:.1f}')} %; the fast boards "
        f"took it back above {T} by {span_of([w['back']['t'] for w in waves])} s"
    )
    early = [w for w in waves if w["before"]]
    late = [w for w in waves if not w["before"]]
    out.append(
        f"{_repeats([w['repeat'] for w in early]).capitalize()} crossed {T} "
        + ", ".join(
            f"({pct(w['reached']['accuracy'])}) at {w['reached']['t']:.1f} s" for w in early
        )
        + f", just before that wave ({', '.join(times(w['speedup']) for w in early)}); "
        f"{_repeats([w['repeat'] for w in late])} crossed after it "
        f"({span_of([w['speedup'] for w in late], '{:.2f}')}x)"
    )
    gone = [o for w in waves for o in w["offline"]]
    (seed,) = {w["seed"] for w in waves}
    out.append(
        _unless(
            all(
                sorted(o[0] for o in w["offline"]) == ["Pi 4", "Pi 5"]
                and all(
                    o[1] < w["start"] and (o[2] is None or o[2] > w["back"]["t"])
                    for o in w["offline"]
                )
                for w in waves
            ),
            f"In every repeat the fleet's dropouts (its seed stays {seed}) also took a Pi 4 and a "
            f"Pi 5 offline at {span_of([o[1] for o in gone])} s, just before that wave, and kept "
            "them offline through the recovery",
        )
    )

    # Scoring on the side: the versions' pace
    runs = [x for r in scoring for x in r.runs if x["mode"] == "fedbuff2-model"]
    rates = [x["accepted_updates"] / x["budget_s"] for x in runs]
    then = follow.run("fedbuff2-model")
    starts = [
        r.versions(x)[0]["t"] for r in scoring for x in r.runs if x["mode"] == "fedbuff2-model"
    ]
    out.append(
        _unless(
            min(rates) > then["accepted_updates"] / then["budget_s"],
            f"the toward-model runs accepted {span_of([x['accepted_updates'] for x in runs])} "
            f"updates in {budget:g} s, {span_of(rates, '{:.2f}')} a second, against "
            f"{then['accepted_updates']} in {then['budget_s']:g} s "
            f"({then['accepted_updates'] / then['budget_s']:.2f}) in the follow-up above, and "
            f"made their first version {span_of(starts, '{:.1f}')} s after the first training "
            f"against {follow.versions(then)[0]['t']:.1f} s",
        )
    )

    # What would make it robust: the staleness exponent of 1 on the same wave
    damped = [(r, x) for r in scoring for x in r.runs if x["mode"] == "fedbuff2-a1-model"]
    r0, x0 = next((r, x) for r, x in damped if x["repeat"] == 0)
    vs0 = r0.versions(x0)
    dip = min(v["accuracy"] for v in _stretch(vs0, _holds_first("Pi 3B+")))
    out.append(
        _unless(
            dip > next(w for w in waves if w["repeat"] == 0)["low"]["accuracy"],
            f"damps the dip (to {100 * dip:.1f} % in repeat 0)",
        )
    )
    pi4 = []
    for r, x in damped:
        vs = r.versions(x)
        wave = _stretch(vs, _holds_first("Pi 3B+"))
        pi4 += [
            u["staleness"]
            for v in vs[: vs.index(wave[0])]
            for u in v["updates"]
            if u["board"] == "Pi 4"
        ]
    out.append(f"the Pi 4s' {span_of(pi4)} versions stale updates")
    return out


def trained_ahead_claims(ahead: Records, idle: Records, shipped: list[Records]) -> list[str]:
    """The prose of "Tried and reverted: boards that train ahead" (bench/results/
    fleet_ahead.json: the coordinator of commit a212e15, where a board with its share of the
    open buffer trained ahead for the next version; bench/results/fleet_idle.json: the same
    seeds with the rule as shipped, run right after), and both records' tables; the sentence
    over every paired run of the shipped rule (``shipped``: the scoring records, and these)."""
    out: list[str] = []
    for r in (ahead, idle):
        out.append(
            f"(repeats {', '.join(map(str, r.repeat_numbers()))}; main at `{r.record['commit']}`, "
            f"{r.record['bench_wall_s'] / 60:.1f} minutes)"
        )
        out += r.tables()
        fedbuff = [x for x in r.runs if x["mode"] == "fedbuff2-model"]
        sync = [x for x in r.runs if x["mode"] == "sync"]
        out.append(
            f"FedBuff reached {r.target} in {', '.join(r.to(x) for x in fedbuff)} and "
            f"synchronous FedAvg in {', '.join(r.to(x) for x in sync)}"
        )
        out.append(
            f"{span_of(x['global_models'] for x in fedbuff)} versions and "
            f"{span_of(x['accepted_updates'] for x in fedbuff)} accepted updates"
        )
        pi5 = [
            u
            for x in fedbuff
            for v in r.versions(x)
            for u in v["updates"]
            if u["board"] == "Pi 5" and v["version"] > 1
        ]
        stale = sum(u["staleness"] >= 1 for u in pi5)
        out.append(f"{stale} of the Pi 5s' {len(pi5)} updates after the first version")
        out.append(f"a Pi 5's estimated cycle: {span_of(r.cycles('Pi 5'), '{:.1f}')} s")
    before = [c for r in shipped for c in r.cycles("Pi 5")]
    out.append(f'a Pi 5\'s estimated cycle: {span_of(before, "{:.1f}")} s in "Scoring on the side"')
    rows = [a for r in [*shipped, idle] for a in r.result["acceptance"]]
    out.append(repeats_summary(rows, "fedbuff2-model"))
    return out


def _drawn(rec: Records) -> str:
    """``(repeats 0, 1, fleet seeds 1, 2; main at `abc1234`, 18.0 minutes)``: a
    ``--vary-fleet-seed`` record's repeats, the fleet seeds its runs drew, commit and wall time."""
    fleet_seeds = sorted({f["summary"]["seed"] for f in rec.files.values()})
    return (
        f"(repeats {', '.join(map(str, rec.repeat_numbers()))}, fleet seeds "
        f"{', '.join(map(str, fleet_seeds))}; main at `{rec.record['commit']}`, "
        f"{rec.record['bench_wall_s'] / 60:.1f} minutes)"
    )


def sync_times(records: Records, runs: list[dict[str, Any]]) -> list[float]:
    """Each run's seconds to the first target (runs that never reached it left out)."""
    return [t for x in runs if (t := x["time_to"][records.key]) is not None]


def fleet_seeds_claims(seeds: Records, shipped: list[Records]) -> list[str]:
    """The prose of "Every repeat its own draw of the fleet" (bench/results/fleet_seeds.json:
    ``--vary-fleet-seed``, each repeat with its own availability sessions and dropouts), its
    tables, and the sentence over every paired run of the shipped rule (``shipped``: the
    earlier records with the fleet's seed 1 in every repeat, and this one)."""
    out = [_drawn(seeds), *seeds.tables()]
    for partition in seeds.settings["partitions"]:
        fedbuff, sync = (
            [x for x in seeds.runs if x["mode"] == m and x["partition"] == partition]
            for m in ("fedbuff2-model", "sync")
        )
        out.append(
            f"FedBuff reached {seeds.target} in {', '.join(seeds.to(x) for x in fedbuff)} and "
            f"synchronous FedAvg in {', '.join(seeds.to(x) for x in sync)}"
        )
        gone = [
            WORDS[sum(b in ("Pi 5", "Pi 4") and t < 45 for b, t, _ in seeds.offline(x))]
            for x in fedbuff
        ]
        out.append(f"Pi 5 or Pi 4 boards offline within the first 45 s: {', '.join(gone)}")
        out.append(repeats_summary(seeds.result["acceptance"], "fedbuff2-model", partition))
        out.append(f"synchronous FedAvg took {span_of(sync_times(seeds, sync))} s")
        waves, late = [], []
        for x in fedbuff:
            wave = _stretch(seeds.versions(x), _only_first("Pi 3B+"))[0]["t"]
            waves.append(wave)
            if seeds.reached(x)["t"] >= wave:
                late.append(x)
        out.append(
            f"{WORDS[len(fedbuff) - len(late)]} of the {WORDS[len(fedbuff)]} crossed "
            f"{seeds.target} before the Pi 3B+s' first wave ({span_of(waves)} s after the "
            f"first training), {WORDS[len(late)]} after it"
        )
        if late:
            speedups = [
                f"{seeds.acceptance('fedbuff2-model', partition, x['repeat'])['speedup_to_85']:.2f}x"
                for x in late
            ]
            out.append(
                f"crossed at {span_of(seeds.reached(x)['t'] for x in late)} s, "
                f"{' and '.join(speedups)} sooner than FedAvg"
            )
    out.append(f"a {seeds.settings['budget_s']['mixed-pi']:g} s budget")
    rows = [a for r in [*shipped, seeds] for a in r.result["acceptance"]]
    out.append(repeats_summary(rows, "fedbuff2-model"))
    return out


def swings(records: Records, run: dict[str, Any], after_s: float = 60.0) -> str:
    """``70.39-87.59 %``: the lowest and highest global model of ``run`` from ``after_s``
    seconds on (how far consecutive versions swing once the job is under way)."""
    accs = [v["accuracy"] for v in records.versions(run) if v["t"] >= after_s]
    return f"{100 * min(accs):.2f}-{100 * max(accs):.2f} %"


def seeds_dirichlet_claims(rec: Records, main: Records) -> list[str]:
    """The Dirichlet half of "Every repeat its own draw of the fleet"
    (bench/results/fleet_seeds_dirichlet.json): its tables, the times, the swings of the
    versions, and the acceptance over its paired runs; why its budget is longer (``main``:
    bench/results/fleet.json, where synchronous FedAvg did not reach the target)."""
    fedbuff, sync = ([x for x in rec.runs if x["mode"] == m] for m in ("fedbuff2-model", "sync"))
    before = main.run("sync", "dirichlet:0.5")
    return [
        f"a {rec.settings['budget_s']['mixed-pi']:g} s budget",
        _unless(
            before["time_to"][main.key] is None,
            f"needed more than {before['budget_s']:g} s to reach {main.target}",
        ),
        _drawn(rec),
        *rec.tables(),
        f"FedBuff reached {rec.target} in {', '.join(rec.to(x) for x in fedbuff)} and "
        f"synchronous FedAvg in {', '.join(rec.to(x) for x in sync)}",
        "from the first minute on, FedBuff's versions ranged over "
        + " and ".join(swings(rec, x) for x in fedbuff)
        + ", synchronous FedAvg's rounds over "
        + " and ".join(swings(rec, x) for x in sync),
        repeats_summary(rec.result["acceptance"], "fedbuff2-model", "dirichlet:0.5"),
    ]


START_OVER, FINISH = "fedbuff2-model-so0.5", "fedbuff2-model-so0"  # started over / not
SLOW_BOARDS = ("Pi 3B+", "Zero 2 W")
FLOOR, UNTIL = 0.84, 45.0  # the wave: how low the versions fell once at FLOOR, up to UNTIL s


def _slow_from_initial(vs: list[dict[str, Any]]) -> int:
    """Updates of the Pi 3B+ and Zero 2 W boards trained from the initial weights (version 1)."""
    return sum(len(_first(v, name)) for v in vs for name in SLOW_BOARDS)


def _by_mode(rec: Records) -> dict[str, list[dict[str, Any]]]:
    """The record's runs of synchronous FedAvg and of FedBuff with and without starting over."""
    return {m: [x for x in rec.runs if x["mode"] == m] for m in ("sync", FINISH, START_OVER)}


def start_over_claims(rec: Records, earlier: list[Records]) -> list[str]:
    """The prose of "Starting over from the first trained version"
    (bench/results/fleet_start_over.json: synchronous FedAvg, FedBuff with boards that finish
    their first training and FedBuff with boards that start it over, ``--vary-fleet-seed``),
    its tables, and the acceptance over every paired run of each rule (``earlier``: the
    records of the rule without starting over, fleet_seeds and those before it)."""
    runs = _by_mode(rec)
    out = [_drawn(rec), *rec.tables()]
    for m in (START_OVER, FINISH, "sync"):
        out.append(f"{label(m)}: {', '.join(rec.to(x) for x in runs[m])}")
    out.append(f"once one had reached {100 * FLOOR:g} %, up to {UNTIL:g} s")
    for m in (START_OVER, FINISH):
        out.append(repeats_summary(rec.result["acceptance"], m))
        lows = [pct(lowest_after(rec.versions(x), FLOOR, UNTIL)) for x in runs[m]]
        out.append(f"{label(m)}: {', '.join(lows)}")
        firsts = [str(_slow_from_initial(rec.versions(x))) for x in runs[m]]
        out.append(f"{label(m)}: {', '.join(firsts)} updates")
    worst = min(
        runs[START_OVER],
        key=lambda x: rec.acceptance(START_OVER, repeat=x["repeat"])["speedup_to_85"],
    )
    for m in (START_OVER, FINISH):
        x = rec.run(m, repeat=worst["repeat"])
        at = _first_at(rec.versions(x), FLOOR)
        out.append(
            f"{label(m)}: {100 * FLOOR:g} % at {at:.0f} s, {rec.target} at "
            f"{rec.reached(x)['t']:.0f} s"
        )
    seed = rec.files[worst["name"]]["summary"]["seed"]
    sync = rec.run("sync", repeat=worst["repeat"])
    out.append(f"In repeat {worst['repeat']} (fleet seed {seed})")
    out.append(f"synchronous FedAvg took {rec.to(sync)} there")
    before = [
        {**a, "mode": FINISH}
        for r in earlier
        for a in r.result["acceptance"]
        if a["mode"] == "fedbuff2-model" and a["partition"] == "iid"
    ]
    out.append(repeats_summary([*before, *rec.result["acceptance"]], FINISH))
    return out


def start_over_dirichlet_claims(rec: Records) -> list[str]:
    """The non-IID half of "Starting over from the first trained version"
    (bench/results/fleet_start_over_dirichlet.json): its tables, the times to the target, the
    swing of the versions from the first minute on and the acceptance of each rule."""
    d = "dirichlet:0.5"
    runs = _by_mode(rec)
    out = [f"a {rec.settings['budget_s']['mixed-pi']:g} s budget", _drawn(rec), *rec.tables()]
    for m in (START_OVER, FINISH, "sync"):
        out.append(f"{label(m)}: {', '.join(rec.to(x) for x in runs[m])}")
        out.append(f"{label(m)}: {' and '.join(swings(rec, x) for x in runs[m])}")
    for m in (START_OVER, FINISH):
        out.append(repeats_summary(rec.result["acceptance"], m, d))
        firsts = [str(_slow_from_initial(rec.versions(x))) for x in runs[m]]
        out.append(f"{label(m)}: {', '.join(firsts)} updates")
    return out


FAST_BOARDS = ("Pi 5", "Pi 4")


def _senders(rec: Records, run: dict[str, Any]) -> list[str]:
    """The board (device id) of every accepted update of ``run``, in the order they were
    folded (a synchronous round's in the order the round lists them)."""
    return [
        d
        for m in rec.files[run["name"]]["metrics"]
        for d in ([u["device"] for u in m["buffer"]] if "buffer" in m else m["participants"])
    ]


def whose_updates_claims(recs: list[Records], partition: str = "dirichlet:0.5") -> list[str]:
    """Why FedBuff is behind synchronous FedAvg after the same updates on non-IID data: whose
    updates they are. Over every run of ``recs`` on ``partition``: the first N accepted updates
    (N: synchronous FedAvg's in the same repeat) came from how many boards, how many of them
    from the fast boards (Pi 5 and Pi 4), per mode family (synchronous FedAvg, FedBuff)."""
    rows: dict[str, list[tuple[int, int, int]]] = {"sync": [], "fedbuff": []}
    fleet: set[tuple[int, int]] = set()
    for rec in recs:
        for x in rec.runs:
            if x["partition"] != partition:
                continue
            n = x["same_updates"]["n"]
            boards = rec.boards(x)
            first = _senders(rec, x)[:n]
            fast = sum(boards[d] in FAST_BOARDS for d in first)
            rows["sync" if x["mode"] == "sync" else "fedbuff"].append((n, len(set(first)), fast))
            fleet.add((len(boards), sum(p in FAST_BOARDS for p in boards.values())))
    ((total, fast_boards),) = fleet
    fb, sync = rows["fedbuff"], rows["sync"]
    return [
        f"In {len(fb)} FedBuff runs the first {span_of(r[0] for r in fb)} updates folded came "
        f"from {span_of(r[1] for r in fb)} of the {total} boards, "
        f"{span_of(r[2] for r in fb)} of them from the {WORDS[fast_boards]} "
        f"{' and '.join(FAST_BOARDS)} boards",
        f"synchronous FedAvg's {span_of(r[0] for r in sync)} (in {len(sync)} runs) came from "
        f"{span_of(r[1] for r in sync)} boards, {span_of(r[2] for r in sync)} from the fast ones",
    ]


def start_over_more_claims(more: Records, first: Records) -> list[str]:
    """The prose of "Eight repeats with a buffer of 2" (bench/results/fleet_start_over_more.json:
    synchronous FedAvg and FedBuff with a buffer of 2 and the other defaults, repeats after ``first``'s,
    bench/results/fleet_start_over.json): its tables, times, the wave, and the acceptance over
    its runs and over both records' runs."""
    runs = {m: [x for x in more.runs if x["mode"] == m] for m in ("sync", START_OVER)}
    out = [_drawn(more), *more.tables()]
    for m in (START_OVER, "sync"):
        out.append(f"{label(m)}: {', '.join(more.to(x) for x in runs[m])}")
    lows = [pct(lowest_after(more.versions(x), FLOOR, UNTIL)) for x in runs[START_OVER]]
    out.append(f"once one had reached {100 * FLOOR:g} %, up to {UNTIL:g} s: {', '.join(lows)}")
    out.append(repeats_summary(more.result["acceptance"], START_OVER))
    both = [*first.result["acceptance"], *more.result["acceptance"]]
    out.append(repeats_summary(both, START_OVER))
    for name in ("Pi 5", "Pi 4", "Zero 2 W"):
        out.append(
            f"a {name} training took {_median_training(more, name):.1f} s against "
            f"{_median_training(first, name):.1f} s"
        )
    out.append(
        f"a synchronous round {_median_round(more):.0f} s against {_median_round(first):.0f} s"
    )
    out.extend(marks_claims([first, more], START_OVER))
    return out


def _fast_gone(rec: Records, run: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    """The fast boards (Pi 5, Pi 4) that went offline before ``run`` reached the target."""
    crossed = rec.reached(run)["t"]
    return [o for o in rec.offline(run) if o[0] in FAST_BOARDS and o[1] < crossed]


MARKS = (0.84, 0.85, 0.86)  # accuracies around the target, to see where its crossing falls


def marks_claims(recs: list[Records], mode: str) -> list[str]:
    """Per paired run of ``mode`` and synchronous FedAvg in ``recs``: seconds to each of
    MARKS, as a table, and the median speed-up at each mark (runs where either never got
    there left out)."""
    head = "to " + " / ".join(f"{100 * m:g}" for m in MARKS) + " %"
    rows = [
        f"| repeat | {label(mode)}: {head} | synchronous FedAvg: {head} |",
        "|---|---|---|",
    ]
    ratios: dict[float, list[float]] = {m: [] for m in MARKS}
    for rec in recs:
        for x in (r for r in rec.runs if r["mode"] == mode):
            sync = rec.run("sync", repeat=x["repeat"])
            mine = [_first_at(rec.versions(x), m) for m in MARKS]
            theirs = [_first_at(rec.versions(sync), m) for m in MARKS]
            for m, a, b in zip(MARKS, mine, theirs, strict=True):
                if a is not None and b is not None:
                    ratios[m].append(b / a)
            cells = [
                " / ".join("—" if t is None else f"{t:.0f} s" for t in ts) for ts in (mine, theirs)
            ]
            rows.append(f"| {x['repeat']} | {cells[0]} | {cells[1]} |")
    return [
        "\n".join(rows),
        "; ".join(
            f"repeat {x['repeat']}: "
            + (", ".join(f"a {b} at {t:.0f} s" for b, t, _ in _fast_gone(rec, x)) or "none")
            for rec in recs
            for x in rec.runs
            if x["mode"] == mode
        ),
        "; ".join(
            f"{100 * m:g} %: {statistics.median(ratios[m]):.2f}x "
            f"({min(ratios[m]):.2f}x to {max(ratios[m]):.2f}x)"
            for m in MARKS
        ),
    ]


def _median_training(rec: Records, name: str) -> float:
    """The median ``duration_s`` the ``name`` boards reported for their trainings, in the
    runs of synchronous FedAvg and of FedBuff with a buffer of 2 (the other settings default)."""
    durations = []
    for x in (r for r in rec.runs if r["mode"] in ("sync", START_OVER)):
        boards = rec.boards(x)
        durations += [
            d["duration_s"]
            for m in rec.files[x["name"]]["metrics"]
            for dev, d in m["devices"].items()
            if d["duration_s"] is not None and boards[dev] == name
        ]
    return statistics.median(durations)


def _median_round(rec: Records) -> float:
    """The median duration of the synchronous rounds, each run's last left out (the budget's
    stop cuts it short)."""
    return statistics.median(
        m["duration_s"]
        for x in rec.runs
        if x["mode"] == "sync"
        for m in rec.files[x["name"]]["metrics"][:-1]
    )


def defaults_claims(rec: Records, earlier: list[Records]) -> list[str]:
    """The prose of "What a user gets without flags" (bench/results/fleet_defaults.json:
    synchronous FedAvg, FedBuff with every default (a buffer of 5) and with a buffer of 2, in
    the same invocations): its tables, times and acceptance per FedBuff mode, and the buffer
    of 2 over every paired run of it (``earlier``: fleet_start_over and fleet_start_over_more)."""
    out = [_drawn(rec), *rec.tables()]
    for m in ("fedbuff", START_OVER, "sync"):
        out.append(f"{label(m)}: {', '.join(rec.to(x) for x in rec.runs if x['mode'] == m)}")
    for m in ("fedbuff", START_OVER):
        out.append(repeats_summary(rec.result["acceptance"], m))
    every = [a for r in (*earlier, rec) for a in r.result["acceptance"]]
    out.append(repeats_summary(every, START_OVER))
    return out
