"""``fedge``: the edge client's command line (``fedge run``, ``fedge info``).

Every option of ``fedge run`` can also come from an ``EDGEFL_*`` environment variable
(flag > environment > default), which suits systemd units. Expected failures
(``EdgeFLError``) print one line ``error: ...`` and exit 1; usage errors exit 2.
Passwords are read from a file or the environment, never from a flag, and never printed.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import platform
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from edge_client import __version__
from edge_client.cli_support import CONNECTION_OPTIONS, ErrorHandlingGroup
from edge_client.config import DEFAULT_HEARTBEAT_S, ClientConfig
from edge_client.data.registry import dataset_names
from edge_client.errors import EdgeFLError, ProtocolError
from edge_client.protocol import DEFAULT_MAX_CHUNK, DEFAULT_PREFIX
from edge_client.protocol.validation import check_id
from edge_client.runtime import RUNTIME_NAMES

if TYPE_CHECKING:
    from edge_client.transport import BrokerConfig

log = logging.getLogger("edge_client.cli")

option = functools.partial(click.option, show_envvar=True)  # --help names each variable


def configure_logging(verbose: int) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def _id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_id(value, "device id" if param.name == "device_id" else "job id")
    except ProtocolError as exc:
        raise click.BadParameter(str(exc)) from None


def _partition(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    from edge_client.data import parse_scheme

    try:
        return str(parse_scheme(value))
    except EdgeFLError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(
    cls=ErrorHandlingGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="fedge")
def main() -> None:
    """Edge client of the federated-learning toolkit: trains on local data, shares weights only."""


def connection_options() -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The broker credential and TLS options (``CONNECTION_OPTIONS``), in that order."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for o in reversed(CONNECTION_OPTIONS):
            if o.kind == "flag":
                fn = option(o.flag, envvar=o.envvar, is_flag=True, help=o.help)(fn)
            else:
                kind = click.Path(dir_okay=False) if o.kind == "file" else None
                fn = option(o.flag, envvar=o.envvar, type=kind, help=o.help)(fn)
        return fn

    return decorate


def broker_config(opts: dict[str, Any]) -> BrokerConfig:
    """``--broker`` with the connection options."""
    from edge_client.transport import BrokerConfig

    return BrokerConfig.from_url(
        opts["broker"], **{o.field: opts[o.field] for o in CONNECTION_OPTIONS}
    )


@main.command()
@option(
    "--broker",
    envvar="EDGEFL_BROKER",
    required=True,
    metavar="URL",
    help="MQTT broker: mqtt://HOST[:1883] or mqtts://HOST[:8883] (TLS).",
)
@option("--job", envvar="EDGEFL_JOB", required=True, callback=_id, help="Job id to join.")
@option(
    "--device-id",
    envvar="EDGEFL_DEVICE_ID",
    required=True,
    callback=_id,
    help="This device's id (also its broker user name when ACLs bind them).",
)
@option(
    "--data",
    "data_path",
    envvar="EDGEFL_DATA",
    type=click.Path(),
    help="Local data: a .npz, IDX files, CIFAR-10 batches, an image folder <class>/*.png|jpg, "
    "or a tar of images.",
)
@option(
    "--dataset",
    envvar="EDGEFL_DATASET",
    type=click.Choice(dataset_names(), case_sensitive=False),
    help="A named data set instead of --data (found in $EDGEFL_DATA_DIR or system paths).",
)
@option(
    "--split",
    envvar="EDGEFL_SPLIT",
    type=click.Choice(["train", "test"]),
    default="train",
    show_default=True,
    help="Which split of the data to train on.",
)
@option(
    "--partition",
    envvar="EDGEFL_PARTITION",
    callback=_partition,
    metavar="SCHEME",
    help="Train on one part of the data (simulations): iid, dirichlet:ALPHA, shards:K, sequential.",
)
@option(
    "--partition-index",
    envvar="EDGEFL_PARTITION_INDEX",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Which part this device holds (0-based).",
)
@option(
    "--num-partitions",
    envvar="EDGEFL_NUM_PARTITIONS",
    type=click.IntRange(min=1),
    help="Number of parts the data is split into (required with --partition).",
)
@option(
    "--partition-seed",
    envvar="EDGEFL_PARTITION_SEED",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the split; every simulated device must use the same one.",
)
@option(
    "--state-dir",
    envvar="EDGEFL_STATE_DIR",
    type=click.Path(file_okay=False),
    help="Where the model, last global weights and progress are kept "
    "[default: ~/.local/state/edgefl/JOB/DEVICE].",
)
@option(
    "--runtime",
    envvar="EDGEFL_RUNTIME",
    type=click.Choice(RUNTIME_NAMES),
    help="TFLite interpreter [default: the first installed of ai-edge-litert, tflite-runtime].",
)
@option(
    "--threads",
    envvar="EDGEFL_THREADS",
    type=click.IntRange(min=1),
    help="Interpreter threads [default: chosen by the runtime].",
)
@option(
    "--heartbeat",
    envvar="EDGEFL_HEARTBEAT",
    type=click.FloatRange(min=0),
    default=DEFAULT_HEARTBEAT_S,
    show_default=True,
    metavar="SECONDS",
    help="Republish the status this often (also during training); 0 disables.",
)
@connection_options()
@option(
    "--trust-key",
    envvar="EDGEFL_TRUST_KEY",
    metavar="PUBKEY",
    help="Ed25519 public key of the coordinator (a signing.pub file from fedcoord keys "
    "generate, or its base64): refuse models and round announcements not signed with it.",
)
@option(
    "--exit-on-stop",
    envvar="EDGEFL_EXIT_ON_STOP",
    is_flag=True,
    help="Exit (status 0) when the job is stopped, instead of waiting for the next run.",
)
@option(
    "--max-chunk",
    envvar="EDGEFL_MAX_CHUNK",
    type=click.IntRange(min=1024),
    default=DEFAULT_MAX_CHUNK,
    show_default=True,
    metavar="BYTES",
    help="Largest MQTT payload this device publishes (updates are split into chunks).",
)
@option(
    "--prefix",
    envvar="EDGEFL_PREFIX",
    default=DEFAULT_PREFIX,
    show_default=True,
    help="Topic prefix shared with the coordinator.",
)
@option(
    "--eval/--no-eval",
    "evaluate",
    envvar="EDGEFL_EVAL",
    default=True,
    show_default=True,
    help="Report local train accuracy with each update (one extra forward pass).",
)
@option(
    "--connect-timeout",
    envvar="EDGEFL_CONNECT_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up (exit 1) if the broker cannot be reached at start; later outages are "
    "retried forever with backoff.",
)
@click.option("-v", "--verbose", count=True, help="Debug log output.")
def run(**opts: Any) -> None:
    """Join a job: wait for rounds, train on local data, publish the weights.

    Only weights leave the device. Every option can also be set by the environment
    variable shown with it; a flag wins over the environment. Stop with SIGTERM or
    Ctrl-C: the client publishes its status as offline and exits 0.

    \b
    fedge run --broker mqtt://192.168.1.10:1883 --job demo --device-id pi-01 \\
              --data ~/data/fashion-mnist
    """
    configure_logging(opts.pop("verbose"))
    config = _config(opts)
    from edge_client.client import EdgeClient, mqtt_transport

    transport = mqtt_transport(config)
    transport.connected_file = config.resolved_state_dir / "connected"  # see devices/flash.py
    client = EdgeClient(config, transport)

    def on_signal(signum: int, frame: object) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        client.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sys.exit(client.run())


def _config(opts: dict[str, Any]) -> ClientConfig:
    if (opts["data_path"] is None) == (opts["dataset"] is None):
        raise click.UsageError("give exactly one of --data PATH or --dataset NAME")
    if opts["partition"] is not None and opts["num_partitions"] is None:
        raise click.UsageError("--partition needs --num-partitions N (and --partition-index I)")
    if opts["partition"] is None and opts["num_partitions"] is not None:
        raise click.UsageError("--num-partitions needs --partition SCHEME")
    if opts["num_partitions"] is not None and opts["partition_index"] >= opts["num_partitions"]:
        raise click.UsageError(
            f"--partition-index {opts['partition_index']} must be below "
            f"--num-partitions {opts['num_partitions']}"
        )
    return ClientConfig(
        broker=broker_config(opts),
        job=opts["job"],
        device_id=opts["device_id"],
        data_path=opts["data_path"],
        dataset=opts["dataset"],
        split=opts["split"],
        partition=opts["partition"],
        partition_index=opts["partition_index"],
        num_partitions=opts["num_partitions"] or 1,
        partition_seed=opts["partition_seed"],
        state_dir=opts["state_dir"],
        runtime=opts["runtime"],
        num_threads=opts["threads"],
        heartbeat_s=opts["heartbeat"],
        max_chunk=opts["max_chunk"],
        prefix=opts["prefix"],
        exit_on_stop=opts["exit_on_stop"],
        evaluate=opts["evaluate"],
        connect_timeout_s=opts["connect_timeout"],
        trust_key=opts["trust_key"],
    )


@main.command()
@option(
    "--trust-key",
    envvar="EDGEFL_TRUST_KEY",
    metavar="PUBKEY",
    help="The key `fedge run` would trust (as its --trust-key): say which signatures it enforces.",
)
def info(trust_key: str | None) -> None:
    """Show the interpreter runtimes, numpy, paho-mqtt and the signature checks of this board.

    Exits 1 when a trusted key is set but cannot be used (`fedge run` would refuse to start).
    """
    from importlib import metadata

    import numpy as np

    from edge_client.runtime import _CANDIDATES, _try

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    click.echo(f"edge_client  {__version__}")
    click.echo(
        f"python       {platform.python_version()} ({platform.machine()}, {platform.system()})"
    )
    click.echo(f"numpy        {np.__version__}")
    click.echo(f"paho-mqtt    {version('paho-mqtt')}")
    click.echo(f"click        {version('click')}")
    found = False
    for name, module, dist in _CANDIDATES:
        if name == "tensorflow":  # importing TensorFlow takes seconds and GBs: only look
            if importlib.util.find_spec("tensorflow") is not None:
                state = "installed (last resort; not imported)"
                click.echo(f"runtime      tensorflow {version('tensorflow')}: {state}")
            continue
        runtime = _try(name, module, dist)
        if runtime is not None:
            mark = "" if found else " (used by default)"
            click.echo(f"runtime      {runtime.name} {runtime.version}{mark}")
            found = True
    if not found:
        click.echo(
            "runtime      none: pip install ai-edge-litert "
            "(or tflite-runtime==2.14.0 with 'numpy<2' on 32-bit Raspberry Pi OS)"
        )
    crypto = version("cryptography")
    click.echo(
        f"cryptography {crypto}" + ("" if crypto == "not installed" else " (signature checks)")
    )
    _signatures(trust_key, crypto != "not installed")


def _signatures(trust_key: str | None, have_crypto: bool) -> None:
    """The ``signatures`` line of ``fedge info``; ConfigError if the key is unusable."""
    if not trust_key:
        hint = "" if have_crypto else " (and pip install cryptography)"
        click.echo(
            "signatures   not enforced: no --trust-key / EDGEFL_TRUST_KEY, any model and round "
            f"announcement is accepted; set one{hint} to refuse unsigned ones"
        )
        return
    from edge_client.errors import ConfigError
    from edge_client.signing import Verifier

    try:
        verifier = Verifier.from_spec(trust_key)
    except ConfigError as exc:
        click.echo(f"signatures   REQUIRED but unusable: {exc}")
        raise
    click.echo(
        f"signatures   enforced: the model and every round announcement must be signed by key "
        f"{verifier.key_id} ({trust_key})"
    )


if __name__ == "__main__":
    main(prog_name="fedge")
