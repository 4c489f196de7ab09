"""docs/results.md: every figure recomputes from the raw record committed under docs/results/.

No training: the test reads the records (metrics.jsonl, baseline.json, summary.json, run.json
that bench/record_experiment.py copies from a run) and checks the doc against them:

- every section (## or ###) that quotes figures names its record on a line starting with
  ``Record:`` followed by ``docs/results/<name>/`` paths: the first is the section's own
  (tables' ``federated`` / ``centralized`` rows, ``round N: ...``, ``at epoch N``, the load
  average), the others are records its prose compares with (their figures are allowed too);
- every table in such a section is checked cell by cell: a table's first header cell says
  what its rows are (``variant``, ``device``), the other header cells say what each column
  holds (COLUMNS below, ``round N``, or ``the paper ...`` for the paper's own figures);
- every other figure in the section's prose (``NN.NN %``, ``N.NN points``, ``N s``) must be
  one the section's records give (or a target ``≥ N %``, or one of the paper's figures);
  ``round N: NN.NN %`` must be round N of the record, ``X.XX at epoch N`` the baseline's
  test loss after round N (``(its lowest)`` after it: the lowest), ``load average A–B`` the
  1-minute load average range of the run;
- images and records under docs/results/ are all referenced by the doc, and small.

A line containing "no record yet" is not checked, nor a section with it in its title: they
mark old figures kept for context.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results.md"
RESULTS = ROOT / "docs" / "results"

# The papers' own figures (not ours: they come from the papers the experiments reproduce).
PAPER_FIGURES = {"87.27 %", "85.4 %", "79–83 %", "82–85 %", "93–94 %", "97–98 %", "12 %"}
MAX_RECORD_BYTES = 400_000
FORBIDDEN_SUFFIXES = {".tflite", ".npz", ".bin", ".npy", ".h5", ".keras", ".gz", ".tar"}


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


@dataclass
class Variant:
    name: str
    metrics: list[dict[str, Any]]
    config: dict[str, Any]
    summary: dict[str, Any]
    baseline: dict[str, Any] | None

    def federated(self, rnd: int) -> float:
        m = self.metrics[rnd - 1]
        assert m["round"] == rnd, f"{self.name}: metrics.jsonl line {rnd} is round {m['round']}"
        return float(m["accuracy"])

    def centralized(self, rnd: int) -> float:
        assert self.baseline is not None, f"{self.name} has no baseline.json"
        return float(self.baseline["accuracy"][self.baseline["rounds"].index(rnd)])

    def best(self) -> tuple[float, int]:
        acc, rnd = max((m["accuracy"], -m["round"]) for m in self.metrics)
        return float(acc), -rnd


@dataclass
class Record:
    path: Path
    variants: dict[str, Variant]
    run: dict[str, Any] | None

    def only(self) -> Variant:
        assert len(self.variants) == 1, f"{self.path}: name the variant (it has several)"
        return next(iter(self.variants.values()))


def load_record(path: Path) -> Record:
    summary = json.loads((path / "summary.json").read_text())
    variants = {}
    for entry in summary["variants"]:
        vdir = path / entry["variant"]
        metrics = [json.loads(line) for line in (vdir / "metrics.jsonl").read_text().splitlines()]
        config = json.loads((vdir / "config.json").read_text())
        base = vdir / "baseline.json"
        variants[entry["variant"]] = Variant(
            entry["variant"],
            metrics,
            config,
            entry,
            json.loads(base.read_text()) if base.exists() else None,
        )
    run = path / "run.json"
    return Record(path, variants, json.loads(run.read_text()) if run.exists() else None)


# Columns of a `variant` table: header cell -> the cell computed from the variant's record.
COLUMNS: dict[str, Callable[[Variant], str]] = {
    "local epochs": lambda v: str(v.config["epochs"]),
    "rounds": lambda v: str(len(v.metrics)),
    "federated": lambda v: pct(v.federated(len(v.metrics))),
    "best federated": lambda v: f"{pct(v.best()[0])} (round {v.best()[1]})",
    "centralized": lambda v: pct(v.centralized(len(v.metrics))),
    "gap": lambda v: (
        f"{100 * (v.centralized(len(v.metrics)) - v.federated(len(v.metrics))):.2f} points"
    ),
    "federated wall time": lambda v: f"{v.summary['federated_wall_time_s']:.0f} s",
    "baseline wall time": lambda v: f"{v.summary['baseline_wall_time_s']:.0f} s",
}


@dataclass
class Section:
    title: str
    lines: list[tuple[int, str]] = field(default_factory=list)  # (line number, text)

    def records(self) -> list[Record]:
        paths = [
            p
            for _, line in self.lines
            if line.startswith("Record:")
            for p in re.findall(r"docs/results/([\w.-]+)/", line)
        ]
        return [load_record(RESULTS / p) for p in dict.fromkeys(paths)]


def sections(text: str) -> list[Section]:
    out = [Section("(top)")]
    for no, line in enumerate(text.splitlines(), 1):
        if line.startswith("## ") or line.startswith("### "):
            out.append(Section(line.lstrip("# ")))
        out[-1].lines.append((no, line))
    return out


def tables(section: Section) -> Iterator[list[tuple[int, list[str]]]]:
    block: list[tuple[int, list[str]]] = []
    for no, line in [*section.lines, (0, "")]:
        if line.startswith("|"):
            block.append((no, [c.strip().replace("**", "") for c in line.strip("|").split("|")]))
        elif block:
            yield [row for row in block if not set("".join(row[1])) <= set("-: ")]
            block = []


def find_variant(records: list[Record], label: str) -> tuple[Variant, bool]:
    """A row label: a variant's name, `federated` / `centralized` / `this toolkit` (the
    section's only variant), or `<variant>, centralized`; returns (variant, baseline row?)."""
    central = label == "centralized" or label.endswith(", centralized")
    name = label.removesuffix(", centralized")
    if name in ("federated", "centralized", "this toolkit"):
        return records[0].only(), central
    hits = [r.variants[name] for r in records if name in r.variants]
    assert len(hits) == 1, f"row {label!r}: no (or several) variant of that name in the records"
    return hits[0], central


