"""The job options: every command that takes a job or broker setting declares it here.

``fedcoord start`` and ``fedcoord simulate`` take all of them (:func:`job_options`), with
None as the default so that precedence works: a flag given on the command line wins over
EDGEFL_<NAME> in the environment, which wins over the TOML job file (--config), which wins
over the defaults shown in --help. Other commands (``site``, ``loadgen``, ``monitor``,
``dashboard``) pick single options by job field with :func:`option` and give them their
own defaults; :func:`connection_options` is the broker address and credentials.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from coordinator.config import (
    DEFAULT_MAX_STALENESS,
    LATE_UPDATES,
    MODES,
    STALE_CHANGES,
    JobConfig,
)
from coordinator.influence import InfluenceBounds
from coordinator.strategies import STRATEGY_NAMES, strategy_help
from edge_client.cli_support import CONNECTION_OPTIONS
from edge_client.data import dataset_names
from edge_client.transport import BrokerConfig
from model_export.registry import JOB_ARCHITECTURES, OPTIMIZERS, architecture_help

D = JobConfig()
Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]

# (flag, field, type, help) in the order --help shows them.
JOB_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--job", "job", str, f"Job name: the MQTT topic level fl/v1/<job>/... [default: {D.job}]"),
    (
        "--rounds",
        "rounds",
        int,
        f"Federated rounds; with --mode buffered, global versions. [default: {D.rounds}]",
    ),
    (
        "--run-dir",
        "run_dir",
        str,
        "Run directory: checkpoints, metrics.jsonl, final models. [default: runs/<job>]",
    ),
    (
        "--model-dir",
        "model_dir",
        str,
        "An exported model (fedcoord export --out). Default: export --model into the run directory.",
    ),
    (
        "--model",
        "model",
        click.Choice(JOB_ARCHITECTURES),
        f"Architecture to export when --model-dir is not given: {architecture_help(JOB_ARCHITECTURES)}. "
        f"[default: {D.model}]",
    ),
    (
        "--optimizer",
        "optimizer",
        click.Choice(OPTIMIZERS),
        f"On-device optimizer of that export. [default: {D.optimizer}]",
    ),
    ("--lr", "lr", float, f"Device learning rate, announced every round. [default: {D.lr}]"),
    (
        "--batch-size",
        "batch_size",
        int,
        f"Device batch size of that export. [default: {D.batch_size}]",
    ),
    (
        "--prox-mu",
        "prox_mu",
        float,
        f"FedProx mu baked into that export (needed by --strategy fedprox). [default: {D.prox_mu}]",
    ),
    (
        "--momentum",
        "momentum",
        float,
        f"SGD momentum of that export. [default: {D.momentum}]",
    ),
    ("--epochs", "epochs", int, f"Local epochs per round. [default: {D.epochs}]"),
    (
        "--min-devices",
        "min_devices",
        int,
        f"Devices that must be online before a round starts. [default: {D.min_devices}]",
    ),
    (
        "--fraction",
        "fraction",
        float,
        f"Share of online devices selected each round. [default: {D.fraction}]",
    ),
    (
        "--clients-per-round",
        "clients_per_round",
        int,
        "K devices picked at random (seeded) each round; 0 uses --fraction. [default: 0]",
    ),
    (
        "--min-results",
        "min_results",
        int,
        f"Updates needed to close a round; fewer retries the round. [default: {D.min_results}]",
    ),
    (
        "--mode",
        "mode",
        click.Choice(MODES),
        "sync: rounds wait for their selected devices (semi-synchronous with --over-select); "
        "buffered: asynchronous buffered aggregation (FedBuff): boards train continuously "
        "and every --buffer-size updates make a new global version. See docs/round-modes.md. "
        f"[default: {D.mode}]",
    ),
    (
        "--buffer-size",
        "buffer_size",
        int,
        f"--mode buffered: updates folded into each new global version. [default: {D.buffer_size}]",
    ),
    (
        "--max-concurrency",
        "max_concurrency",
        int,
        "--mode buffered: most devices training at once; 0: every online device. [default: 0]",
    ),
    (
        "--over-select",
        "over_select",
        float,
        "Semi-synchronous rounds: select this many times the devices --fraction or "
        "--clients-per-round name and close the round once that many updates are in; the "
        f"others are told the round closed. 1 waits for every selected device. [default: {D.over_select:g}]",
    ),
    (
        "--late-updates",
        "late_updates",
        click.Choice(LATE_UPDATES),
        "An update for a round that already closed: discard it (counted as wasted) or fold "
        "its change into the open round, weighted 1/sqrt(1+s) for s rounds of staleness "
        f"(--staleness-exponent). [default: {D.late_updates}]",
    ),
    (
        "--staleness-exponent",
        "staleness_exponent",
        float,
        "A change trained s rounds (--late-updates fold) or global versions (--mode buffered) "
        "behind is weighted (1+s)^-A: 0.5 is FedBuff's 1/sqrt(1+s), 1 damps stale changes "
        f"more, 0 not at all. [default: {D.staleness_exponent:g}]",
    ),
    (
        "--stale-changes",
        "stale_changes",
        click.Choice(STALE_CHANGES),
        "How a stale update is re-based on the newest weights: toward-model steps toward the "
        "weights it trained (FedAsync's mixing), which cannot overshoot when many boards "
        "trained from the same old version; from-base adds the change its training made (the "
        "FedBuff paper's rule). "
        f"[default: {D.stale_changes}]",
    ),
    (
        "--start-over-within",
        "start_over_within",
        float,
        "--mode buffered: a board training from the job's initial weights that hears of the "
        "first trained version before it has done this share of its training starts over "
        "from it, so the slow boards' first updates are not all trained from the untrained "
        f"model; 0: boards finish what they started. [default: {D.start_over_within:g}]",
    ),
    (
        "--max-staleness",
        "max_staleness",
        int,
        "With --late-updates fold: the most rounds behind a folded update may be; with --mode "
        "buffered: the most global versions behind an update may be (older ones are "
        "rejected, counted as wasted). [default: "
        + ", ".join(f"{n} ({m})" for m, n in DEFAULT_MAX_STALENESS.items())
        + "]",
    ),
    (
        "--round-timeout",
        "round_timeout",
        float,
        f"Seconds from a round's announcement to its deadline. [default: {D.round_timeout:.0f}]",
    ),
    (
        "--wait-timeout",
        "wait_timeout",
        float,
        f"Seconds to wait for --min-devices before giving up. [default: {D.wait_timeout:.0f}]",
    ),
    (
        "--max-retries",
        "max_retries",
        int,
        f"Re-runs of a round that got too few updates. [default: {D.max_retries}]",
    ),
    (
        "--max-pause",
        "max_pause",
        float,
        "Seconds an operator's pause lasts before the job resumes by itself; 0: until resumed. "
        f"[default: {D.max_pause:.0f}]",
    ),
    ("--seed", "seed", int, f"Seed of device selection and initial weights. [default: {D.seed}]"),
    (
        "--strategy",
        "strategy",
        click.Choice(STRATEGY_NAMES),
        f"{strategy_help()} [default: {D.strategy}]",
    ),
    (
        "--server-lr",
        "server_lr",
        float,
        "Server learning rate: FedAvgM's, and with --mode buffered new = old + this x (the "
        f"buffer's aggregate - old). [default: {D.server_lr:g}]",
    ),
    (
        "--server-momentum",
        "server_momentum",
        float,
        f"FedAvgM server momentum. [default: {D.server_momentum}]",
    ),
    (
        "--max-update-norm",
        "max_update_norm",
        float,
        "Reject an update whose change exceeds this many times the global weights' L2 norm; "
        f"0 disables. [default: {D.max_update_norm:g}]",
    ),
    (
        "--max-weight-share",
        "max_weight_share",
        float,
        "Cap each update's share of the round's total weight (its sample count) at this; "
        f"0 disables. [default: {D.max_weight_share:g}]",
    ),
    (
        "--max-change-ratio",
        "max_change_ratio",
        float,
        "Reject an update whose change exceeds this many times the median change of the "
        f"round's other updates (3 or more); 0 disables. [default: {D.max_change_ratio:g}]",
    ),
    (
        "--no-sample-check",
        "no_sample_check",
        bool,
        "Accept updates claiming more samples than their device's status announced.",
    ),
    (
        "--clip-norm",
        "clip_norm",
        float,
        "Scale each update's change down to this L2 norm before aggregating (any strategy); "
        "0: off. [default: 0]",
    ),
    (
        "--trim-ratio",
        "trim_ratio",
        float,
        f"trimmed_mean: share of values dropped at each end per parameter. [default: {D.trim_ratio}]",
    ),
    (
        "--krum-byzantine",
        "krum_byzantine",
        int,
        f"krum / multi_krum: hostile devices F tolerated (needs >= 2F+3 updates). [default: {D.krum_byzantine}]",
    ),
    (
        "--dp-clip",
        "dp_clip",
        float,
        "DP-FedAvg: clip each update's change to this L2 norm, average with equal weights and "
        "add Gaussian noise (with --strategy fedavg); 0: off. [default: 0]",
    ),
    (
        "--dp-noise-multiplier",
        "dp_noise_multiplier",
        float,
        "DP-FedAvg: noise std on the average = this x --dp-clip / updates. No epsilon "
        "accounting. [default: 0]",
    ),
    (
        "--secure-aggregation",
        "secure_aggregation",
        bool,
        "Secure aggregation (SecAgg+): boards send masked vectors, the coordinator learns only "
        "the round's weighted sum, never one board's update. With fedavg, fedprox or fedavgm; "
        "the per-update bounds are off (docs/secure-aggregation.md).",
    ),
    (
        "--secagg-clip",
        "secagg_clip",
        float,
        "Secure aggregation: each board clips each coordinate of its change to +-this before "
        f"quantizing. [default: {D.secagg_clip:g}]",
    ),
    (
        "--secagg-timeout",
        "secagg_timeout",
        float,
        "Secure aggregation: seconds each stage after training (shares, masked vectors, "
        f"unmasking) may last. [default: {D.secagg_timeout:g}]",
    ),
    (
        "--signing-key",
        "signing_key",
        str,
        "Ed25519 private key (fedcoord keys generate) that signs the model and every round "
        "announcement; boards verify with fedge run --trust-key. Default: the job's own key, "
        "made on its first run in $EDGEFL_KEYS_DIR/JOB/ (~/.config/edgefl/keys/JOB/).",
    ),
    (
        "--unsigned",
        "unsigned",
        bool,
        "Sign nothing (logged as a warning): boards cannot tell the job's model and rounds "
        "from forged ones.",
    ),
    (
        "--test-data",
        "test_data",
        str,
        "Held-out test set for evaluating the global model: "
        f"{', '.join(dataset_names())} or a path.",
    ),
    (
        "--eval-every",
        "eval_every",
        int,
        f"Evaluate every N rounds (and the last). [default: {D.eval_every}]",
    ),
    (
        "--eval-devices",
        "eval_devices",
        bool,
        "Also score every device's update on the test set (per-device test accuracy in reports).",
    ),
    (
        "--broker",
        "broker",
        str,
        "mqtt://HOST:PORT or mqtts://HOST:PORT of a broker to use. Default: an embedded broker.",
    ),
    (
        "--listen",
        "listen",
        str,
        f"Address of the embedded broker; 0.0.0.0:1883 lets boards on the LAN connect. [default: {D.listen}]",
    ),
    *((o.flag, o.field, bool if o.kind == "flag" else str, o.help) for o in CONNECTION_OPTIONS),
    ("--prefix", "prefix", str, f"Topic prefix. [default: {D.prefix}]"),
    (
        "--encoding",
        "encoding",
        click.Choice(["float32", "float16", "int8"]),
        f"Encoding of global weights on the wire. [default: {D.encoding}]",
    ),
    (
        "--max-chunk",
        "max_chunk",
        int,
        f"Largest MQTT payload in bytes; bigger messages are chunked (`simulate` gives it to its devices too). [default: {D.max_chunk}]",
    ),
]


_BY_FIELD = {field: (flag, kind, text) for flag, field, kind, text in JOB_OPTIONS}
# The broker address and credentials (passwords from a file or the environment, never a flag).
CONNECTION_FIELDS = ("broker", *(o.field for o in CONNECTION_OPTIONS))


def option(field: str, *, default: Any = None, **attrs: Any) -> Decorator:
    """The option of job field ``field`` as ``fedcoord start`` declares it: same flag, type
    and help. Commands outside the job-file layering give it a ``default``, and may
    override click attributes (``help``, ``envvar``, ``required``, ``show_default``...)."""
    flag, kind, text = _BY_FIELD[field]
    attrs.setdefault("help", text)
    if kind is bool:
        return click.option(flag, field, is_flag=True, default=default, **attrs)
    return click.option(flag, field, type=kind, default=default, **attrs)


def at_least(flag: str, default: float, minimum: float, text: str) -> Decorator:
    """A number option with a lower bound (an int option when ``default`` is an int)."""
    bound = click.IntRange(int(minimum)) if isinstance(default, int) else click.FloatRange(minimum)
    return click.option(flag, default=default, show_default=True, type=bound, help=text)


def apply(*decorators: Decorator) -> Decorator:
    """The decorators applied so that --help lists them in the given order."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return decorate


