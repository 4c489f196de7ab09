"""docs/benchmarks.md and README.md: every figure recomputes from its raw record in bench/results/.

No benchmark runs here: bench/doc_sections.py names, per section, its records and the bench
functions that render its tables and quoted phrases from them (they only read the JSON), and
the phrases whose figures have no record, each with its reason; bench/doc_figures.py is the
check (every rendered phrase is in the section, no figure of the section is outside them).
Figures the doc quotes from superseded records are checked against git history.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import doc_figures  # noqa: E402
import doc_sections  # noqa: E402
import throughput_figures  # noqa: E402
from doc_sections import CHECKED_ELSEWHERE, SECTIONS  # noqa: E402

IDS = [f"{s.doc}: {s.title}" for s in SECTIONS]


@pytest.mark.parametrize("section", SECTIONS, ids=IDS)
def test_the_section_quotes_its_records(section):
    # Prepare
    text = (ROOT / section.doc).read_text()
    # Execute
    problems = section.problems(text)
    # Assert
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("section", SECTIONS, ids=IDS)
def test_every_figure_of_the_section_changed_by_hand_fails_the_check(section):
    # Prepare
    text = (ROOT / section.doc).read_text()
    body = doc_figures.sections(text)[section.title]
    # Execute: each figure in turn with its last digit changed
    missed = [
        figure
        for figure, changed in doc_figures.mutations(body)
        if not section.problems(text.replace(body, changed))
    ]
    # Assert
    assert not missed, f"changed by hand and still passing: {missed}"


def test_every_section_with_figures_is_checked():
    # Prepare
    checked = {(s.doc, s.title) for s in SECTIONS}
    # Execute
    unchecked = [
        (doc, title)
        for doc in (doc_sections.BENCHMARKS, doc_sections.README)
        for title, body in doc_figures.sections((ROOT / doc).read_text()).items()
        if doc_figures.figures(body) and (doc, title) not in checked
        and title not in CHECKED_ELSEWHERE
    ]  # fmt: skip
    # Assert
    assert not unchecked, f"sections with figures that no test checks: {unchecked}"


def test_every_raw_record_is_quoted_by_a_checked_section():
    # Prepare
    records = {p.stem for p in (ROOT / "bench/results").glob("*.json")}
    # Execute
    quoted = {n for s in SECTIONS for n in s.records}
    quoted |= {n for _, names in CHECKED_ELSEWHERE.values() for n in names}
    # Assert
    assert records <= quoted, f"records no section quotes: {sorted(records - quoted)}"


def test_the_check_finds_a_missing_phrase_and_a_figure_without_a_record():
    # Prepare
    text = "The interpreter is **1.67x**\nKeras, at 42 % of the\npeak (load average 9.5-11.6)."
    covered = ["is **1.67x** Keras,", "at 42 % of the peak"]
    # Execute
    right = doc_figures.problems(text, covered)
    wrong = doc_figures.problems(text.replace("1.67x", "1.68x"), covered)
    # Assert: across line breaks; the load average is a figure too
    assert [p.split(":")[0] for p in right] == ["figure '9.5-11.6' has no record here"]
    assert wrong[0].startswith("not in the doc as the record gives it: 'is **1.67x**")
    assert "figure '1.68x' has no record here" in "\n".join(wrong)


def test_figures_with_units_are_found_and_settings_are_not():
    # Prepare
    text = (
        "7,617/s (9,198/s), 1.25-1.31x, 17-52 %, +0.18 points, 0.00 points, 14.3 s "
        "(7.1–19.2 s), 118.2 GFLOP/s, 1.43e-8, 1.92 u·M, 2,110.2 MB, under load 12-33; "
        "batch 32, lr 0.05, 12,000 images, TensorFlow 2.21, x86-64, 2 fleets x 2, AVX-512"
    )
    # Execute
    found = doc_figures.figures(text)
    # Assert
    assert found == [
        "7,617/s", "9,198/s", "1.25-1.31x", "17-52 %", "+0.18 points", "0.00 points", "14.3 s",
        "7.1–19.2 s", "118.2 GFLOP/s", "1.43e-8", "1.92 u·M", "2,110.2 MB", "12-33",
    ]  # fmt: skip


def _git_record(commit: str, path: str) -> dict:
    try:
        out = subprocess.run(
            ["git", "show", f"{commit}:{path}"], cwd=ROOT, capture_output=True, text=True
        )
    except OSError:
        pytest.skip("no git")
    if out.returncode != 0:
        pytest.skip(f"{commit} is not in this clone's history")
    return json.loads(out.stdout)


def test_superseded_throughput_figures_are_their_records_in_git_history():
    # Prepare: the records the doc names for the figures this run superseded
    doc = doc_figures.normal((ROOT / "docs/benchmarks.md").read_text())
    pinned = _git_record("bf24e45", "bench/results/train_throughput.json")
    first = _git_record("61d5315", "bench/results/train_throughput.json")
    # Execute
    vs = pinned["summary"]["cnn"]["ai-edge-litert"]["vs_keras"]
    loads = [r["loadavg_1m"] for r in pinned["rows"]]
    cnn = next(r for r in first["rows"] if r["arch"] == "cnn")
    seconds = first["command"].split("--seconds ")[1]
    # Assert
    assert (
        f"under load {doc_figures.span(min(loads), max(loads))} from other work on both cores "
        f"gave `cnn` {vs['cpu_median']:.2f}x in CPU time and {vs['wall_median']:.2f}x in wall "
        "time (`git show bf24e45:bench/results/train_throughput.json`)"
    ) in doc
    assert f"the earlier figure ({cnn['ai-edge-litert'] / cnn['keras_fit']:.2f}x on `cnn`)" in doc
    assert f"each side ran once for {seconds} s" in doc
    assert (
        f"{cnn['ai-edge-litert']:,.0f} samples per CPU-second on ai-edge-litert against Keras's "
        f"{cnn['keras_fit']:,.0f} (`git show 61d5315:bench/results/train_throughput.json`)"
    ) in doc


def test_the_superseded_fleet_run_s_load_is_its_record_in_git_history():
    # Prepare
    doc = doc_figures.normal((ROOT / "docs/benchmarks.md").read_text())
    old = _git_record("2a8b6fe", "bench/results/fleet.json")
    # Execute: the 1-minute load average, median per run (as the current run is quoted)
    medians = [r["load_average"]["median"] for r in old["runs"]]
    day = int(old["date"][8:10])
    # Assert
    assert (
        f"The previous run of this bench ({day} December, `bench/results/fleet.json` at commit "
        f"`2a8b6fe`, in git history) was made under a load average of "
        f"{doc_figures.span_of(medians)} and is superseded by this one."
    ) in doc


def test_the_superseded_accuracy_gap_is_its_record_in_git_history():
    # Prepare
    doc = doc_figures.normal((ROOT / "docs/benchmarks.md").read_text())
    old = _git_record("da632f1", "bench/results/accuracy_vs_keras.json")
    # Execute
    litert = next(r for r in old["rows"] if r["runtime"].startswith("ai-edge-litert"))
    # Assert
    assert (
        f"({litert['gap_points']:.2f} points, seed 0 only) was measured on earlier training "
        "graphs and is superseded (`git show da632f1:bench/results/accuracy_vs_keras.json`)"
    ) in doc


def test_keras_idle_share_is_one_minus_cpu_over_wall_of_the_timed_passes():
    # Prepare: a warm-up pass (left out) and two timed Keras passes, one 40 % idle
    rows = [
        {"arch": "cnn", "side": "keras_fit", "warmup": True, "wall_s": 9.0, "cpu_s": 1.0},
        {"arch": "cnn", "side": "keras_fit", "warmup": False, "wall_s": 1.0, "cpu_s": 0.6},
        {"arch": "cnn", "side": "keras_fit", "warmup": False, "wall_s": 2.0, "cpu_s": 2.0},
        {"arch": "cnn", "side": "tf.lite", "warmup": False, "wall_s": 1.0, "cpu_s": 0.1},
    ]
    # Execute
    idle = throughput_figures.keras_idle({"rows": rows}, "cnn")
    # Assert
    assert idle == pytest.approx([0.4, 0.0])