def check_table(records: list[Record], rows: list[tuple[int, list[str]]]) -> set[str]:
    """Check every cell; return the figures checked."""
    (_, header), body = rows[0], rows[1:]
    kind, columns = header[0], header[1:]
    checked = set()
    for no, cells in body:
        if kind == "variant":
            v, central = find_variant(records, cells[0])
        elif kind == "device":
            v, central = records[0].only(), False
        else:
            raise AssertionError(f"docs/results.md:{no}: unknown table kind {kind!r}")
        for col, cell in zip(columns, cells[1:], strict=True):
            where = f"docs/results.md:{no}, column {col!r}"
            if col.startswith("the paper"):
                assert cell in PAPER_FIGURES | {"", "-"}, f"{where}: {cell!r} is not a paper figure"
                continue
            if kind == "device":
                want = device_cell(v, cells[0], col)
            elif m := re.fullmatch(r"round (\d+)", col):
                rnd = int(m[1])
                want = pct(v.centralized(rnd) if central else v.federated(rnd))
            elif col in COLUMNS:
                want = COLUMNS[col](v)
            else:
                raise AssertionError(f"{where}: unknown column (see COLUMNS in this test)")
            assert cell == want, f"{where}: the doc says {cell!r}, the record {want!r}"
            checked.add(cell)
    return checked


def device_cell(v: Variant, device: str, col: str) -> str:
    d = v.metrics[-1]["devices"][device]
    if col == "samples":
        return f"{d['samples']:,}"
    if col == "training accuracy":
        return pct(d["accuracy"])
    if col == "test accuracy":
        return pct(d["test_accuracy"])
    raise AssertionError(f"device table: unknown column {col!r}")


def record_figures(records: list[Record]) -> set[str]:
    """Every figure a section's prose may quote from its records."""
    out: set[str] = set()
    for r in records:
        for v in r.variants.values():
            out |= {pct(m["accuracy"]) for m in v.metrics}
            out.add(pct(v.best()[0]))
            for name in ("federated wall time", "baseline wall time"):
                out.add(COLUMNS[name](v))
            if v.baseline:
                out |= {pct(a) for a in v.baseline["accuracy"]}
                out.add(COLUMNS["gap"](v))
    return out


FIGURE = re.compile(r"(?<![\w.])(\d[\d,]*(?:\.\d+)?(?:–\d+(?:\.\d+)?)? (?:%|points|s\b))")


