"""The coordinator process of bench/secagg.py: one job whose rounds alternate the arms.

``python bench/secagg_coordinator.py ARGS_JSON`` runs the real ``run_job`` on
``MqttTransport``; its round mode takes each round from a schedule of arms (``plain``:
``SyncRounds``, plain FedAvg; ``complete`` / ``k-regular``: ``SecureRounds`` with the graph
parameters the bench gives) and measures every round the same way, whatever the arm:

- wall time (``perf_counter``) around the round mode's ``run_round`` (global weights out,
  training, every stage, aggregation; no test-set evaluation in this job),
- CPU time of this process (``process_time``: the round logic and paho's network thread), of
  the device processes and their children, and of the broker (``/proc/PID/stat``),
- payload bytes per device, counted at the coordinator's transport for both arms alike: down =
  what it publishes on topics every device receives (global weights, announcements,
  ``secagg-all``) times the selected devices, plus ``secagg-to`` (one device each); up = what
  it takes in from devices (updates, statuses, stage messages). MQTT framing is not counted.

Every round is printed as a ``SECAGG-ROW`` JSON line for the bench to collect.
"""

from __future__ import annotations

import cProfile
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from coordinator import job as job_module  # noqa: E402
from coordinator import secure_rounds, server  # noqa: E402
from coordinator.config import JobConfig  # noqa: E402
from coordinator.secure_stages import SecureRound  # noqa: E402
from edge_client import transport as tr  # noqa: E402
from edge_client.errors import ProtocolError  # noqa: E402
from edge_client.protocol import RoundMetrics, Topics  # noqa: E402
from edge_client.secagg import GraphParameters  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
FANOUT = {"global", "round", "secagg-all"}  # every device receives these
FROM_DEVICES = {"update", "status", "secagg"}
COUNTERS: list[Counter] = []  # the job's counter, once its round mode is built


class Counter:
    """Payload bytes through the coordinator's transport since the last ``take``."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.fanout = self.direct = self.up = self.messages_up = 0

    def kind(self, topic: str) -> str:
        try:
            return self.topics.parse(topic).kind
        except ProtocolError:
            return ""

    def take(self) -> dict[str, int]:
        out = {"fanout": self.fanout, "direct": self.direct, "up": self.up}
        out["messages_up"] = self.messages_up
        self.fanout = self.direct = self.up = self.messages_up = 0
        return out


def counting_transport(counter_box: list[Counter]) -> type[tr.MqttTransport]:
    class Counting(tr.MqttTransport):
        def get(self, timeout: float | None = None) -> tr.Message | None:
            m = super().get(timeout)
            if m is not None and counter_box and counter_box[0].kind(m.topic) in FROM_DEVICES:
                counter_box[0].up += len(m.payload)
                counter_box[0].messages_up += 1
            return m

        def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False):  # type: ignore[no-untyped-def]
            if counter_box:
                kind = counter_box[0].kind(topic)
                if kind in FANOUT:
                    counter_box[0].fanout += len(payload)
                elif kind == "secagg-to":
                    counter_box[0].direct += len(payload)
            return super().publish(topic, payload, qos=qos, retain=retain)

    return Counting


def process_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) of ``pids`` and all their living descendants."""
    children: dict[int, list[int]] = {}
    stats: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        stats[pid] = (int(fields[11]) + int(fields[12])) / TICK
    total, todo, seen = 0.0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += stats.get(pid, 0.0)
        todo += children.get(pid, [])
    return total


