"""Plain-text rendering of a JobView snapshot for ``fedcoord monitor`` (no curses needed).

``render(snapshot)`` returns the whole screen as text; the command redraws it with two ANSI
codes (cursor home, clear) when stdout is a terminal, or prints it when it changes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

SPARK = "▁▂▃▄▅▆▇█"
CLEAR = "\x1b[H\x1b[2J"  # cursor home + clear screen
MAX_HISTORY_ROWS = 12  # rounds listed in the table (all of them feed the sparklines)
MAX_EVENTS = 6
MAX_REJECTIONS = 5  # latest rejected updates listed


def sparkline(values: Sequence[float | None], width: int = 40) -> str:
    """``▁▃▅█`` over the last ``width`` values; None (not evaluated) shows as a space."""
    vals = list(values)[-width:]
    known = [v for v in vals if v is not None]
    if not known:
        return ""
    lo, hi = min(known), max(known)
    span = hi - lo or 1.0
    return "".join(
        " " if v is None else SPARK[round((v - lo) / span * (len(SPARK) - 1))] for v in vals
    )


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


def _pct(v: float | None) -> str:
    return f"{100 * v:.2f} %" if v is not None else "-"


def _loss(v: float | None) -> str:
    return f"{v:.4f}" if v is not None else "-"


def _ago(t: float | None, now: float) -> str:
    if not t:
        return "-"
    s = max(0.0, now - t)
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600)):
        if s < limit:
            return f"{s / size:.0f} {unit} ago"
    return f"{s / 86400:.0f} days ago"


def _table(rows: list[list[str]], width: int) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()[:width] for r in rows]


def render(s: Mapping[str, Any], width: int = 100) -> str:
    """The monitor screen for a snapshot (see :meth:`JobView.snapshot`)."""
    now = s["now"]
    lines = [_header(s, width)]
    trust = _trust_line(s, width)
    if trust:
        lines.append(trust)
    if not s["seen"]:
        lines.append(
            f"waiting for job {s['job']!r}: no message under {s['prefix']}/{s['job']}/ yet "
            "(check --job and --prefix, or start the job)"
        )
    if s.get("coordinator_lost"):
        lines.append("the coordinator lost its connection (Last Will): is it still running?")
    lines += _round_lines(s, now)
    lines.append("")
    lines += _device_lines(s, now, width)
    lines.append("")
    lines += _history_lines(s, width)
    rejections = _rejection_lines(s, width)
    if rejections:
        lines.append("")
        lines += rejections
    events = s.get("events") or []
    if events:
        lines.append("")
        lines += [
            f"{time.strftime('%H:%M:%S', time.localtime(e['time']))}  {e['text']}"[:width]
            for e in events[-MAX_EVENTS:]
        ]
    return "\n".join(lines) + "\n"


def _header(s: Mapping[str, Any], width: int) -> str:
    ctl = s.get("control") or {}
    state = ctl.get("state", "unknown")
    if ctl.get("detail"):
        state += f" ({ctl['detail']})"
    link = "connected" if s["connected"] else "NOT CONNECTED"
    clock = time.strftime("%H:%M:%S", time.localtime(s["now"]))
    text = f"job {s['job']}  {state}  broker {s['broker'] or '-'} {link}  {clock}"
    return text[:width]


def _trust_line(s: Mapping[str, Any], width: int) -> str:
    """``signed`` / ``UNSIGNED (--unsigned)``, and who paused the job, when, until when."""
    ctl = s.get("control")
    if not ctl:
        return ""
    parts = ["signed" if ctl.get("signed") else "UNSIGNED (--unsigned)"]
    if ctl["state"] == "paused":
        text = (
            "paused" + (f" by {ctl['by']}" if ctl.get("by") else "") + f" at {_clock(ctl['time'])}"
        )
        until = ctl.get("until")
        parts.append(text + (f", resumes by itself at {_clock(until)}" if until else ""))
    return "  ".join(parts)[:width]


def _clock(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _rejection_lines(s: Mapping[str, Any], width: int) -> list[str]:
    """The latest rejected updates: round, the topic's device and the reason. A message whose
    sender is not the topic's device is said to be under the device's name, from the sender:
    the device did not necessarily send it."""
    recent = s.get("rejections") or []
    if not recent:
        return []
    out = [f"rejected updates (latest {min(len(recent), MAX_REJECTIONS)}):"]
    for r in recent[-MAX_REJECTIONS:]:
        who = r["device"]
        if r["sender"] != r["device"]:
            who = f"update under {r['device']}'s name from {r['sender']}"
        counted = " (counted as its reply)" if r.get("counted") else ""
        out.append(f"round {r['round']}  {who}: {r['reason']}{counted}"[:width])
    return out


def _round_lines(s: Mapping[str, Any], now: float) -> list[str]:
    out = []
    r = s.get("round")
    if r and r.get("mode") == "buffered":
        slots = ", ".join(f"{d} #{g}" for d, g in r["grants"].items())
        out.append(
            f"version {r['round']} {r['state']} (buffered): {len(r['selected'])} training"
            + (f" ({slots})" if slots else "")
            + f", updates at most {r['max_staleness']} versions behind"
        )
    elif r:
        text = (
            f"round {r['round']} {r['state']}: {len(r['selected'])} selected, "
            f"{len(r['replied'])} replied"
        )
        if r["failed"]:
            text += f", {len(r['failed'])} failed"
        if r["remaining_s"] is not None:
            left = r["remaining_s"]
            text += f", deadline in {left:.0f} s" if left > 0 else ", deadline passed"
        hp = r.get("hyperparams") or {}
        knobs = ", ".join(f"{k} {hp[k]}" for k in ("epochs", "lr", "batch_size", "mu") if k in hp)
        out.append(text + (f"  ({knobs})" if knobs else ""))
        if r.get("secagg"):
            out.append(_secure_line(r["secagg"], len(r["selected"])))
    m, g = s.get("model"), s.get("global")
    if m:
        out.append(
            f"model {m.get('architecture') or '?'} {m['sha256'][:12]}  "
            f"{m.get('parameters') or 0:,} parameters  {human_bytes(m['bytes'])}"
            + (
                f"  global weights of {'version' if r and r.get('mode') == 'buffered' else 'round'} "
                f"{g['round']} ({g['encoding']}, {human_bytes(g['bytes'])})"
                if g
                else ""
            )
        )
    return out


def _secure_line(sa: Mapping[str, Any], selected: int) -> str:
    """``secure round: stage masked  keys 5/5  shares 5  masked 3  unmask -``."""
    sent = sa.get("sent") or {}
    counts = "  ".join(
        f"{stage} {sent.get(stage) or '-'}" + (f"/{selected}" if stage == "keys" else "")
        for stage in ("keys", "shares", "masked", "unmask")
    )
    stage = sa["stage"]
    if stage == "keys":
        stage = "keys (training, then advertising keys)"
    return f"secure round: stage {stage}  {counts}"


def _secure_cell(sa: Mapping[str, Any] | None) -> str:
    """A history row's SECURE column: ``4 of t=3``, ``4+1r of t=3``, ``FAILED``."""
    if not sa:
        return "-"
    if sa.get("stage") != "done":
        return "FAILED"
    recovered = f"+{sa['recovered']}r" if sa.get("recovered") else ""
    retried = f" ({sa['attempts']} tries)" if (sa.get("attempts") or 1) > 1 else ""
    return f"{sa['survivors']}{recovered} of t={sa.get('threshold')}{retried}"


