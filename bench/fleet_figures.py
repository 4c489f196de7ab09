"""The figures of bench/fleet.py, recomputed from the raw records alone.

Every run of the bench leaves a directory under bench/results/fleet/ (its ``metrics.jsonl``,
``config.json``, the simulator's ``summary.json`` and ``events.jsonl``, and the bench's own
``bench.json``: mode, budget, load-average samples). ``figures(raw_dir)`` reads only those
files and returns what bench/results/fleet.json and docs/benchmarks.md quote:

    .venv/bin/python bench/fleet_figures.py bench/results/fleet     # prints the tables

The phrases of docs/benchmarks.md's three fleet sections that quote figures are rendered
from the same raw records by bench/fleet_claims.py.

Definitions (time is wall time since the first board started its first local training:
the fleet is up and the job under way; how long the board processes took to start on this
machine, `startup_s`, is recorded apart and is not the fleet's):
- time to X %: the first evaluated global model at or above X % within the budget;
- accuracy at the budget: the last global model evaluated within the budget;
- accepted updates: updates aggregated into a global model within the budget (late ones
  folded included);
- accuracy after the same number of accepted updates: N = the fewest accepted updates any
  mode of the same fleet and partition reached within the budget; each mode's accuracy at N
  updates, interpolated linearly between its two global models around N (rounds and
  versions come in steps of about K updates; both models are recorded);
- wasted updates: trained and sent, then discarded (late for a closed round, too stale, or
  rejected);
- stopped trainings: boards still training when a semi-synchronous round closed that
  stopped without sending (partial work lost; those that sent anyway are wasted updates);
- bytes per accepted update: everything the boards' links carried, both directions, over
  the whole run, divided by the updates accepted over the whole run.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

LABELS = {"sync": "synchronous FedAvg", "semi": "semi-synchronous", "fedbuff": "FedBuff"}


_NUMBER = r"(\d+(?:\.\d+)?)"
# bench/fleet.py --modes: fedbuff, fedbuffN (buffer N), -aX (--staleness-exponent), -lrX
# (--server-lr), -model / -base (--stale-changes), -soX (--start-over-within), in this order
FEDBUFF_MODE = re.compile(
    rf"fedbuff([1-9]\d*)?(?:-a{_NUMBER})?(?:-lr{_NUMBER})?(-model|-base)?(?:-so{_NUMBER})?"
)


def label(mode: str) -> str:
    """``fedbuff2`` (bench/fleet.py --modes: FedBuff with a buffer of 2) -> ``FedBuff, buffer 2``."""
    m = FEDBUFF_MODE.fullmatch(mode)
    if m is None or mode == "fedbuff":
        return LABELS.get(mode, mode)
    parts = ([f"buffer {m[1]}"] if m[1] else []) + ([f"weight 1/(1+s)^{m[2]}"] if m[2] else [])
    parts += [f"server lr {m[3]}"] if m[3] else []
    parts += {"-model": ["toward the trained model"], "-base": ["from its base"]}.get(
        m[4] or "", []
    )
    if m[5] is not None:
        within = float(m[5])
        parts += [f"started over within {100 * within:g} %" if within else "no start over"]
    return "FedBuff, " + ", ".join(parts)


def read_run(path: Path) -> dict[str, Any]:
    lines = (
        (path / "metrics.jsonl").read_text().splitlines()
        if (path / "metrics.jsonl").exists()
        else []
    )
    return {
        "name": path.name,
        "bench": json.loads((path / "bench.json").read_text()),
        "summary": json.loads((path / "summary.json").read_text()),
        "config": json.loads((path / "config.json").read_text()),
        "metrics": [json.loads(x) for x in lines if x.strip()],
    }


def accepted_in(m: dict[str, Any]) -> int:
    """Updates aggregated into this global model (a round, or a buffered version)."""
    n = m.get("updates_aggregated")
    return int(n) if n is not None else len(m.get("participants", ()))


def wasted_in(m: dict[str, Any]) -> int:
    return int(m.get("wasted", 0)) + len(m.get("rejected", {}))


LATE_ROUND = re.compile(r"late update for round (\d+)")


def stopped_trainings(metrics: list[dict[str, Any]]) -> int:
    """Cancelled boards (still training at a round's close) whose update for that round
    never arrived later (neither folded nor discarded as late): they stopped partway."""
    late: set[tuple[str, int]] = set()
    for m in metrics:
        late.update((d, int(r)) for d, r in m.get("late_folded", {}).items())
        for d, why in m.get("late_discarded", {}).items():
            if hit := LATE_ROUND.search(why):
                late.add((d, int(hit.group(1))))
    return sum(1 for m in metrics for d in m.get("cancelled", ()) if (d, m["round"]) not in late)


def zero(run: dict[str, Any]) -> float:
    """Unix time of the first local training (the boards' start if none began)."""
    measured = run["summary"]["measured"]
    return float(measured.get("first_training_at") or measured["started_at"])


def timeline(run: dict[str, Any]) -> list[dict[str, Any]]:
    """(t, accuracy, cumulative accepted updates) of every global model, in order."""
    t0 = zero(run)
    out, total = [], 0
    for m in run["metrics"]:
        total += accepted_in(m)
        out.append({"t": m["time"] - t0, "accuracy": m["accuracy"], "accepted": total})
    return out


def run_figures(run: dict[str, Any], targets: list[float]) -> dict[str, Any]:
    bench, summary = run["bench"], run["summary"]
    budget = bench["budget_s"]
    line = timeline(run)
    within = [p for p in line if p["t"] <= budget]
    evaluated = [p for p in within if p["accuracy"] is not None]
    measured, estimate = summary["measured"], summary["estimate"]
    link_bytes = sum(b["bytes_up"] + b["bytes_down"] for b in summary["boards"].values())
    accepted_all = line[-1]["accepted"] if line else 0
    loads = [s[1] for s in bench["load_samples"]]
    return {
        "name": run["name"],
        "fleet": bench["fleet"],
        "partition": bench["partition"],
        "mode": bench["mode"],
        "repeat": bench.get("repeat", 0),
        "budget_s": budget,
        "startup_s": round(zero(run) - measured["started_at"], 1),
        "time_to": {
            f"{100 * x:g}": next((round(p["t"], 1) for p in evaluated if p["accuracy"] >= x), None)
            for x in targets
        },
        "accuracy_at_budget": evaluated[-1]["accuracy"] if evaluated else None,
        "global_models": len(within),
        "accepted_updates": within[-1]["accepted"] if within else 0,
        "wasted_updates": sum(wasted_in(m) for m in run["metrics"]),
        "stopped_trainings": stopped_trainings(run["metrics"]),
        "trainings_started": sum(b["trainings"] for b in summary["boards"].values()),
        "link_bytes_per_accepted_update": round(link_bytes / accepted_all)
        if accepted_all
        else None,
        "update_bytes_per_accepted_update": (
            round(sum(m["bytes_up"] for m in run["metrics"]) / accepted_all)
            if accepted_all
            else None
        ),
        "wall_s": measured["wall_s"],
        "device_cpu_s": measured["device_cpu_s"],
        "coordinator_process_cpu_s": measured["coordinator_process_cpu_s"],
        "utilisation_estimated": estimate["utilisation"],
        "utilisation_measured": measured["utilisation"],
        "oversubscribed": estimate["oversubscribed"],
        "load_average": {
            "before": measured.get("load_average_before"),
            "after": measured.get("load_average_after"),
            "min": min(loads) if loads else None,
            "median": statistics.median(loads) if loads else None,
            "max": max(loads) if loads else None,
        },
        "cores": summary["cores"],
        "by_profile": by_profile(summary),
        "_timeline": line,
    }


def by_profile(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per board profile: boards, local trainings started per board (mean), and the cycle
    the fleet file gives one training (compute x slow-down + transfers, estimated): on a
    faithful run the trainings go as the inverse of the cycle."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for b in summary["boards"].values():
        groups.setdefault(b["profile"], []).append(b)
    return {
        profile: {
            "boards": len(bs),
            "trainings_per_board": round(statistics.mean(b["trainings"] for b in bs), 2),
            "cycle_s_estimated": round(statistics.mean(b["busy_s"] for b in bs), 1),
        }
        for profile, bs in groups.items()
    }


def same_updates(runs: list[dict[str, Any]]) -> None:
    """Accuracy after N accepted updates, N the fewest any mode of the group reached within
    its budget (in place): interpolated linearly in the number of updates between the two
    evaluated global models around N (rounds and versions come in steps of ~K updates)."""
    groups: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["fleet"], r["partition"], r["repeat"]), []).append(r)
    for group in groups.values():
        n = min(r["accepted_updates"] for r in group)
        for r in group:
            points = [
                p for p in r["_timeline"] if p["accuracy"] is not None and p["t"] <= r["budget_s"]
            ]
            lo = next((p for p in reversed(points) if p["accepted"] <= n), None)
            hi = next((p for p in points if p["accepted"] >= n), None)
            acc = None
            if lo is not None and hi is not None:
                span = hi["accepted"] - lo["accepted"]
                share = (n - lo["accepted"]) / span if span else 0.0
                acc = lo["accuracy"] + share * (hi["accuracy"] - lo["accuracy"])
            elif hi is not None:  # N below this mode's first model: its first model
                acc = hi["accuracy"]
            r["same_updates"] = {
                "n": n,
                "accuracy": None if acc is None else round(acc, 4),
                "between": [
                    None if x is None else {"accepted": x["accepted"], "accuracy": x["accuracy"]}
                    for x in (lo, hi)
                ],
            }


SPEEDUP_TARGET = 3.0  # issue 12: FedBuff reaches 85 % at least 3x sooner than FedAvg...
GAP_TARGET = -1.0  # ...and after the same updates is at most 1 point below it


def acceptance(runs: list[dict[str, Any]], fleet: str = "mixed-pi") -> list[dict[str, Any]]:
    """Issue 12's acceptance, per partition (and repeat) of ``fleet`` and FedBuff run (one
    per buffer size): FedBuff reaches 85 % at least 3x sooner than synchronous FedAvg; its
    accuracy after the same number of accepted updates is within 1 point of FedAvg's."""
    out = []
    by = {(r["partition"], r["repeat"], r["mode"]): r for r in runs if r["fleet"] == fleet}
    for part, rep, mode in sorted(by):
        if not mode.startswith("fedbuff") or (part, rep, "sync") not in by:
            continue
        fb, sync = by[(part, rep, mode)], by[(part, rep, "sync")]
        t_fb, t_sync = fb["time_to"].get("85"), sync["time_to"].get("85")
        speedup: float | None = None
        bound = ""
        if t_fb is not None and t_sync is not None:
            speedup = t_sync / t_fb
        elif t_fb is not None:  # FedAvg did not get there within its budget: a lower bound
            speedup, bound = sync["budget_s"] / t_fb, ">="
        a_fb, a_sync = fb["same_updates"]["accuracy"], sync["same_updates"]["accuracy"]
        gap = None if a_fb is None or a_sync is None else 100 * (a_fb - a_sync)
        out.append(
            {
                "fleet": fleet,
                "partition": part,
                "repeat": rep,
                "mode": mode,
                "speedup_to_85": None if speedup is None else round(speedup, 2),
                "speedup_bound": bound,
                "speedup_met": speedup is not None and speedup >= SPEEDUP_TARGET,
                "same_updates_gap_points": None if gap is None else round(gap, 2),
                "same_updates_met": gap is not None and gap >= GAP_TARGET,
            }
        )
    return out


def repeats_summary(acceptances: list[dict[str, Any]], mode: str, partition: str = "iid") -> str:
    """One sentence over every paired run (FedBuff ``mode`` and synchronous FedAvg with the
    same seed) of the acceptance records given: the speed-up to 85 % and the gap after the
    same updates, median and range."""
    rows = [a for a in acceptances if a["mode"] == mode and a["partition"] == partition]
    speed = [a["speedup_to_85"] for a in rows if a["speedup_to_85"] is not None]
    gaps = [a["same_updates_gap_points"] for a in rows if a["same_updates_gap_points"] is not None]
    if not speed or not gaps:
        return f"no paired run of {label(mode)} reached 85 %"
    met = sum(a["speedup_met"] for a in rows)
    return (
        f"over {len(rows)} paired runs, {label(mode)} reached 85 % "
        f"{statistics.median(speed):.2f}x sooner than synchronous FedAvg in the median "
        f"({min(speed):.2f}x to {max(speed):.2f}x; 3x or more in {met} of {len(rows)}), and "
        f"after the same updates was {statistics.median(gaps):+.2f} points from it "
        f"({min(gaps):+.2f} to {max(gaps):+.2f})"
    )


def figures(raw_dir: Path, targets: list[float]) -> dict[str, Any]:
    runs = [run_figures(read_run(p), targets) for p in sorted(raw_dir.iterdir()) if p.is_dir()]
    fleets, modes = ["mixed-pi", "homogeneous"], list(LABELS)
    runs.sort(
        key=lambda r: (
            fleets.index(r["fleet"]) if r["fleet"] in fleets else 2,
            r["partition"],
            r["repeat"],
            modes.index(r["mode"]) if r["mode"] in modes else 3,
        )
    )
    same_updates(runs)
    result = {"runs": runs, "acceptance": acceptance(runs)}
    for r in runs:
        r.pop("_timeline")
    return result


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def time_to(t: float | None, budget: float) -> str:
    return f"> {budget:g} s" if t is None else f"{t:.0f} s"


def _around(su: dict[str, Any]) -> str:
    seen = {(x["accepted"], x["accuracy"]) for x in su["between"] if x is not None}
    return ", ".join(f"{pct(acc)} at {n}" for n, acc in sorted(seen))


def megabytes(x: float | None) -> str:
    return "—" if x is None else f"{x / 1e6:.2f} MB"


def table(result: dict[str, Any], targets: list[float]) -> str:
    """The two Markdown tables docs/benchmarks.md quotes: accuracy and time, then costs."""
    heads = [f"to {100 * x:g} %" for x in targets]
    one = [
        "| fleet | partition | mode | "
        + " | ".join(heads)
        + " | accuracy at the budget | accepted updates | after N updates (models around N) |",
        "|---" * (6 + len(heads)) + "|",
    ]
    two = [
        "| fleet | partition | mode | wasted updates | stopped trainings | link bytes / "
        "accepted update | update bytes / accepted update | wall | device CPU | coordinator "
        "process CPU | utilisation est. / measured | startup | load average (median, max) |",
        "|---" * 13 + "|",
    ]
    for r in result["runs"]:
        su, la = r["same_updates"], r["load_average"]
        name = f"| {r['fleet']} | {r['partition']} | {label(r['mode'])} | "
        one.append(
            name
            + " | ".join(time_to(r["time_to"][f"{100 * x:g}"], r["budget_s"]) for x in targets)
            + f" | {pct(r['accuracy_at_budget'])} ({r['budget_s']:g} s) | "
            f"{r['accepted_updates']} | {pct(su['accuracy'])} at {su['n']} ({_around(su)}) |"
        )
        two.append(
            name + f"{r['wasted_updates']} | {r['stopped_trainings']} | "
            f"{megabytes(r['link_bytes_per_accepted_update'])} | "
            f"{megabytes(r['update_bytes_per_accepted_update'])} | {r['wall_s']:.0f} s | "
            f"{r['device_cpu_s']:.0f} s | {r['coordinator_process_cpu_s']:.0f} s | "
            f"{100 * r['utilisation_estimated']:.0f} % / {100 * r['utilisation_measured']:.0f} % | "
            f"{r['startup_s']:.0f} s | {la['median']:.1f}, {la['max']:.1f} |"
        )
    return "\n".join(one) + "\n\n" + "\n".join(two)


def acceptance_table(result: dict[str, Any]) -> str:
    rows = [
        "| fleet | partition | FedBuff run | FedBuff to 85 % vs FedAvg (target >= 3x) | after the "
        "same updates, FedBuff - FedAvg (target >= -1 point) |",
        "|---|---|---|---|---|",
    ]
    for a in result["acceptance"]:
        speed = a["speedup_to_85"]
        gap = a["same_updates_gap_points"]
        rows.append(
            f"| {a['fleet']} | {a['partition']} | {label(a.get('mode', 'fedbuff'))} | "
            + ("—" if speed is None else f"{a['speedup_bound']}{speed:.2f}x")
            + (" (met)" if a["speedup_met"] else " (not met)")
            + " | "
            + ("—" if gap is None else f"{gap:+.2f} points")
            + (" (met)" if a["same_updates_met"] else " (not met)")
            + " |"
        )
    return "\n".join(rows)


def main() -> int:
    """``fleet_figures.py [RAW_DIR] [--update RECORD]``: print the tables; with --update,
    write the recomputed figures into RECORD (bench/results/fleet.json), keeping its command,
    date and settings."""
    args = sys.argv[1:]
    record = None
    if "--update" in args:
        i = args.index("--update")
        record = Path(args[i + 1])
        del args[i : i + 2]
    raw = Path(args[0]) if args else Path(__file__).parent / "results/fleet"
    first = next(p for p in sorted(raw.iterdir()) if p.is_dir())
    targets = json.loads((first / "bench.json").read_text())["targets"]
    result = figures(raw, targets)
    if record is not None:
        data = json.loads(record.read_text())
        data.update(result)
        data["figures_command"] = f"python bench/fleet_figures.py {raw} --update {record}"
        record.write_text(json.dumps(data, indent=1) + "\n")
    print(table(result, targets))
    print()
    print(acceptance_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
