"""The training-throughput benchmark: its FLOP count, peak derivation, summaries, and a run.

bench/train_throughput.py produces the figures in docs/benchmarks.md; these tests pin the
arithmetic behind them (hand-computed) and run the bench once on a small budget.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import compute_limit
from bench.train_throughput import summarize
from tests.conftest import BOARD_PYTHON, ROOT

ZEN4 = {"vendor": "AuthenticAMD", "family": 25, "all_flags": {"fma", "avx2", "avx512f"}}


def test_training_flops_of_cnn_are_counted_from_every_layers_shape():
    # Prepare: cnn = conv 5x5/2 (16), conv 5x5/2 (32), dense 128, dense 10 on 28x28x1
    from model_export import architectures

    spec = architectures.full_spec(architectures.get_spec("cnn"), 10)
    model = architectures.keras_model(spec, (28, 28, 1))
    # Execute
    f = compute_limit.training_flops(model)
    # Assert: MACs by hand, H_out*W_out*kh*kw*C_in*C_out and in*out
    macs = [14 * 14 * 5 * 5 * 1 * 16, 7 * 7 * 5 * 5 * 16 * 32, 7 * 7 * 32 * 128, 128 * 10]
    assert [layer["macs"] for layer in f["layers"]] == macs
    assert f["training_flops"] == 3 * 2 * sum(macs) == 5_445_504
    assert f["training_flops_needed"] == 3 * 2 * sum(macs) - 2 * macs[0]


def test_peak_is_units_times_lanes_times_two_times_the_measured_clock():
    # Prepare: Zen 4 runs 512-bit FMAs as two 256-bit halves
    info = {**ZEN4, "cpuinfo_mhz": 2596.0}
    probes = [
        {"clock_ghz": 3.6, "fma256_gflops": 110.0},
        {"clock_ghz": 3.7, "fma256_gflops": 118.0},
    ]
    # Execute
    p = compute_limit.peak(info, probes)
    # Assert: the best clock of all probes; the nominal (TSC) clock is reported beside it
    assert (p["fma_units"], p["fp32_lanes"]) == (2, 8)
    assert p["gflops"] == pytest.approx(2 * 8 * 2 * 3.7, abs=0.05)
    assert p["measured_fma_gflops"] == 118.0
    assert p["gflops_at_cpuinfo_mhz"] == pytest.approx(2 * 8 * 2 * 2.596, abs=0.05)


def test_peak_without_a_probe_uses_the_reported_clock_and_the_flags():
    intel = {"vendor": "GenuineIntel", "family": 6, "all_flags": {"fma", "avx2", "avx512f"}}
    assert compute_limit.fma_layout(intel)[:2] == (2, 16)
    assert compute_limit.fma_layout({"all_flags": {"fma", "avx2"}})[:2] == (2, 8)
    p = compute_limit.peak({**ZEN4, "lscpu_max_mhz": 3000.0, "cpuinfo_mhz": 2000.0}, [None])
    assert (p["clock_source"], p["gflops"]) == ("lscpu CPU max MHz", 96.0)


def _row(side: str, rep: int, wall: float, cpu: float) -> dict:
    return {"arch": "cnn", "side": side, "rep": rep, "warmup": rep == 0, "samples": 1000,
            "wall_s": wall, "cpu_s": cpu, "in_epoch_wall_s": wall / 2}  # fmt: skip


def test_summary_excludes_warm_up_and_takes_ratios_of_medians_and_bests():
    # Prepare: warm-up rows 100x slower; Keras 1000 samples in 1, 2, 4 s; litert in 0.5, 1, 1 s
    rows = [_row("keras_fit", 0, 100, 100), _row("ai-edge-litert", 0, 100, 100)]
    rows += [_row("keras_fit", r, w, w / 2) for r, w in ((1, 1.0), (2, 2.0), (3, 4.0))]
    rows += [_row("ai-edge-litert", r, w, w) for r, w in ((1, 0.5), (2, 1.0), (3, 1.0))]
    # Execute: 1 MFLOP per sample, 1 GFLOP/s peak
    s = summarize(rows, {"cnn": {"training_flops": 1e6}}, 1.0)["cnn"]
    # Assert
    keras, litert = s["keras_fit"], s["ai-edge-litert"]
    assert keras["repetitions"] == 3
    assert keras["wall"] == {"min": 250.0, "median": 500.0, "best": 1000.0}
    assert keras["cpu"]["median"] == 1000.0
    assert keras["in_epoch_wall"]["best"] == 2000.0
    assert litert["vs_keras"]["wall_median"] == 2.0  # 1000/s vs 500/s
    assert litert["vs_keras"]["wall_best"] == 2.0  # 2000/s vs 1000/s
    assert litert["vs_keras"]["cpu_median"] == 1.0  # 1000/s vs 1000/s
    assert litert["share_of_peak"]["wall_best"] == pytest.approx(2.0)  # 2000 x 1e6 / 1e9


@pytest.mark.slow
def test_the_bench_runs_interleaved_pinned_and_records_every_pass(tmp_path):
    # Prepare
    out = tmp_path / "tt.json"
    core = sorted(os.sched_getaffinity(0))[0]
    cmd = [sys.executable, str(ROOT / "bench/train_throughput.py"), "--archs", "mlp"]
    cmd += ["--samples", "128", "--reps", "2", "--core", str(core), "--out", str(out)]
    cmd += ["--board-python", str(BOARD_PYTHON)]
    # Execute
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    # Assert
    assert r.returncode == 0, r.stderr[-2000:]
    rec = json.loads(out.read_text())
    sides = ["keras_fit", "ai-edge-litert", "tf.lite"] + (
        ["tflite-runtime"] * BOARD_PYTHON.exists()
    )
    assert len(rec["rows"]) == 3 * len(sides)  # warm-up + 2 repetitions, every side
    for rep in range(3):
        order = [row["side"] for row in rec["rows"] if row["rep"] == rep]
        k = rep % len(sides)
        assert order == sides[k:] + sides[:k]  # interleaved, rotated
    assert all(row["samples"] == 128 and row["wall_s"] > 0 for row in rec["rows"])
    assert rec["threads"]["threads_by_cpus_at_end"] == {
        str(core): rec["threads"]["process_at_end"]["threads"]
    }
    assert (rec["threads"]["tensorflow_intra_op"], rec["threads"]["tensorflow_inter_op"]) == (1, 1)
    assert rec["summary"]["mlp"]["keras_fit"]["repetitions"] == 2
    assert rec["peak"]["gflops"] > 0 and f"--out {out}" in rec["command"]