def _device_lines(s: Mapping[str, Any], now: float, width: int) -> list[str]:
    devices = s["devices"]
    summary = s["summary"]
    title = f"devices: {summary['online']} online of {summary['devices']}"
    if not devices:
        return [title]
    rows = [
        [
            "DEVICE",
            "PRESENCE",
            "STATE",
            "SEL",
            "REPLIED",
            "SAMPLES",
            "LOSS",
            "ACC",
            "INTERPRETER",
            "SEEN",
        ]
    ]
    for d in devices:
        rows.append(
            [
                d["device"],
                d["presence"],
                d["state"],
                "*" if d["selected"] else "",
                d["replied"] or "-",
                f"{d['samples']:,}" if d["samples"] else "-",
                _loss(d["loss"]),
                _pct(d["accuracy"]),
                d["interpreter"] or "-",
                _ago(d["last_seen"], now),
            ]
        )
    return [title, *_table(rows, width)]


def _count(value: object) -> int:
    """A history count: an int (``rejected``) or the length of a device list."""
    if isinstance(value, int):
        return value
    return len(value) if isinstance(value, (list, tuple)) else 0


def _cell(h: Mapping[str, Any], key: str) -> str:
    """A history count, or a buffered version's staleness as ``mean/max``."""
    if key == "staleness":
        mean, top = h.get("staleness_mean"), h.get("staleness_max")
        return "-" if mean is None else f"{mean:.1f}/{top}"
    return str(_count(h.get(key)) or "-")