def connection_options(
    *, broker_help: str, broker_default: str | None, **broker_attrs: Any
) -> Decorator:
    """``--broker`` (with this command's help and default) and the credential options."""
    broker = option(
        "broker",
        default=broker_default,
        help=broker_help,
        show_default=broker_default is not None,
        **broker_attrs,
    )
    return apply(broker, *(option(f) for f in CONNECTION_FIELDS[1:]))


def broker_config(opts: dict[str, Any], url: str | None = None) -> BrokerConfig:
    """The broker at ``url`` (default: ``--broker``) with the connection options' credentials."""
    credentials = {o.field: opts.get(o.field) for o in CONNECTION_OPTIONS}
    return BrokerConfig.from_url(
        url or opts["broker"], **{**credentials, "insecure": bool(opts.get("insecure"))}
    )


# Bounded influence (coordinator/influence.py): fedcoord start's options, also taken by `site`
INFLUENCE_FIELDS = ("max_weight_share", "max_change_ratio", "no_sample_check")


def influence_options() -> Decorator:
    """The bounded-influence options of ``fedcoord start``, with its defaults, for commands
    outside the job-file layering (``site``); :func:`influence_bounds` reads them."""
    return apply(*(option(f, default=getattr(D, f)) for f in INFLUENCE_FIELDS))


def influence_bounds(opts: dict[str, Any]) -> InfluenceBounds:
    """The bounds a command's :func:`influence_options` ask for."""
    return InfluenceBounds.from_options(**{f: opts[f] for f in INFLUENCE_FIELDS})


def job_options(skip: tuple[str, ...] = ()) -> Decorator:
    """Every job option (default None: flag > environment > --config > default) and --config."""
    config = click.option(
        "--config",
        "job_file",
        type=click.Path(dir_okay=False),
        default=None,
        help="TOML job file; flags and EDGEFL_* environment variables override it.",
    )
    return apply(config, *(option(f) for _, f, _, _ in JOB_OPTIONS if f not in skip))


def job_flags(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The job fields among a command's parameters."""
    return {k: v for k, v in kwargs.items() if k in _BY_FIELD}
