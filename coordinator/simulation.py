"""A fleet of simulated boards on one machine: N ``fedge run`` processes + the coordinator.

Each device is a separate process running the real edge client with its own partition
of a data set, its own state directory and log file, talking MQTT to the same broker
as the coordinator.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.config import JobConfig
from coordinator.job import broker_for, run_job
from coordinator.job_keys import with_signing_key
from coordinator.run_dir import RunState
from edge_client.data import DATASETS, dataset_names
from edge_client.errors import ConfigError
from edge_client.protocol import RoundMetrics
from edge_client.transport import BrokerConfig

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
STOP_GRACE_S = 20.0  # devices exit by themselves on the job's "stopped" control message


@dataclass(frozen=True)
class FleetConfig:
    devices: int = 5
    dataset: str = "fashion-mnist"
    partition: str = (
        "iid"  # iid | dirichlet:ALPHA | shards:K | sequential (the paper's file-order split)
    )
    partition_seed: int = 0
    client_python: str = (
        sys.executable
    )  # e.g. .venv-board/bin/python to run boards on tflite-runtime
    runtime: str | None = None  # force a TFLite runtime on the devices
    threads: int = 1  # interpreter threads per device
    extra_args: tuple[str, ...] = ()  # more `fedge run` options for every device

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ConfigError("--devices must be at least 1")
        if self.dataset not in DATASETS:
            raise ConfigError(
                f"unknown data set {self.dataset!r}: use one of {', '.join(dataset_names())}"
            )
        if not Path(self.client_python).exists():
            raise ConfigError(f"--client-python {self.client_python} does not exist")


def device_ids(n: int) -> list[str]:
    return [f"sim-{i:02d}" for i in range(n)]


def device_command(
    fleet: FleetConfig,
    job: JobConfig,
    broker: BrokerConfig,
    index: int,
    state_dir: Path,
    *,
    device_id: str | None = None,  # default: sim-NN
) -> list[str]:
    cmd = [
        fleet.client_python,
        "-m",
        "edge_client.cli",
        "run",
        "--broker",
        broker.url,
        "--job",
        job.job,
        "--device-id",
        device_id or device_ids(fleet.devices)[index],
        "--dataset",
        fleet.dataset,
        "--partition",
        fleet.partition,
        "--partition-index",
        str(index),
        "--num-partitions",
        str(fleet.devices),
        "--partition-seed",
        str(fleet.partition_seed),
        "--state-dir",
        str(state_dir),
        "--threads",
        str(fleet.threads),
        "--prefix",
        job.prefix,
        "--max-chunk",  # the job's chunk size for the devices' updates too
        str(job.max_chunk),
        "--exit-on-stop",
    ]
    if fleet.runtime:
        cmd += ["--runtime", fleet.runtime]
    return cmd + list(fleet.extra_args)


@contextmanager
def fleet_processes(
    fleet: FleetConfig, job: JobConfig, broker: BrokerConfig, run_path: Path
) -> Iterator[list[subprocess.Popen]]:
    """Start the devices; on exit wait for them to stop by themselves, then terminate."""
    dev_dir = run_path / "devices"
    dev_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        ),
    }
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for i, dev in enumerate(device_ids(fleet.devices)):
            out = open(dev_dir / f"{dev}.log", "ab")  # noqa: SIM115 - closed in finally
            logs.append(out)
            cmd = device_command(fleet, job, broker, i, dev_dir / dev)
            procs.append(
                subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            )
        log.info("started %d simulated devices (logs in %s)", len(procs), dev_dir)
        yield procs
    finally:
        deadline = time.monotonic() + STOP_GRACE_S
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        for out in logs:
            out.close()


def simulate(
    job: JobConfig,
    fleet: FleetConfig,
    *,
    resume: bool = False,
    on_round: Callable[[RoundMetrics], None] | None = None,
) -> RunState:
    """Run a whole job with ``fleet.devices`` simulated boards; returns the final state."""
    job, fleet = prepared(job, fleet)
    with broker_for(job) as broker, fleet_processes(fleet, job, broker, job.run_path):
        return run_job(job, resume=resume, on_round=on_round, broker=broker)


def prepared(
    job: JobConfig, fleet: FleetConfig, *, min_devices: int | None = None
) -> tuple[JobConfig, FleetConfig]:
    """The job and fleet a simulation runs: evaluation on the data set's test split, the
    fleet awaited before round 1 (``min_devices``, default all), the devices trusting the
    coordinator's signing key and CA."""
    changes: dict[str, Any] = {}
    if job.test_data is None:
        changes["test_data"] = fleet.dataset
    if job.min_devices == JobConfig.min_devices:
        changes["min_devices"] = fleet.devices if min_devices is None else min_devices
    job = with_signing_key(dataclasses.replace(job, **changes))
    extra: list[str] = []
    if job.signing_key:  # the devices trust the key the coordinator signs with
        from edge_client.signing import Signer

        extra += ["--trust-key", Signer.from_file(job.signing_key).public_b64]
    if job.ca_file:
        extra += ["--ca-file", job.ca_file]
    return job, dataclasses.replace(fleet, extra_args=(*fleet.extra_args, *extra))