def _history_lines(s: Mapping[str, Any], width: int) -> list[str]:
    history = s["history"]
    if not history:
        return ["no finished round yet"]
    shown = history[-MAX_HISTORY_ROWS:]
    # counts of updates not aggregated: columns only when some listed round has them
    extra = [
        (title, key)
        for title, key in (
            ("REJECTED", "rejected"),
            ("CONTESTED", "contested"),
            ("DROPPED", "dropped"),
            ("CANCELLED", "cancelled"),  # over-selection: still training at the target
            ("LATE", "late_folded"),  # late updates folded in
            ("WASTED", "wasted"),  # late updates discarded
        )
        if any(_count(h.get(key)) for h in shown)
    ]
    secure = any(h.get("secagg") for h in shown)  # survivors (+recovered) of the threshold
    buffered = any(h.get("mode") == "buffered" for h in shown)
    if buffered:  # global versions: how many updates and how stale (docs/round-modes.md)
        extra = [(t, k) for t, k in extra if k not in ("late_folded", "cancelled")]
        extra += [("UPDATES", "updates"), ("STALENESS", "staleness")]
    first = "VERSION" if buffered else "ROUND"
    rows = [[first, "ACCURACY", "LOSS", "DEVICES", "UP", "DOWN", "TIME", *(t for t, _ in extra)]]
    if secure:
        rows[0].append("SECURE")
    for h in shown:
        duration = h.get("duration_s")
        rows.append(
            [
                str(h["round"]),
                _pct(h["accuracy"]),
                _loss(h["loss"]),
                str(len(h["participants"])),
                human_bytes(h["bytes_up"]),
                human_bytes(h["bytes_down"]),
                f"{duration:.1f} s" if duration is not None else "-",
                *(_cell(h, key) for _, key in extra),
                *([_secure_cell(h.get("secagg"))] if secure else []),
            ]
        )
    hidden = len(history) - MAX_HISTORY_ROWS
    what = "versions: {} made" if buffered else "rounds: {} finished"
    out = [what.format(len(history)) + (f" ({hidden} older not listed)" if hidden > 0 else "")]
    out += _table(rows, width)
    failed = [h for h in shown if (h.get("secagg") or {}).get("failed")]
    if failed:
        h = failed[-1]
        out.append(f"secure round {h['round']} failed: {h['secagg']['failed']}"[:width])
    acc = sparkline([h["accuracy"] for h in history])
    loss = sparkline([h["loss"] for h in history])
    if acc:
        out.append(f"accuracy {acc}  {_pct(history[-1]['accuracy'])}")
    if loss:
        out.append(f"loss     {loss}  {_loss(history[-1]['loss'])}")
    return out
