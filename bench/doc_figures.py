"""Does a document quote its figures as their raw records give them?

A section of a Markdown document (from its ``##`` or ``###`` heading to the next heading) is
checked against *covered* strings: the tables and phrases a bench renders from its raw
record (``table(record)``, ``claims(record)``), and phrases exempted with a reason (a
paper's figure, a setting, a target). Two rules, both whitespace-insensitive:

- every covered string occurs in the section;
- every figure of the section (a number with a unit: ``%``, ``points``, ``1.67x``, ``s``,
  ``ms``, ``MB``, ``GB``, ``/s``, ``GFLOP/s``, ...; ``1.43e-8``; the numbers after "load
  average") lies inside a covered string.

So a figure written by hand fails the first rule (its phrase no longer renders the same) or
the second (no rendered phrase holds it). bench/doc_sections.py says which record and which
renderer cover each section; tests/test_benchmark_figures.py runs the check on every one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from decimal import ROUND_HALF_UP, Decimal

_NUMBER = r"[-+−]?\d[\d,]*(?:\.\d+)?"
_UNIT = (
    r"(?:%|points?\b|ms\b|s\b|MB\b|GB\b|kB\b|KB\b|MiB\b|GiB\b|/s\b|GFLOP/s|MFLOP\b|GHz\b"
    r"|MHz\b|u·M|bytes\b|times\b)"
)
FIGURE = re.compile(
    rf"(?<![\w.,/·^-]){_NUMBER}(?:\s?[-–]\s?{_NUMBER})?(?:\s?{_UNIT}|x\b)"  # 1.5 %, 17-52 %, 1.67x
    r"|(?<![\w.])\d+(?:\.\d+)?e-\d+"  # 1.43e-8
    r"|(?<=load average\s)\d[\d.]*(?:[-–]\d[\d.]*)?"  # load average 9.5-11.6
    r"|(?<=load\s)\d[\d.]*[-–]\d[\d.]*"  # under load 12-33
)


def normal(text: str) -> str:
    """Whitespace runs (line breaks, list indentation) as one space."""
    return " ".join(text.split())


def sections(text: str) -> dict[str, str]:
    """Heading title -> the lines under it, up to the next heading (code blocks kept)."""
    out: dict[str, list[str]] = {"": []}
    title, fenced = "", False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            title = line.lstrip("#").strip()
            out[title] = []
            continue
        out[title].append(line)
    return {t: "\n".join(lines) for t, lines in out.items()}


def figures(text: str) -> list[str]:
    return [m[0] for m in FIGURE.finditer(text)]


def problems(text: str, covered: Iterable[str]) -> list[str]:
    """What is wrong with a section's text against the strings that cover its figures."""
    whole = rest = normal(text)
    out = []
    for s in map(normal, covered):
        if s not in whole:
            out.append(f"not in the doc as the record gives it: {s!r}")
        rest = rest.replace(s, " ¶ ")  # every occurrence: its figures are accounted for
    for fig in figures(rest):
        at = rest.index(fig)
        out.append(f"figure {fig!r} has no record here: ...{rest[max(0, at - 60) : at + 30]}...")
    return out


def mutations(text: str) -> Iterator[tuple[str, str]]:
    """(figure, the text with that figure's last digit changed), for every figure in it."""
    for m in FIGURE.finditer(text):
        digits = [i for i, c in enumerate(m[0]) if c.isdigit()]
        i = m.start() + digits[-1]
        yield m[0], text[:i] + str((int(text[i]) + 1) % 10) + text[i + 1 :]


# Formats the docs use.
def pct(fraction: float, digits: int = 2) -> str:
    return f"{100 * fraction:.{digits}f} %"


def half_up(x: float, digits: int = 0) -> str:
    """``x`` rounded half away from zero (52.5 -> 53; f-strings round half to even: 52),
    with thousands separators."""
    q = Decimal(str(x)).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{q:,}"


def rate(per_s: float) -> str:
    return f"{per_s:,.0f}/s"


def times(ratio: float, digits: int = 2) -> str:
    return f"{ratio:.{digits}f}x"


def span(lo: float, hi: float, fmt: str = "{:.0f}", dash: str = "-") -> str:
    a, b = fmt.format(lo), fmt.format(hi)
    return a if a == b else f"{a}{dash}{b}"


def span_of(values: Iterable[float], fmt: str = "{:.0f}", dash: str = "-") -> str:
    """The range of ``values`` as the docs write it: "17-52", or "3" when both ends agree."""
    vs = list(values)
    return span(min(vs), max(vs), fmt, dash)


def lowest_after(points: list[dict], floor: float, until: float) -> float | None:
    """The lowest ``accuracy`` of ``points`` (global models in time order, each with ``t``
    and ``accuracy``) from the first one at or above ``floor`` up to ``until`` seconds: how
    far a wave of stale updates pulled the versions back. None if none reached ``floor``."""
    first = next((i for i, p in enumerate(points) if p["accuracy"] >= floor), None)
    if first is None:
        return None
    return min(p["accuracy"] for p in points[first:] if p["t"] <= until)
