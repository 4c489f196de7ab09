"""Which raw record covers each section of docs/benchmarks.md and README.md, and how.

Every section with figures is listed in SECTIONS: its document, its title, the function
that renders its tables and quoted phrases from its records under bench/results/ (the
benches' ``table``/``claims``), and the phrases whose figures have no record here, each with
the reason. ``bench/doc_figures.py`` says what the check is. CHECKED_ELSEWHERE names the
sections another test checks. tests/test_benchmark_figures.py runs the check; this prints
what is wrong, section by section, after a bench's record changed:

    .venv/bin/python bench/doc_sections.py            # the problems, if any
    .venv/bin/python bench/doc_sections.py --render   # every section's rendering
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import accuracy_vs_keras
import async_figures
import board_install_size
import compression
import doc_figures
import edge_client_rss
import fleet_claims
import readme_job
import scale
import secagg
import secagg_figures
import tf_client_comparison
import throughput_figures

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS, README = "docs/benchmarks.md", "README.md"


@cache
def record(name: str) -> Any:
    """bench/results/NAME.json (read once)."""
    return json.loads((ROOT / "bench/results" / f"{name}.json").read_text())


@dataclass(frozen=True)
class Section:
    doc: str
    title: str
    records: tuple[str, ...]  # bench/results/NAME.json that its figures come from
    render: Callable[[], list[str]]  # its tables and quoted phrases, from those records
    exempt: dict[str, str] = field(default_factory=dict)  # phrase -> why it has no record here

    def covered(self) -> list[str]:
        return [*self.render(), *self.exempt]

    def problems(self, text: str) -> list[str]:
        """What is wrong with this section of ``text`` (the whole document)."""
        body = doc_figures.sections(text).get(self.title)
        if body is None:
            return [f"{self.doc}: no section {self.title!r}"]
        named = [n for n in self.records if f"bench/results/{n}.json" not in body]
        return [f"the section does not name bench/results/{n}.json" for n in named] + (
            doc_figures.problems(body, self.covered())
        )


def _readme_job() -> list[str]:
    base, safe = record("readme_job"), record("readme_job_safe_defaults")
    return [readme_job.table(base), *readme_job.safe_defaults_claims(safe, base)]


def _accuracy() -> list[str]:
    r = record("accuracy_vs_keras")
    return [accuracy_vs_keras.table(r), *accuracy_vs_keras.claims(r)]


def _throughput() -> list[str]:
    r = record("train_throughput")
    return [throughput_figures.table(r), *throughput_figures.claims(r)]


def _rss() -> list[str]:
    r = record("edge_client_rss")
    return [edge_client_rss.table(r), *edge_client_rss.claims(r)]


def _tf_client() -> list[str]:
    r = record("tf_client_comparison")
    return [tf_client_comparison.table(r), *tf_client_comparison.claims(r)]


def _encodings() -> list[str]:
    one, seeds = record("compression_20rounds_seed0"), record("compression")
    return [
        compression.table_one_seed(one),
        compression.table_seeds(seeds),
        *compression.claims(one, seeds),
    ]


def _secagg() -> list[str]:
    r, profile = record("secagg"), record("secagg_profile")
    return [
        secagg.table(r),
        secagg_figures.profile_table(profile),
        *secagg_figures.claims(r, profile),
        *secagg_figures.profile_claims(profile),
    ]


def _scale() -> list[str]:
    return [scale.table([record("scale"), record("scale_int8")]), *scale.claims(record("scale"))]


def _e(x: float) -> str:
    """1.4328e-08 -> '1.43e-8'."""
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _site_tier() -> list[str]:
    """bench/results/site_tier.json, written by tests/coordinator/test_site_tier.py."""
    r = record("site_tier")
    worst = {x["max_abs_difference"] for x in r["rounds"]}
    weights = {x["elements"] for x in r["rounds"]}
    (n,) = weights
    same = "the same in both rounds" if len(worst) == 1 and len(r["rounds"]) == 2 else "over rounds"
    return [
        f"to **{_e(r['max_abs_difference'])}** at most (max |difference| over the {n:,} weights, "
        f"{same})",
        f": {r['allowed_in_u_times_M']:g}u·M, up to terms below 2^-47·M",
        f"instead of the former flat 2e-6 ({2e-6 / r['max_abs_difference']:.0f} times the measured "
        "difference)",
        f"at most **{r['max_difference_in_u_times_M']:.2f} u·M**",
    ]


def _async_numerics() -> list[str]:
    r, hinge = record("async_numerics"), record("async_numerics_hinge")
    lr, mom = record("async_numerics_server_lr"), record("async_numerics_momentum")
    return [
        async_figures.table(r),
        *async_figures.claims(r),
        async_figures.table(hinge),
        *async_figures.claims(hinge),
        *async_figures.dips(hinge),
        async_figures.none_sooner(hinge, "fedbuff-k2-model"),
        f"({hinge['wall_s'] / 60:.1f} minutes",
        async_figures.table(lr),
        *async_figures.claims(lr, "dirichlet:0.5"),
        *async_figures.swings(lr, "dirichlet:0.5", 60),
        f"({lr['wall_s'] / 60:.1f} minutes",
        async_figures.table(mom),
        *async_figures.claims(mom, "dirichlet:0.5"),
        *async_figures.swings(mom, "dirichlet:0.5", 60),
        f"({mom['wall_s'] / 60:.1f} minutes",
    ]


def _board_install() -> list[str]:
    r = record("board_install_size")
    return [board_install_size.table(r), *board_install_size.claims(r)]


@cache
def _fleet_records(name: str) -> fleet_claims.Records:
    """bench/results/NAME.json with its raw records bench/results/NAME/ (read once)."""
    return fleet_claims.Records(record(name), ROOT / "bench/results" / name)


SHIPPED = ("fleet_scoring", "fleet_scoring_more", "fleet_idle")  # paired runs, rule as shipped


@cache
def _repeats() -> tuple[dict[str, Any], ...]:
    """The acceptance rows of every paired repeat of the rule as shipped (fleet seed 1 in
    the first three records; each repeat its own in fleet_seeds)."""
    return tuple(
        a for n in (*SHIPPED, "fleet_seeds") for a in _fleet_records(n).result["acceptance"]
    )


@cache
def _fleet_modes() -> tuple[str, ...]:
    main = _fleet_records("fleet")
    return (*main.tables(), *fleet_claims.modes_claims(main, list(_repeats())))


@cache
def _fleet_stale_changes() -> tuple[str, ...]:
    follow = _fleet_records("fleet_stale_changes")
    return (*follow.tables(), *fleet_claims.stale_changes_claims(follow, _fleet_records("fleet")))


@cache
def _fleet_scoring() -> tuple[str, ...]:
    scoring = [_fleet_records(n) for n in ("fleet_scoring", "fleet_scoring_more")]
    return tuple(
        fleet_claims.scoring_claims(
            scoring, _fleet_records("fleet"), _fleet_records("fleet_stale_changes")
        )
    )


@cache
def _fleet_ahead() -> tuple[str, ...]:
    return tuple(
        fleet_claims.trained_ahead_claims(
            _fleet_records("fleet_ahead"),
            _fleet_records("fleet_idle"),
            [_fleet_records(n) for n in ("fleet_scoring", "fleet_scoring_more")],
        )
    )


@cache
def _fleet_seeds() -> tuple[str, ...]:
    return (
        *fleet_claims.fleet_seeds_claims(
            _fleet_records("fleet_seeds"), [_fleet_records(n) for n in SHIPPED]
        ),
        *fleet_claims.seeds_dirichlet_claims(
            _fleet_records("fleet_seeds_dirichlet"), _fleet_records("fleet")
        ),
    )


@cache
def _fleet_start_over() -> tuple[str, ...]:
    restart, first = record("async_numerics_restart"), record("async_numerics_restart_first")
    non_iid = record("async_numerics_restart_dirichlet")
    return (
        async_figures.table(non_iid),
        *async_figures.claims(non_iid, "dirichlet:0.5"),
        *async_figures.swings(non_iid, "dirichlet:0.5", 60),
        f"({non_iid['wall_s'] / 60:.1f} minutes",
        async_figures.table(restart),
        async_figures.table(first),
        *async_figures.dips(restart),
        *async_figures.dips(first),
        *async_figures.restarts(restart),
        *async_figures.restarts(first),
        async_figures.none_sooner(restart, "fedbuff-k2-model"),
        async_figures.none_sooner(first, "fedbuff-k2-model"),
        f"({restart['wall_s'] / 60:.1f} minutes",
        f"({first['wall_s'] / 60:.1f} minutes",
        *fleet_claims.start_over_claims(
            _fleet_records("fleet_start_over"),
            [_fleet_records(n) for n in (*SHIPPED, "fleet_seeds")],
        ),
        *fleet_claims.start_over_dirichlet_claims(_fleet_records("fleet_start_over_dirichlet")),
    )


def _non_iid() -> list[str]:
    ema, one = record("async_numerics_ema_dirichlet"), record("async_numerics_one_epoch_dirichlet")
    return [
        *fleet_claims.whose_updates_claims(
            [_fleet_records(n) for n in ("fleet_seeds_dirichlet", "fleet_start_over_dirichlet")]
        ),
        async_figures.table(ema),
        *async_figures.claims(ema, "dirichlet:0.5"),
        *async_figures.swings(ema, "dirichlet:0.5", 60),
        f"({ema['wall_s'] / 60:.1f} minutes",
        async_figures.table(one),
        *async_figures.claims(one, "dirichlet:0.5"),
        *async_figures.swings(one, "dirichlet:0.5", 60),
        f"({one['wall_s'] / 60:.1f} minutes",
    ]


def _readme_demo() -> list[str]:
    return readme_job.demo_claims(record("readme_job"))


NOT_RECORDED = "no record: "
SECTIONS = [
    Section(
        BENCHMARKS,
        "Benchmarks",
        (),
        list,
        {"24 GiB": "the machine's memory, a fact of the machine, not a measurement"},
    ),
    Section(
        BENCHMARKS,
        "README job: federated Fashion-MNIST on 5 simulated boards",
        ("readme_job", "readme_job_safe_defaults"),
        _readme_job,
        {"The paper reports 87.27 % after 50 rounds": "the paper's figure"},
    ),
    Section(
        BENCHMARKS,
        "Accuracy: one epoch over 12,000 Fashion-MNIST images",
        ("accuracy_vs_keras",),
        _accuracy,
        {
            "(0.56 points, seed 0 only)": "superseded; its record is in git history (the doc "
            "names the commit; a test checks it when git has it)"
        },
    ),
    Section(
        BENCHMARKS,
        "Throughput",
        ("train_throughput",),
        _throughput,
        {
            "An earlier run of the same bench under load 12-33 from other work on both cores "
            "gave `cnn` 1.43x in CPU time and 2.85x in wall time": "superseded; its record is "
            "in git history (the doc names the commit; a test checks it when git has it)",
            "Why this differs from the earlier figure (2.59x on `cnn`)": "superseded; git history",
            "each side ran once for 4 s": "the superseded bench's setting (git history)",
            "(the re-run reported in issue 14 came out at 1.47x)": NOT_RECORDED
            + "a re-run reported in issue 14, quoted as such",
            "best of 800 runs of ~3 ms": "the clock probe's method (bench/compute_limit.py)",
        },
    ),
    Section(BENCHMARKS, "Edge client memory", ("edge_client_rss",), _rss),
    Section(
        BENCHMARKS,
        "Against a TensorFlow client",
        ("tf_client_comparison",),
        _tf_client,
        {
            "ai-edge-litert is 59 MB, numpy 74 MB (with its bundled OpenBLAS), cryptography 15 "
            "MB": NOT_RECORDED + "the record keeps the package list, not each package's size",
            "the `tensorflow` package alone is 1.8 GB": NOT_RECORDED + "as above",
        },
    ),
    Section(
        BENCHMARKS,
        "Wire encodings",
        ("compression", "compression_20rounds_seed0"),
        _encodings,
        {
            "load average 15-50": NOT_RECORDED + "bench/compression.py does not record the "
            "load; the doc quotes it to say the runs' wall times are not a figure",
        },
    ),
    Section(
        BENCHMARKS,
        "Secure aggregation",
        ("secagg", "secagg_profile"),
        _secagg,
        {
            "a plain round's upload is 4x smaller while the masked vector is not (not measured "
            "here": "int8's size ratio, not measured here (the doc says so)",
            "one measured cycle, under 10 s": "the quick setting's duration, not a figure",
        },
    ),
    Section(
        BENCHMARKS,
        "Scale",
        ("scale", "scale_int8"),
        _scale,
        {
            "about 60 MB of Python, interpreter, model and float64 sums": NOT_RECORDED
            + "an estimate of the coordinator's fixed part (also in docs/scaling.md)",
            "(bounded at 64 MiB": "a setting (MqttTransport's max_queued_bytes)",
        },
    ),
    Section(
        BENCHMARKS,
        "Site aggregators",
        ("site_tier",),
        _site_tier,
        {
            "the worst weight 1.6 times over the bound": NOT_RECORDED
            + "a one-off local trial of float32 sums, reported as such",
            "(about 9 s)": "how long the command runs, not a figure",
        },
    ),
    Section(BENCHMARKS, "Board install size", ("board_install_size",), _board_install),
    # The fleet sections also quote each other's records: the first, the repeats' median;
    # the follow-up and the repeats, the main run (and the follow-up) they compare with.
    Section(
        BENCHMARKS,
        "Round modes on simulated fleets: synchronous, semi-synchronous, FedBuff",
        ("fleet",),
        lambda: list(_fleet_modes()),
        {
            "`mlp`, 15 s per run": "the smoke setting's budget (bench/fleet.py --quick), not a figure"
        },
    ),
    Section(
        BENCHMARKS,
        "Follow-up: damping the waves of stale updates",
        ("fleet_stale_changes",),
        lambda: list(_fleet_stale_changes()),
    ),
    Section(
        BENCHMARKS,
        "Scoring on the side, and four repeats",
        ("fleet_scoring", "fleet_scoring_more"),
        lambda: list(_fleet_scoring()),
    ),
    Section(
        BENCHMARKS,
        "Tried and reverted: boards that train ahead",
        ("fleet_ahead", "fleet_idle"),
        lambda: list(_fleet_ahead()),
    ),
    Section(
        BENCHMARKS,
        "Every repeat its own draw of the fleet",
        ("fleet_seeds", "fleet_seeds_dirichlet"),
        lambda: list(_fleet_seeds()),
    ),
    Section(
        BENCHMARKS,
        "FedBuff's numerics on the fleet's clock",
        (
            "async_numerics",
            "async_numerics_hinge",
            "async_numerics_server_lr",
            "async_numerics_momentum",
        ),
        _async_numerics,
    ),
    Section(
        BENCHMARKS,
        "Starting over from the first trained version",
        (
            "async_numerics_restart",
            "async_numerics_restart_first",
            "async_numerics_restart_dirichlet",
            "fleet_start_over",
            "fleet_start_over_dirichlet",
        ),
        lambda: list(_fleet_start_over()),
    ),
    Section(
        BENCHMARKS,
        "Eight repeats with a buffer of 2",
        ("fleet_start_over_more", "fleet_start_over"),
        lambda: fleet_claims.start_over_more_claims(
            _fleet_records("fleet_start_over_more"), _fleet_records("fleet_start_over")
        ),
    ),
    Section(
        BENCHMARKS,
        "What a user gets without flags",
        ("fleet_defaults", "fleet_start_over", "fleet_start_over_more"),
        lambda: fleet_claims.defaults_claims(
            _fleet_records("fleet_defaults"),
            [_fleet_records(n) for n in ("fleet_start_over", "fleet_start_over_more")],
        ),
    ),
    Section(
        BENCHMARKS,
        "Why FedBuff stays behind on non-IID data",
        (
            "fleet_seeds_dirichlet",
            "fleet_start_over_dirichlet",
            "async_numerics_ema_dirichlet",
            "async_numerics_one_epoch_dirichlet",
        ),
        _non_iid,
    ),
    Section(
        README,
        "Two commands",
        ("readme_job",),
        _readme_demo,
        {
            fig: NOT_RECORDED + "the seconds of an earlier run of the demo (README.md says so)"
            for fig in ("12.5 s", "7.9 s", "6.3 s", "19.5 s")
        },
    ),
    Section(
        README,
        "Command line",
        (),
        list,
        {"(0.1 MB)": NOT_RECORDED + "the board wheel's size (`fedcoord devices client-wheel`)"},
    ),
    Section(
        README,
        "Development",
        (),
        list,
        {
            "(each over ~5 s": "the threshold for marking a test slow",
            "shows it over ~5 s": "the same threshold",
        },
    ),
]

# Sections whose figures another test checks against their records: title -> (test, records).
CHECKED_ELSEWHERE: dict[str, tuple[str, tuple[str, ...]]] = {}


def main() -> int:
    bad = 0
    for s in SECTIONS:
        text = (ROOT / s.doc).read_text()
        if "--render" in sys.argv:
            print(f"== {s.doc}: {s.title}", *s.render(), sep="\n\n", end="\n\n")
        for p in s.problems(text):
            bad += 1
            print(f"{s.doc}, {s.title}: {p}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
