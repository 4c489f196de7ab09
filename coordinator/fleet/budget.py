"""Is this machine fast enough to simulate the fleet faithfully? Calibrate, estimate, measure.

A simulated board computes for real for ``c`` seconds per local training, then waits
``c x (factor - 1)``, then moves the weights over its link. Its duty cycle (the share of one
core it keeps busy) is ``c / (c x factor + transfer + idle)``; the fleet's CPU demand is the
sum of its boards' duty cycles. If that exceeds the cores, boards queue for the CPU and the
wall times measure this machine, not the fleet: the simulator refuses to start (unless told
to go on) and reports the utilisation it really ran at (device CPU time / wall time / cores).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from coordinator.fleet.spec import FleetSpec
from edge_client.manifest import Manifest
from edge_client.trainable_model import TrainableModel

CALIBRATION_S = 1.0  # measured training steps on this machine, after a warm-up


def machine_cores() -> int:
    """CPUs this process may run on (affinity, not the host's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Calibration:
    """One core of this machine on the job's model (one interpreter thread, like a board)."""

    train_step_s: float  # one train batch
    eval_sample_s: float  # one sample of the local accuracy pass
    batch_size: int
    weights_bytes: int  # float32 weights: what one global model or update moves

    def training_s(self, samples: int, epochs: int, evaluate: bool = True) -> float:
        """Compute seconds of one local training on ``samples`` (what a board does per round)."""
        steps = math.ceil(samples / self.batch_size) * epochs
        return steps * self.train_step_s + (samples * self.eval_sample_s if evaluate else 0.0)


def calibrate(
    tflite: bytes, manifest: Manifest, *, runtime: str | None = None, seconds: float = CALIBRATION_S
) -> Calibration:
    """Time the model's train step (and evaluation) on random data, one thread, in CPU time."""
    model = TrainableModel(tflite, manifest, runtime=runtime, num_threads=1)
    b = manifest.batch_size
    rng = np.random.default_rng(0)
    x = rng.random((b, *manifest.input_shape), dtype=np.float32)  # (b, H, W, C)
    y = rng.integers(0, manifest.classes, b)
    lr = float(manifest.hyperparameters.get("lr", 0.01)) * 1e-3  # tiny: stay finite
    for _ in range(3):
        model.train_batch(x, y, lr)
    # Thread CPU time, not wall time: on a machine busy with other work the wall time would
    # count the waits for a core (one interpreter thread runs in the calling thread).
    steps, t0 = 0, time.thread_time()
    while (elapsed := time.thread_time() - t0) < seconds or steps < 10:
        model.train_batch(x, y, lr)
        steps += 1
    xe = np.repeat(x, max(1, 256 // b), axis=0)
    ye = np.repeat(y, max(1, 256 // b))
    t1 = time.thread_time()
    model.evaluate(xe, ye, b)
    eval_s = (time.thread_time() - t1) / len(xe)
    weights = sum(w.size * 4 for w in model.get_weights().values())
    return Calibration(elapsed / steps, eval_s, b, weights)


@dataclass(frozen=True)
class BoardDemand:
    device_id: str
    compute_s: float  # local training on this machine
    busy_s: float  # compute x factor + transfers: one training cycle of the board
    duty: float  # share of a core it keeps busy


@dataclass(frozen=True)
class Demand:
    boards: tuple[BoardDemand, ...]
    cores: int
    max_utilisation: float
    mode: str  # "sync": a round waits for its slowest board | "continuous": no waiting

    @property
    def total(self) -> float:
        return sum(b.duty for b in self.boards)

    @property
    def utilisation(self) -> float:
        return self.total / self.cores

    @property
    def oversubscribed(self) -> bool:
        return self.utilisation > self.max_utilisation

    def describe(self) -> str:
        return (
            f"estimated CPU demand {self.total:.2f} cores of {self.cores} "
            f"({100 * self.utilisation:.0f} %, limit {100 * self.max_utilisation:.0f} %, "
            f"{self.mode} rounds)"
        )


def estimate_demand(
    fleet: FleetSpec,
    cal: Calibration,
    samples: Mapping[str, int],
    *,
    epochs: int,
    evaluate: bool = True,
    mode: str = "sync",
    online: Mapping[str, float] | None = None,
    cores: int | None = None,
    coordinator_s: float = 0.0,
) -> Demand:
    """Each board's duty cycle and the fleet's total.

    ``mode="sync"``: every board's cycle is the round, as long as the slowest board's busy
    time plus ``coordinator_s`` (aggregation, evaluation). ``mode="continuous"`` (boards that
    never wait for each other, as in asynchronous training): a board's cycle is its own busy
    time, an upper bound on its demand. ``online`` scales each board by the share of time
    it is scheduled online."""
    boards: list[BoardDemand] = []
    for b in fleet.boards:
        compute = cal.training_s(samples[b.device_id], epochs, evaluate)
        busy = compute * b.slowdown + b.link.transfer_s(cal.weights_bytes, cal.weights_bytes)
        boards.append(BoardDemand(b.device_id, compute, busy, 0.0))
    round_s = max(x.busy_s for x in boards) + coordinator_s
    out = []
    for x in boards:
        cycle = round_s if mode == "sync" else x.busy_s
        share = 1.0 if online is None else online.get(x.device_id, 1.0)
        out.append(BoardDemand(x.device_id, x.compute_s, x.busy_s, share * x.compute_s / cycle))
    return Demand(tuple(out), cores or machine_cores(), fleet.max_utilisation, mode)


def measured_utilisation(device_cpu_s: float, wall_s: float, cores: int) -> float:
    return device_cpu_s / (wall_s * cores) if wall_s > 0 else 0.0


def partition_sizes(
    dataset: str, partition: str, seed: int, devices: Sequence[str]
) -> dict[str, int]:
    """Samples each board holds (its partition of the data set's training split)."""
    from edge_client.data import load_dataset
    from edge_client.data import partition as split

    labels = load_dataset(dataset, "train").y
    parts = split(labels, len(devices), partition, seed)
    return {d: len(p) for d, p in zip(devices, parts)}