def check_prose(section: Section, records: list[Record]) -> None:
    allowed = record_figures(records)
    for no, line in section.lines:
        if line.startswith("|") or "no record yet" in line or line.startswith("Record:"):
            continue
        for m in re.finditer(r"round (\d+): (\d+\.\d\d %)", line):
            want = pct(records[0].only().federated(int(m[1])))
            assert m[2] == want, f"docs/results.md:{no}: {m[0]!r}, the record says {want}"
        for m in re.finditer(r"(\d+\.\d\d) at epoch (\d+)", line):
            base = records[0].only().baseline
            assert base, f"docs/results.md:{no}: 'X at epoch N' is a baseline loss: no baseline"
            loss = dict(zip(base["rounds"], base["loss"], strict=True))
            want = f"{loss[int(m[2])]:.2f}"
            assert m[1] == want, f"docs/results.md:{no}: {m[0]!r}, the record says {want}"
            if "(its lowest)" in line[m.end() : m.end() + 14]:
                lowest = min(loss, key=loss.__getitem__)
                assert int(m[2]) == lowest, f"docs/results.md:{no}: the lowest is at {lowest}"
        for m in re.finditer(r"load average (\d+\.\d+)–(\d+\.\d+)", line):
            run = records[0].run
            assert run, f"docs/results.md:{no}: {records[0].path.name} has no run.json"
            ones = [s[1] for s in run["loadavg"]]
            want = f"{min(ones):.2f}–{max(ones):.2f}"
            assert f"{m[1]}–{m[2]}" == want, f"docs/results.md:{no}: load average is {want}"
        for m in FIGURE.finditer(line):
            fig = m[1]
            if fig in allowed or fig in PAPER_FIGURES or line[: m.start()].endswith("≥ "):
                continue
            raise AssertionError(
                f"docs/results.md:{no}: {fig!r} is not a figure of this section's record"
                f" ({', '.join(str(r.path.relative_to(ROOT)) for r in records) or 'none named'})"
            )


DOC_SECTIONS = sections(DOC.read_text())


@pytest.mark.parametrize("section", DOC_SECTIONS, ids=[s.title for s in DOC_SECTIONS])
def test_section_figures_match_their_records(section: Section) -> None:
    if "no record yet" in section.title:
        pytest.skip("old figures, marked as such in the title")
    records = section.records()
    for rows in tables(section):
        assert records, f"docs/results.md:{rows[0][0]}: a table in a section without Record:"
        check_table(records, rows)
    check_prose(section, records)


def test_records_are_complete_runs() -> None:
    for summary in RESULTS.glob("*/summary.json"):
        record = load_record(summary.parent)
        for v in record.variants.values():
            rounds = [m["round"] for m in v.metrics]
            assert rounds == list(range(1, v.config["rounds"] + 1)), f"{v.name}: rounds {rounds}"
            if v.baseline:
                assert v.baseline["rounds"] == rounds, f"{v.name}: baseline rounds differ"


def test_every_record_and_image_is_referenced_and_small() -> None:
    doc = DOC.read_text()
    for path in RESULTS.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(RESULTS)
        assert path.suffix not in FORBIDDEN_SUFFIXES, f"{rel}: no weights, models or data here"
        assert path.stat().st_size < MAX_RECORD_BYTES, f"{rel}: too large for a record"
        if path.suffix == ".png":
            assert f"(results/{rel})" in doc, f"docs/results/{rel} is not shown in the doc"
        else:
            assert f"docs/results/{rel.parts[0]}/" in doc, f"docs/results/{rel.parts[0]} unused"
    for img in re.findall(r"\]\((results/[^)]+)\)", doc):
        assert (DOC.parent / img).exists(), f"docs/results.md links {img}, which is missing"


def check_section(text: str) -> None:
    (section,) = [s for s in sections(text) if s.title == "t"]
    records = section.records()
    for rows in tables(section):
        check_table(records, rows)
    check_prose(section, records)


def test_the_checks_catch_a_wrong_figure() -> None:
    """The checks above on a small page built from the Fashion-MNIST record: right, then
    each kind of wrong (so a passing page means something)."""
    v = load_record(RESULTS / "fashion-mnist-paper").only()
    right = (
        "## t\nRecord: docs/results/fashion-mnist-paper/\n\n"
        "| variant | round 2 | federated |\n|---|---|---|\n"
        f"| federated | {pct(v.federated(2))} | {pct(v.federated(50))} |\n"
        f"| centralized | {pct(v.centralized(2))} | {pct(v.federated(50))} |\n\n"
        f"After 50 rounds, {pct(v.federated(50))} (round 3: {pct(v.federated(3))}).\n"
    )
    check_section(right)
    wrong = [
        (f"| federated | {pct(v.federated(2))}", f"| federated | {pct(v.federated(3))}"),
        (f"| centralized | {pct(v.centralized(2))}", f"| centralized | {pct(v.federated(2))}"),
        (f"rounds, {pct(v.federated(50))}", "rounds, 12.34 %"),
        ("(round 3:", "(round 4:"),
        ("| round 2 |", "| after round 2 |"),
    ]
    for old, new in wrong:
        assert old in right, old
        with pytest.raises(AssertionError):
            check_section(right.replace(old, new))
