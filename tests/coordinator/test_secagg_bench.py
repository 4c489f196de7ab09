"""bench/secagg.py on its quick setting: 4 virtual devices in secure rounds through the board's
own stage code (coordinator/loadgen/secure.py), every arm measured alike, and a record whose
figures recompute from its rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ROW_FIELDS = {
    "round", "arm", "cycle", "warmup", "selected", "participants", "wall_s", "cpu_s",
    "coordinator_cpu_s", "devices_cpu_s", "broker_cpu_s", "bytes_up_per_device",
    "bytes_down_per_device", "loadavg_1m", "ok", "aggregate_ok",
}  # fmt: skip


@pytest.mark.slow
def test_the_quick_secagg_bench_records_every_round_of_every_arm(export_dir, tmp_path):
    # Prepare: the mlp export (199,210 parameters; shared with the other tests of the session)
    model, out = export_dir("mlp"), tmp_path / "secagg.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "bench/secagg.py"), "--quick", "--model-dir", str(model)]
    # Execute
    run = subprocess.run([*cmd, "--out", str(out)], env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    record = json.loads(out.read_text())
    # Assert: one warm-up cycle and one measured cycle of the 3 arms, in rotated order
    assert record["command"].startswith("python bench/secagg.py --quick")
    assert {"loadavg_before", "loadavg_after", "loadavg_samples", "git", "machine"} <= set(record)
    (size,) = record["sizes"]
    rows = size["rows"]
    assert size["devices"] == 4 and len(rows) == 6
    assert [r["arm"] for r in rows] == ["plain", "complete", "k-regular"] + [
        "complete",
        "k-regular",
        "plain",
    ]
    for row in rows:
        assert set(row) >= ROW_FIELDS, ROW_FIELDS - set(row)
        assert row["ok"] and row["aggregate_ok"] and row["participants"] == 4
        assert row["wall_s"] > 0 and row["coordinator_cpu_s"] > 0
    # Secure rounds: every stage done, the graph each arm asked for; 4 + 4 (P + 1) bytes of
    # masked vector per device at least, about the float32 update of a plain round
    params = 199_210
    for row in rows:
        if row["arm"] == "plain":
            assert "secagg" not in row and row["bytes_up_per_device"] > 4 * params
            continue
        s = row["secagg"]
        assert s["stage"] == "done" and set(s["stages"]) == {"keys", "shares", "masked", "unmask"}
        assert (s["graph"], s["k"], s["threshold"]) == (
            ("complete", 3, 2) if row["arm"] == "complete" else ("k-regular", 2, 2)
        )
        assert 4 * (params + 1) < row["bytes_up_per_device"] < 1.05 * 4 * params
    # The summary and the target recompute from the rows
    sys.path.insert(0, str(ROOT / "bench"))
    import secagg

    assert size["summary"] == json.loads(json.dumps(secagg.summarise(size)))
    plain = [r["wall_s"] for r in rows if r["arm"] == "plain" and not r["warmup"]]
    assert size["summary"]["plain"]["wall_s"]["median"] == plain[0]
    assert set(size["summary"]["complete"]["vs_plain"]) == set(secagg.FIELDS)
    assert record["target"]["wall_at_most"] == 1.3
    figures = subprocess.run([sys.executable, str(ROOT / "bench/secagg.py"), "--figures",
                              str(out)], env=env, capture_output=True, text=True, check=True)  # fmt: skip
    assert "| 4 (virtual) | complete (3, 2) |" in figures.stdout


def test_the_secagg_table_in_benchmarks_md_recomputes_from_its_record():
    # Prepare
    sys.path.insert(0, str(ROOT / "bench"))
    import secagg

    record = json.loads((ROOT / "bench/results/secagg.json").read_text())
    doc = (ROOT / "docs/benchmarks.md").read_text()
    # Execute
    table = secagg.table(record)
    # Assert: the doc quotes the table as the record gives it, and the target it states
    assert table in doc
    target = record["target"]
    assert all(target[arm]["met"] for arm in ("complete", "k-regular"))
    assert "**Target (issue 13), 20 devices: met**" in doc
