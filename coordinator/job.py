"""Wire a job together: broker, transport, model, evaluator, coordinator, final models."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

from coordinator.config import JobConfig
from coordinator.dashboard import attach_dashboard
from coordinator.evaluation import Evaluator, load_test_set
from coordinator.job_keys import with_signing_key
from coordinator.model_source import prepare_model
from coordinator.retained import retained_chunk_counts
from coordinator.run_dir import RunDir, RunState
from coordinator.server import SENDER, Coordinator
from edge_client.errors import ConfigError
from edge_client.protocol import DeviceStatus, RoundMetrics, Topics
from edge_client.trainable_model import TrainableModel
from edge_client.transport import BrokerConfig, MqttTransport, Will

if TYPE_CHECKING:
    from coordinator.dashboard.server import DashboardSettings

log = logging.getLogger(__name__)


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError as exc:
        raise ConfigError(f"invalid --listen {listen!r}: use HOST:PORT, e.g. 0.0.0.0:1883") from exc


@contextmanager
def broker_for(cfg: JobConfig) -> Iterator[BrokerConfig]:
    """The configured broker, or an embedded one for the duration of the block."""
    if cfg.broker:
        yield BrokerConfig.from_url(
            cfg.broker,
            username=cfg.username,
            password_file=cfg.password_file,
            ca_file=cfg.ca_file,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            insecure=cfg.insecure,
        )
        return
    from coordinator.broker import EmbeddedBroker

    host, port = parse_listen(cfg.listen)
    broker = EmbeddedBroker(host, port).start()
    try:
        connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        yield BrokerConfig(connect_host, broker.port)
    finally:
        broker.stop()


def run_job(
    cfg: JobConfig,
    *,
    resume: bool = False,
    on_round: Callable[[RoundMetrics], None] | None = None,
    broker: BrokerConfig | None = None,
    final_models: bool = True,
    dashboard: DashboardSettings | None = None,
) -> RunState:
    """Run (or resume) a whole job; returns the final run state.

    With ``dashboard`` settings the web dashboard follows the job from this process. The job
    signs with ``cfg.signing_key``, else with its own key (made on the first run), unless
    ``cfg.unsigned``."""
    cfg = with_signing_key(cfg)
    run_dir = RunDir(cfg.run_path)
    run_dir.create(dataclasses.asdict(cfg), resume=resume)
    model = prepare_model(cfg, run_dir)
    evaluator = None
    if cfg.test_data:
        evaluator = Evaluator(
            TrainableModel(model.tflite, model.manifest), load_test_set(cfg.test_data)
        )
    topics = Topics(cfg.job, cfg.prefix)
    will = Will(topics.status(SENDER), DeviceStatus(SENDER, "offline", 0.0).to_json())

    broker_ctx = broker_for(cfg) if broker is None else nullcontext(broker)
    with broker_ctx as broker_cfg, attach_dashboard(dashboard, broker_cfg, cfg):
        # A persistent session: if the broker starves the coordinator past its keepalive, or
        # the coordinator restarts, QoS 1 updates wait in the broker instead of being lost.
        transport = MqttTransport(broker_cfg, f"{SENDER}-{cfg.job}", will=will, clean_session=False)
        transport.connect()
        try:
            coordinator = Coordinator(cfg, transport, model, run_dir, evaluator, on_round=on_round)
            if broker is not None or cfg.broker:  # an embedded broker starts empty
                for base, count in _leftover_chunks(broker_cfg, cfg.job, topics).items():
                    coordinator.publisher.assume_retained(base, count)
            state = coordinator.run(resume=resume)
        finally:
            transport.wait_published(10)
            transport.close()
        if final_models:
            _final_models(run_dir, model.manifest, state)
    return state


def _leftover_chunks(broker_cfg: BrokerConfig, job: str, topics: Topics) -> dict[str, int]:
    """Chunk counts retained under the model and global topics (an earlier run's, maybe)."""
    scanner = MqttTransport(broker_cfg, f"{SENDER}-{job}-retained")
    scanner.connect()
    try:
        counts = retained_chunk_counts(scanner, [topics.model, topics.global_weights])
    finally:
        scanner.close()
    if counts:
        log.info(
            "retained on the broker: %s; chunks this run does not overwrite will be cleared",
            ", ".join(f"{n} chunk(s) on {base}" for base, n in sorted(counts.items())),
        )
    return counts


def _final_models(run_dir: RunDir, manifest, state: RunState) -> None:  # noqa: ANN001
    weights, _ = run_dir.load_weights(state)
    try:
        from model_export.final import export_trained
    except ImportError:
        log.warning(
            "TensorFlow is not installed: the final weights are in %s only", state.checkpoint
        )
        return
    paths = export_trained(manifest, weights, run_dir.final_dir)
    log.info("final models in %s", paths["model"].parent)