def graph_parameters(arm: str, n: int) -> GraphParameters:
    """The graph of a secure arm for n advertisers (bench/secagg.py's docstring says why)."""
    from edge_client.secagg import choose_parameters

    if arm == "complete":
        return GraphParameters(n - 1, (n - 1) // 2 + 1)
    chosen = choose_parameters(n)
    if chosen.k < n - 1:
        return chosen  # what fedcoord itself picks: already k-regular
    k = min(2 * int(np.ceil(np.log2(n))), n - 2 - (n % 2))  # even, below n - 1
    return GraphParameters(k, k // 2 + 1)


class Alternating:
    """A round mode that runs each round in the arm the schedule names, and measures it."""

    def __init__(self, coord: Any, args: dict[str, Any], sync_rounds: Any) -> None:
        self.coord, self.args = coord, args
        self.plain = sync_rounds(coord)
        self.secure = secure_rounds.SecureRounds(coord)
        self.counter = Counter(coord.topics)
        COUNTERS.append(self.counter)
        self.profiles: dict[str, cProfile.Profile] = {}  # arm -> CPU profile (--profile)

    def run_round(
        self, round_: int, weights: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, np.ndarray], RoundMetrics]:
        slot = self.args["schedule"][round_ - 1]
        arm = slot["arm"]
        if arm == "plain":
            mode: Any = self.plain
        else:
            mode = self.secure
            params = functools.partial(graph_parameters, arm)
            secure_rounds.SecureRound = functools.partial(SecureRound, graph_params=params)  # type: ignore[misc]
        devices, broker = self.args["device_pids"], [self.args["broker_pid"]]
        load = os.getloadavg()
        self.counter.take()
        dev0, brk0 = process_cpu(devices), process_cpu(broker)
        prof = self.profiles.setdefault(arm, cProfile.Profile(time.process_time))
        profiling = self.args.get("profile") and not slot["warmup"]
        cpu0, t0 = time.process_time(), time.perf_counter()
        if profiling:
            prof.enable()
        new, m = mode.run_round(round_, weights)
        if profiling:
            prof.disable()
        wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        dev1, brk1 = process_cpu(devices), process_cpu(broker)
        counts = self.counter.take()
        n = len(m.selected)
        row: dict[str, Any] = {
            "round": round_, **slot, "selected": n, "participants": len(m.participants),
            "wall_s": round(wall, 3), "coordinator_cpu_s": round(cpu, 3),
            "devices_cpu_s": round(dev1 - dev0, 2), "broker_cpu_s": round(brk1 - brk0, 2),
            "bytes_up_per_device": round(counts["up"] / n),
            "bytes_down_per_device": round((counts["fanout"] * n + counts["direct"]) / n),
            "messages_up": counts["messages_up"],
            "metrics_bytes_up": m.bytes_up, "metrics_bytes_down": m.bytes_down,
            "loadavg_1m": round(load[0], 2), "time": round(time.time(), 1),
        }  # fmt: skip
        row["cpu_s"] = round(cpu + row["devices_cpu_s"] + row["broker_cpu_s"], 2)
        if m.secagg:
            s = m.secagg
            row["secagg"] = {
                k: s.get(k) for k in ("stage", "graph", "k", "threshold", "bits", "error_bound")
            }
            row["secagg"]["stages"] = s.get("stages")
            row["secagg"]["failed"] = s.get("failed", "")
            row["ok"] = s.get("stage") == "done" and len(m.participants) == n
        else:
            row["ok"] = len(m.participants) == n
        if self.args.get("check_plan"):
            row["aggregate_ok"] = plan_check(weights, new, m)
        print("SECAGG-ROW " + json.dumps(row), flush=True)
        if profiling and round_ == len(self.args["schedule"]):
            for name, p in self.profiles.items():
                p.dump_stats(str(Path(self.args["profile"]) / f"coordinator-{name}.pstats"))
        return new, m


def plan_check(
    base: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray], m: RoundMetrics
) -> bool:
    """Virtual devices: the new global = FedAvg of what the plan says they sent (within the
    secure round's quantization bound plus float32 rounding)."""
    from coordinator.loadgen import Plan, expected_average

    if not m.participants:  # a failed round keeps the weights
        return all(np.array_equal(new[k], base[k]) for k in base)
    expected = expected_average(base, Plan(), m.participants)
    bound = (m.secagg or {}).get("error_bound") or 0.0
    return all(np.allclose(new[k], expected[k], rtol=0, atol=bound + 1e-5) for k in expected)


def main() -> None:
    args = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    job_module.MqttTransport = counting_transport(COUNTERS)  # type: ignore[misc]
    sync_rounds = server.SyncRounds  # the job loop builds its round mode through this name
    server.SyncRounds = lambda coord: Alternating(coord, args, sync_rounds)  # type: ignore[misc]
    cfg = JobConfig(**args["cfg"])
    broker = tr.BrokerConfig("127.0.0.1", args["port"])
    job_module.run_job(cfg, broker=broker, final_models=False)
    print("SECAGG-DONE", flush=True)


if __name__ == "__main__":
    main()
