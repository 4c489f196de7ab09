"""The prose figures of docs/benchmarks.md's "Secure aggregation" section, and its profile table.

``claims(record, profile)`` are the phrases of the section's prose that quote
bench/results/secagg.json (``secagg.table`` is the section's first table) and
bench/results/secagg_profile.json; ``profile_table(profile)`` is the "Where the CPU goes"
table. Only the records are read:

    .venv/bin/python bench/secagg_figures.py
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from doc_figures import half_up, span, span_of, times

ROOT = Path(__file__).resolve().parents[1]
BOARD = ("board: quantize + keys", "board: shares", "board: masked", "board: unmask reply")
COORDINATOR = (
    "coordinator: keys in, key list out",
    "coordinator: shares in, routed out",
    "coordinator: masked in, unmask out",
    "coordinator: replies in, secrets rebuilt, unmasked",
)
BEFORE = "before the Shamir change"  # the label of the profile run kept from before the fix


def _graph(run: dict[str, Any]) -> str:
    kind = "complete" if run["k"] == run["devices"] - 1 else "k-regular"
    return f"{kind} ({run['k']}, {run['threshold']})"


def profile_table(profile: dict[str, Any]) -> str:
    lines = [
        "| devices, graph (k, t) | board: quantize + keys / shares / masked / unmask reply | "
        "coordinator: key list / routing / unmask request / rebuilding and unmasking |",
        "|---|---|---|",
    ]
    for run in profile["runs"]:
        if run["label"].startswith(BEFORE):
            continue
        ms = run["stage_cpu_ms"]
        board = " / ".join(f"{ms[s]:.1f}" for s in BOARD)
        coordinator = " / ".join(half_up(ms[s]) for s in COORDINATOR)
        lines.append(f"| {run['devices']}, {_graph(run)} | {board} ms | {coordinator} ms |")
    return "\n".join(lines)


def _calls(run: dict[str, Any], function: str) -> int:
    return next(f["calls"] for f in run["top_coordinator"] if function in f["function"])


def profile_claims(profile: dict[str, Any]) -> list[str]:
    runs = {(r["devices"], r["k"], r["label"].startswith(BEFORE)): r for r in profile["runs"]}
    twenty = next(r for (n, _, before), r in runs.items() if n == 20 and not before)
    board = sum(twenty["stage_cpu_ms"][s] for s in BOARD)
    before, after = runs[100, 99, True], runs[100, 99, False]
    last = COORDINATOR[-1]
    return [
        f"A board's whole secure part is about {round(board, -1):.0f} ms of CPU at 20 devices",
        f"{before['stage_cpu_ms'][last] / 1000:.1f} s of CPU for the last stage at 100 devices "
        f"on the complete graph ({_calls(before, '_interpolate'):,} interpolations, "
        f"{_calls(before, 'builtins.pow'):,} inverses)",
        f"**{after['stage_cpu_ms'][last] / 1000:.2f} s**, the same checks",
    ]


def _rows(size: dict[str, Any], arm: str) -> list[dict[str, Any]]:
    return [r for r in size["rows"] if r["arm"] == arm and not r["warmup"]]


def byte_ratios(arm: dict[str, Any]) -> list[float]:
    """An arm's bytes per device up and down over plain's (medians)."""
    return [arm["vs_plain"][f"bytes_{way}_per_device"] for way in ("up", "down")]


def _pct(ratios: list[float], fmt: str = "{:.0f}") -> str:
    return span(100 * (min(ratios) - 1), 100 * (max(ratios) - 1), fmt)


def _signed(ratios: list[float]) -> str:
    """Ratios as changes: "-2 % to +3 %", or "+1-2 %" when all are gains."""
    lo, hi = (f"{100 * (x - 1):+.0f}" for x in (min(ratios), max(ratios)))
    if lo.startswith("-") and hi.startswith("+"):
        return f"{lo} % to {hi} %"
    return f"{lo} %" if lo == hi else f"{lo}-{hi.lstrip('+-')} %"


def claims(record: dict[str, Any], profile: dict[str, Any]) -> list[str]:
    return [*_run_claims(record), *_cost_claims(record, profile)]


def _run_claims(record: dict[str, Any]) -> list[str]:
    """The run, its target check and its load."""
    t, at = record["target"], {s["devices"]: s["summary"] for s in record["sizes"]}
    c, k, n = at[t["devices"]]["complete"], at[t["devices"]]["k-regular"], t["devices"]
    rows = [r for s in record["sizes"] for r in s["rows"]]
    day = time.strptime(record["started"], "%Y-%m-%dT%H:%M:%SZ")
    samples = [x for _, x in record["loadavg_samples"]]
    met = t["complete"]["met"] and t["k-regular"]["met"]
    ratio = lambda arm, f: times(t[arm][f"{f}_ratio"], 2 if f == "wall" else 3)
    return [
        f"on {day.tm_mday} {time.strftime('%B %Y', day)} (main at `{record['git']}`)",
        f"then {c['rounds']} measured rounds per arm",
        f"(k = {at[100]['k-regular']['graph']['k']}, t = "
        f"{at[100]['k-regular']['graph']['threshold']}, `choose_parameters`)",
        f"**Target (issue 13), {n} devices: {'met' if met else 'not met'}**, wall time at most "
        f"{t['wall_at_most']}x and bytes per device at most {t['bytes_at_most']}x plain: wall "
        f"{ratio('complete', 'wall')} (complete) and {ratio('k-regular', 'wall')} (k-regular) in "
        f"medians, {times(c['vs_plain_min']['wall_s'])} and {times(k['vs_plain_min']['wall_s'])} "
        f"in minimums; bytes {ratio('complete', 'bytes_up')} up and "
        f"{ratio('complete', 'bytes_down')} down (complete), {ratio('k-regular', 'bytes_up')} / "
        f"{ratio('k-regular', 'bytes_down')} (k-regular)",
        "No round of any arm failed" if all(r["ok"] for r in rows) else "Some rounds failed",
        f"1-minute load average {record['loadavg_before'][0]:.1f} before and "
        f"{record['loadavg_after'][0]:.1f} after, {span_of(samples)} (median "
        f"{statistics.median(samples):.0f}) over the run, "
        f"{span_of(r['loadavg_1m'] for r in rows)} at the rounds",
    ]


def _cost_claims(record: dict[str, Any], profile: dict[str, Any]) -> list[str]:
    """What secure rounds add: time, CPU and bytes, at 5, 20 and 100 devices."""
    sizes = {s["devices"]: s for s in record["sizes"]}
    n = record["target"]["devices"]
    at = {d: s["summary"] for d, s in sizes.items()}
    c, hundred = at[n]["complete"], at[100]
    arms = ("complete", "k-regular")
    cpu = [at[d][arm]["vs_plain"]["cpu_s"] for d in (5, n) for arm in arms]
    masked = {
        arm: [r["secagg"]["stages"]["masked"]["duration_s"] for r in _rows(sizes[100], arm)]
        for arm in arms
    }
    devices_cpu = {arm: [r["devices_cpu_s"] for r in _rows(sizes[100], arm)] for arm in arms}
    unmask = [r["secagg"]["stages"]["unmask"]["cpu_s"] for r in _rows(sizes[100], "complete")]
    median = lambda arm, f: hundred[arm][f]["median"]
    wall100 = median("complete", "wall_s") / median("k-regular", "wall_s")
    cpu100 = median("complete", "cpu_s") / median("k-regular", "cpu_s")
    g100 = hundred["complete"]["graph"]
    bits = next(r["secagg"]["bits"] for s in record["sizes"] for r in s["rows"] if "secagg" in r)
    params = profile["runs"][0]["params"]
    after = c["after_training_s"]["median"]
    return [
        f"(plain rounds alone took "
        f"{span_of((r['wall_s'] for r in _rows(sizes[n], 'plain')), '{:.1f}')} s at {n} devices)",
        f"{after:.1f} s at {n} devices ({100 * after / c['wall_s']['median']:.0f} % of the "
        f"median round) and {at[5]['complete']['after_training_s']['median']:.2f} s at 5",
        f"differs by {_signed(cpu)} from plain",
        f"grows from {at[n]['plain']['coordinator_cpu_s']['median']:.2f} to "
        f"{c['coordinator_cpu_s']['median']:.2f} s per round at {n} devices",
        f"({bits}-bit ring, {bits // 8} bytes per weight plus the weight: "
        f"{(params + 1) * bits // 8:,} bytes for `cnn`)",
        f"+{_pct(byte_ratios(c), '{:.1f}')} % at {n} devices, "
        f"+{_pct(byte_ratios(hundred['complete']))} % at 100 on the complete graph, "
        f"+{_pct(byte_ratios(hundred['k-regular']))} % on the k-regular one",
        f"({span_of(masked['complete'])} s complete, {span_of(masked['k-regular'])} s k-regular)",
        f"({span_of(devices_cpu['complete'], '{:.1f}')} s of device CPU per round on the "
        f"complete graph, {span_of(devices_cpu['k-regular'], '{:.1f}')} s on the k-regular one)",
        f"The sparse graph makes the round {wall100:.1f}x shorter and "
        + ("halves its CPU" if 1.75 <= cpu100 < 2.25 else f"divides its CPU by {cpu100:.1f}")
        + " at 100 devices",
        f"the coordinator spends {median('complete', 'coordinator_cpu_s'):.2f} s of CPU per "
        f"round on the complete graph ({span_of(unmask, '{:.2f}')} s of it in the last stage: "
        f"rebuilding 100 secrets from {g100['k'] + 1} shares each with t = {g100['threshold']}, "
        f"and unmasking), {median('k-regular', 'coordinator_cpu_s'):.2f} s on the k-regular one",
        f"(about {record['wall_s'] / 60:.0f} minutes on the loaded machine)",
    ]


if __name__ == "__main__":
    rec = json.loads((ROOT / "bench/results/secagg.json").read_text())
    prof = json.loads((ROOT / "bench/results/secagg_profile.json").read_text())
    print(profile_table(prof), *claims(rec, prof), *profile_claims(prof), sep="\n\n")
