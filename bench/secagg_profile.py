"""Where a secure round's CPU goes: the boards' and the coordinator's stage code, in one process.

N boards (``edge_client.secure_round.SecureRound``) and the coordinator
(``coordinator.secure_stages.SecureRound``) run one secure round of a model with P parameters
(``cnn``: 215,370), every stage message through its real envelope bytes but handed over in
memory instead of MQTT, so only the stage code is timed (CPU time: the machine is shared). Prints the CPU seconds of each stage
on one board (the mean over the boards) and on the coordinator, and the top functions of
cProfile for each side (``--profile-out DIR`` keeps the .pstats files).

    .venv/bin/python bench/secagg_profile.py --devices 20 [--k 10 --t 6] [--params 215370]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from coordinator.secure_stages import SecureRound as CoordinatorRound  # noqa: E402
from edge_client.protocol import Envelope, SecAggParams, decode, read_stage  # noqa: E402
from edge_client.secagg import GraphParameters, choose_parameters, choose_quantization  # noqa: E402
from edge_client.secure_round import SecureRound as BoardRound  # noqa: E402
from edge_client.secure_round import quantized_update  # noqa: E402

COORDINATOR_STEPS = {  # the stage the coordinator opened -> what it did to get there
    "shares": "coordinator: keys in, key list out",
    "masked": "coordinator: shares in, routed out",
    "unmask": "coordinator: masked in, unmask out",
    "done": "coordinator: replies in, secrets rebuilt, unmasked",
}


def run(n: int, p: int, graph: GraphParameters | None) -> dict[str, object]:
    rng = np.random.default_rng(0)
    base = {"w": rng.normal(size=p).astype(np.float32)}
    q = choose_quantization(n, 3000, 1.0)
    params = SecAggParams("00112233aabbccdd", q.clip, q.scale, 3000, n, q.ring.bits, 30.0)
    devices = [f"sim-{i:02d}" for i in range(n)]
    to_coord: list[tuple[str, bytes]] = []
    to_boards: list[tuple[str, bytes]] = []

    def from_board(d: str):  # noqa: ANN202
        def publish(env: Envelope) -> int:
            to_coord.append((d, env.to_bytes()))
            return 0

        return publish

    def to_all(env: Envelope) -> int:
        raw = env.to_bytes()
        to_boards.extend((d, raw) for d in devices)
        return len(raw)

    def to_one(d: str, env: Envelope) -> int:
        to_boards.append((d, env.to_bytes()))
        return 0

    coord = CoordinatorRound(
        job="bench", run="r", round=1, selected=frozenset(devices), params=params,
        names=["w"], base=base, keys_deadline=time.time() + 600, publish_all=to_all,
        publish_to=to_one, graph_params=(lambda _: graph) if graph else choose_parameters,
    )  # fmt: skip
    board_prof = cProfile.Profile(time.process_time)  # CPU, not wall: the machine is shared
    coord_prof = cProfile.Profile(time.process_time)
    stage_cpu: dict[str, float] = {}
    boards = {}
    t = time.process_time()
    board_prof.enable()
    for d in devices:
        trained = {"w": base["w"] + rng.normal(0, 0.01, p).astype(np.float32)}
        boards[d] = BoardRound(
            device=d, job="bench", run="r", round_=1, params=params,
            vector=quantized_update(trained, base, ["w"], 3000, params), publish=from_board(d),
        )  # fmt: skip
        boards[d].start()
    board_prof.disable()
    stage_cpu["board: quantize + keys"] = (time.process_time() - t) / n
    names = ["board: shares", "board: masked", "board: unmask reply"]
    step = 0
    while not coord.complete:
        t = time.process_time()
        coord_prof.enable()
        for d, raw in to_coord:
            coord.offer(decode(raw), d, len(raw))
        to_coord.clear()
        coord.advance()
        coord_prof.disable()
        stage_cpu[COORDINATOR_STEPS.get(coord.stage, coord.stage)] = time.process_time() - t
        if coord.complete:
            break
        t = time.process_time()
        board_prof.enable()
        for d, raw in to_boards:
            boards[d].on_message(read_stage(decode(raw)))
        to_boards.clear()
        board_prof.disable()
        stage_cpu[names[step]] = (time.process_time() - t) / n
        step += 1
    assert coord.stage == "done", coord.failed
    return {"stage_cpu": stage_cpu, "board": board_prof, "coordinator": coord_prof,
            "graph": coord.record()}  # fmt: skip


def top(prof: cProfile.Profile, limit: int) -> str:
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(limit)
    return "\n".join(out.getvalue().splitlines()[4:])


def top_rows(prof: cProfile.Profile, limit: int) -> list[dict[str, object]]:
    """The ``limit`` functions with the most CPU time of their own, as records."""
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    rows = [
        {"function": f"{Path(file).name}:{line}({name})", "calls": nc, "tottime_s": round(tt, 4),
         "cumtime_s": round(ct, 4)}
        for (file, line, name), (_, nc, tt, ct, _) in stats.items()
    ]  # fmt: skip
    return sorted(rows, key=lambda r: -float(r["tottime_s"]))[:limit]  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--params", type=int, default=215_370, help="model parameters (cnn)")
    parser.add_argument("--k", type=int, default=0, help="graph degree (0: fedcoord's choice)")
    parser.add_argument("--t", type=int, default=0, help="threshold, with --k")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--profile-out", default=None, help="a directory for the .pstats files")
    parser.add_argument("--out", default=None, help="append the figures to this JSON record")
    parser.add_argument("--label", default="", help="what code this run measured (in --out)")
    args = parser.parse_args()
    graph = GraphParameters(args.k, args.t) if args.k else None
    result = run(args.devices, args.params, graph)
    g = result["graph"]
    print(f"{args.devices} devices, {args.params} parameters, k={g['k']} t={g['threshold']}")  # type: ignore[index]
    for stage, cpu in result["stage_cpu"].items():  # type: ignore[attr-defined]
        print(f"  {stage:50s} {cpu * 1000:9.1f} ms CPU")
    for side in ("board", "coordinator"):
        prof = result[side]
        assert isinstance(prof, cProfile.Profile)
        print(f"\n== {side} ({'all boards' if side == 'board' else 'one round'}) ==")
        print(top(prof, args.top))
        if args.profile_out:
            Path(args.profile_out).mkdir(parents=True, exist_ok=True)
            prof.dump_stats(str(Path(args.profile_out) / f"{side}-{args.devices}.pstats"))
    if args.out:
        out = Path(args.out)
        record = json.loads(out.read_text()) if out.exists() else {"runs": []}
        record["runs"].append({
            "command": "python bench/secagg_profile.py " + " ".join(sys.argv[1:]),
            "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                  capture_output=True, text=True).stdout.strip(),
            "label": args.label,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "loadavg": [round(x, 2) for x in os.getloadavg()],
            "devices": args.devices, "params": args.params, "k": g["k"],  # type: ignore[index]
            "threshold": g["threshold"],  # type: ignore[index]
            "stage_cpu_ms": {k: round(v * 1000, 1) for k, v in result["stage_cpu"].items()},  # type: ignore[attr-defined]
            "top_board": top_rows(result["board"], args.top),  # type: ignore[arg-type]
            "top_coordinator": top_rows(result["coordinator"], args.top),  # type: ignore[arg-type]
        })  # fmt: skip
        out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
