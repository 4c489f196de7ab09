"""Job configuration: flag > environment (EDGEFL_*) > TOML job file > default."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from coordinator.strategies import STRATEGIES, STRATEGY_NAMES
from edge_client.errors import ConfigError
from edge_client.protocol import DEFAULT_MAX_CHUNK, DEFAULT_PREFIX
from model_export.registry import JOB_ARCHITECTURES, OPTIMIZERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "EDGEFL_"
LATE_UPDATES = ("discard", "fold")  # what a job does with an update for a closed round
STALE_CHANGES = ("from-base", "toward-model")  # how a stale change is re-based (late.py)
MODES = ("sync", "buffered")  # round modes: synchronous rounds, or FedBuff's global versions
# --max-staleness 0: the mode's default. Late updates of synchronous rounds come one or two
# rounds late; in a buffered job a slow board's update arrives (its training time / the
# time between versions) versions behind: a Pi Zero 2 W on the mixed-pi fleet, ~8.
DEFAULT_MAX_STALENESS = {"sync": 2, "buffered": 10}


@dataclass(frozen=True)
class JobConfig:
    job: str = "demo"
    rounds: int = 20
    run_dir: str | None = None  # None: runs/<job>
    # -- model --------------------------------------------------------------------------
    model_dir: str | None = None  # an exported model; None: export `model` into the run dir
    model: str = "cnn"  # architecture exported when model_dir is None (JOB_ARCHITECTURES)
    optimizer: str = "adam"  # on-device optimizer of that export (OPTIMIZERS)
    lr: float = 0.001  # device learning rate, announced every round
    batch_size: int = 32  # static train batch of that export
    prox_mu: float = 0.0  # FedProx mu baked into that export (strategy fedprox needs > 0)
    momentum: float = 0.0  # SGD momentum of that export
    epochs: int = 2  # local epochs per round
    # -- participants ---------------------------------------------------------------------
    min_devices: int = 1  # devices online before a round starts
    fraction: float = 1.0  # share of online devices selected per round
    clients_per_round: int = 0  # K random devices per round; 0: use fraction
    min_results: int = 1  # updates needed to close a round; fewer: retry the round
    round_timeout: float = 300.0  # seconds from announcement to deadline
    wait_timeout: float = 600.0  # seconds to wait for min_devices before giving up
    max_retries: int = 2  # re-runs of a round that got fewer than min_results updates
    # seconds an operator's pause lasts before the job resumes by itself (a forgotten or
    # hostile pause must not hold the fleet forever); 0: no limit
    max_pause: float = 1800.0
    # -- round mode (docs/round-modes.md) ------------------------------------------------------
    # sync: rounds that wait for their selected devices (semi-synchronous with over_select);
    # buffered: asynchronous buffered aggregation (FedBuff), where `rounds` counts global
    # versions and boards train continuously on the newest one
    mode: str = "sync"
    # buffered: every buffer_size accepted updates are folded into a new global version
    # (a few per version: a version moves with the fast boards and still averages some)
    buffer_size: int = 5
    # buffered: at most this many devices hold a training slot at once; 0: every online
    # device that speaks buffered rounds (the fleet trains continuously)
    max_concurrency: int = 0
    # -- semi-synchronous rounds (docs/round-modes.md) ---------------------------------------
    # Select ceil(over_select x N) devices, N from fraction / clients_per_round, and close the
    # round once N updates are in. 1.0: synchronous, wait for every selected device.
    over_select: float = 1.0
    late_updates: str = "discard"  # an update for a closed round: discard | fold
    # the most rounds behind a folded late update (late_updates fold), or versions behind a
    # buffered update, may be; 0: the mode's default (DEFAULT_MAX_STALENESS)
    max_staleness: int = 0
    # a folded late update's or a buffered update's change, s rounds or versions stale, is
    # weighted (1 + s) ** -staleness_exponent (0.5: 1/sqrt(1+s), FedBuff's; 0: not at all)
    staleness_exponent: float = 0.5
    # how a stale change is re-based (coordinator/late.py stale_change): "toward-model" steps
    # toward the trained weights (cannot overshoot when many boards trained from the same old
    # version: a fleet of equal boards collapsed with the other rule, docs/benchmarks.md);
    # "from-base" adds the change its training made (the FedBuff paper's rule)
    stale_changes: str = "toward-model"
    # buffered: a board training from the job's initial weights (version 1) that hears of a
    # newer version before it has done this share of its training starts over from it, once
    # (hyperparams.start_over): the slow boards' first updates are then not all trained from
    # the untrained model. 0: boards finish what they started
    start_over_within: float = 0.5
    seed: int = 0  # participant selection (and the initial weights of an export)
    # -- aggregation ----------------------------------------------------------------------
    strategy: str = "fedavg"  # one of coordinator.strategies.STRATEGIES
    # fedavgm's server step; buffered: new = old + server_lr x (the buffer's aggregate - old)
    server_lr: float = 1.0
    server_momentum: float = 0.9  # fedavgm
    # -- hostile devices (docs/security.md) ------------------------------------------------
    # Reject an update whose change exceeds this many times the global weights' L2 norm
    # (at least 1): a legitimate round moves the weights by a fraction of their norm, so 10x
    # is absurd yet far from any honest update. 0 disables the check.
    max_update_norm: float = 10.0
    # Bounded influence (coordinator/influence.py): an update may carry at most this share
    # of the round's total weight (0.5: no update outweighs all the others together; an
    # honest 5-board IID round has 0.2 each); 0 disables the cap.
    max_weight_share: float = 0.5
    # Reject an update whose change exceeds this many times the median change of the
    # round's other updates (at least 3 updates); honest ones differ by a few x. 0: off.
    max_change_ratio: float = 10.0
    no_sample_check: bool = False  # True: accept sample counts above the device's status
    clip_norm: float = 0.0  # scale each update's change to this L2 norm at most; 0: off
    trim_ratio: float = 0.1  # trimmed_mean: share of values dropped at each end, [0, 0.5)
    krum_byzantine: int = 1  # krum / multi_krum: hostile devices f tolerated (n >= 2f + 3)
    dp_clip: float = 0.0  # DP-FedAvg: per-update clipping norm C; > 0 turns DP-FedAvg on
    dp_noise_multiplier: float = 0.0  # DP-FedAvg: Gaussian noise std = multiplier * C / n
    # Ed25519 private key (fedcoord keys generate) that signs the model and every round; None:
    # the job's own key, made on its first run (coordinator.job_keys)
    signing_key: str | None = None
    unsigned: bool = False  # sign nothing: an explicit choice, logged as a warning at start
    # -- secure aggregation (docs/secure-aggregation.md) -------------------------------------
    # SecAgg+: boards send masked vectors and the coordinator learns only the round's sum,
    # never one board's update. Needs fedavg, fedprox or fedavgm (secure_checks below).
    secure_aggregation: bool = False
    # each coordinate of a board's change (trained - global) is clipped to +-this before it
    # is quantized: 1.0 is above what one round of the job's models moves a weight
    secagg_clip: float = 1.0
    secagg_timeout: float = 30.0  # seconds each stage after training may last
    # -- evaluation -----------------------------------------------------------------------
    test_data: str | None = None  # data set name (fashion-mnist, mnist, cifar10) or path
    eval_every: int = 1  # evaluate the global model every N rounds (and the last)
    eval_devices: bool = False  # also score every device's update on the test set (reports)
    # -- broker ---------------------------------------------------------------------------
    broker: str | None = None  # mqtt[s]://HOST:PORT; None: start the embedded broker
    listen: str = "127.0.0.1:1883"  # embedded broker address; 0.0.0.0 lets boards on the LAN in
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None  # client certificate for brokers that require one (mTLS)
    key_file: str | None = None
    insecure: bool = False
    prefix: str = DEFAULT_PREFIX
    encoding: str = "float32"  # global weights and requested update encoding
    max_chunk: int = DEFAULT_MAX_CHUNK

    def __post_init__(self) -> None:
        checks = [
            (self.rounds >= 1, "rounds must be at least 1"),
            (self.epochs >= 1, "epochs must be at least 1"),
            (self.lr > 0, "lr must be positive"),
            (0 < self.fraction <= 1, "fraction must be in (0, 1]"),
            (self.clients_per_round >= 0, "clients_per_round must be >= 0"),
            (self.min_devices >= 1, "min_devices must be at least 1"),
            (self.min_results >= 1, "min_results must be at least 1"),
            (self.round_timeout > 0, "round_timeout must be positive"),
            (self.max_retries >= 0, "max_retries must be >= 0"),
            (self.max_pause >= 0, "max_pause must be >= 0 (0: a pause lasts until resumed)"),
            (
                1.0 <= self.over_select <= 10.0,
                "over_select must be in [1, 10] (1 selects exactly the devices a round needs)",
            ),
            (
                self.late_updates in LATE_UPDATES,
                f"late_updates must be one of {', '.join(LATE_UPDATES)}",
            ),
            (self.max_staleness >= 0, "max_staleness must be >= 0 (0: the mode's default)"),
            *_mode_checks(self),
            (
                self.over_select == 1 or self.fraction < 1 or self.clients_per_round > 0,
                "over_select selects more devices than a round needs: set fraction < 1 or "
                "clients_per_round (with fraction 1 every online device is needed already)",
            ),
            (self.eval_every >= 1, "eval_every must be at least 1"),
            (
                self.strategy in STRATEGIES,
                f"unknown strategy {self.strategy!r}: use one of {', '.join(STRATEGY_NAMES)}",
            ),
            (
                self.model in JOB_ARCHITECTURES,
                f"unknown model {self.model!r}: use one of {', '.join(JOB_ARCHITECTURES)} "
                "(or --model-dir with an export of any architecture)",
            ),
            (
                self.optimizer in OPTIMIZERS,
                f"unknown optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}",
            ),
            *secure_checks(self),  # first: its refusals name --secure-aggregation itself
            *_robustness_checks(self),
            (
                not (self.unsigned and self.signing_key),
                "unsigned and signing_key contradict each other: give one or neither",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def buffered(self) -> bool:
        return self.mode == "buffered"

    @property
    def staleness_limit(self) -> int:
        """--max-staleness, or the mode's default when it is 0."""
        return self.max_staleness or DEFAULT_MAX_STALENESS.get(self.mode, 2)

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"runs/{self.job}")

    def replace(self, **changes: Any) -> JobConfig:
        return dataclasses.replace(self, **changes)


def _mode_checks(c: JobConfig) -> list[tuple[bool, str]]:
    """The round mode's settings, and the combinations with it that make no sense."""
    buffered = c.mode == "buffered"
    return [
        (c.mode in MODES, f"unknown mode {c.mode!r}: use one of {', '.join(MODES)}"),
        (c.buffer_size >= 1, "buffer_size must be at least 1"),
        (c.max_concurrency >= 0, "max_concurrency must be >= 0 (0: every online device)"),
        (c.server_lr > 0, "server_lr must be positive"),
        (
            c.stale_changes in STALE_CHANGES,
            f"stale_changes must be one of {', '.join(STALE_CHANGES)}",
        ),
        (
            math.isfinite(c.staleness_exponent) and c.staleness_exponent >= 0,
            "staleness_exponent must be a number >= 0 (0.5: 1/sqrt(1+s); 0: no down-weighting)",
        ),
        (
            math.isfinite(c.start_over_within) and 0 <= c.start_over_within <= 1,
            "start_over_within must be a share from 0 (off) to 1 (the whole training)",
        ),
        (
            not buffered or c.over_select == 1,
            "over_select is for synchronous rounds: a buffered job bounds its training "
            "devices with max_concurrency",
        ),
        (
            not buffered or c.late_updates == "discard",
            "late_updates fold is for synchronous rounds: a buffered job folds every update "
            "within max_staleness versions, weighted by its staleness",
        ),
    ]


def _robustness_checks(c: JobConfig) -> list[tuple[bool, str]]:
    return [
        (c.max_update_norm >= 0, "max_update_norm must be >= 0 (0 disables the check)"),
        (
            0 <= c.max_weight_share <= 1,
            "max_weight_share must be in [0, 1] (0 disables the cap)",
        ),
        (c.max_change_ratio >= 0, "max_change_ratio must be >= 0 (0 disables the check)"),
        (c.clip_norm >= 0, "clip_norm must be >= 0 (0 disables clipping)"),
        (0 <= c.trim_ratio < 0.5, "trim_ratio must be in [0, 0.5)"),
        (c.krum_byzantine >= 0, "krum_byzantine must be >= 0"),
        (
            c.dp_clip >= 0 and c.dp_noise_multiplier >= 0,
            "dp_clip and dp_noise_multiplier must be >= 0",
        ),
        (
            c.dp_noise_multiplier == 0 or c.dp_clip > 0,
            "dp_noise_multiplier needs dp_clip > 0 (the noise is scaled to the clipping norm)",
        ),
        (
            c.dp_clip == 0 or c.strategy not in STRATEGIES or STRATEGIES[c.strategy].allows_dp,
            "DP-FedAvg (dp_clip > 0) replaces the server average: use strategy "
            f"{' or '.join(n for n, e in STRATEGIES.items() if e.allows_dp)}, not {c.strategy}",
        ),
        (
            c.dp_clip == 0 or c.clip_norm == 0,
            "use either clip_norm or dp_clip (DP-FedAvg clips itself)",
        ),
    ]


# Bounds that judge each update on its own: secure aggregation hides single updates, so they
# are off (their defaults) or refused (another value); docs/secure-aggregation.md
PER_UPDATE_BOUNDS = ("max_update_norm", "max_weight_share", "max_change_ratio")


def secure_checks(c: JobConfig) -> list[tuple[bool, str]]:
    """What secure aggregation cannot combine with: anything that needs single updates."""
    checks = [
        (c.secagg_clip > 0 and math.isfinite(c.secagg_clip), "secagg_clip must be positive"),
        (c.secagg_timeout > 0, "secagg_timeout must be positive (seconds per stage)"),
    ]
    if not c.secure_aggregation:
        return checks
    entry = STRATEGIES.get(c.strategy)
    need = "which secure aggregation hides from the coordinator"
    checks += [
        (
            entry is None or not entry.robust,
            f"--secure-aggregation cannot run strategy {c.strategy}: it looks at each board's "
            f"update, {need}; use fedavg, fedprox or fedavgm",
        ),
        (
            c.dp_clip == 0 and c.dp_noise_multiplier == 0,
            "--secure-aggregation cannot run DP-FedAvg (--dp-clip, --dp-noise-multiplier): it "
            f"clips each update, {need}; leave both at 0 (--clip-norm bounds each board's change)",
        ),
        (
            not c.eval_devices,
            f"--secure-aggregation cannot run --eval-devices: it scores each board's update, "
            f"{need}; turn --eval-devices off",
        ),
        (
            c.late_updates != "fold",
            "--secure-aggregation cannot run --late-updates fold: it adds single late updates, "
            f"{need}; use --late-updates discard",
        ),
        (
            c.mode == "sync",
            "--secure-aggregation needs synchronous rounds (--mode sync): a buffered job "
            "aggregates updates one by one as they arrive, and a masked vector can only be "
            "unmasked in the sum of a round",
        ),
    ]
    for name in PER_UPDATE_BOUNDS:
        value, default = getattr(c, name), _default(name)
        checks.append(
            (
                value in (0, default),
                f"--secure-aggregation cannot run --{name.replace('_', '-')} {value:g}: it "
                f"judges each update, {need}; leave it at {default:g} or 0 (off under secure "
                "aggregation either way)",
            )
        )
    return checks


def _default(name: str) -> Any:
    return next(f.default for f in fields(JobConfig) if f.name == name)


_FIELDS = {f.name: f for f in fields(JobConfig)}


def _coerce(name: str, value: Any, source: str) -> Any:
    default = _FIELDS[name].default
    kind = type(default) if default is not None else str  # every None default is a str | None
    try:
        if kind is bool and isinstance(value, str):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {name} = {value!r} is not a valid {kind.__name__}") from exc


def read_toml(path: str | Path, what: str = "job file") -> dict[str, Any]:
    """The TOML file ``path`` as a dict; a missing or malformed file is a ConfigError that
    names ``what`` it should have been (a job file, an experiment file)."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"{what} not found: {p}") from exc
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {p}: {exc}") from exc


def job_settings(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Job fields from a file's mapping (``a-b`` or ``a_b`` keys), coerced to their types;
    an unknown key is a ConfigError naming ``source``."""
    settings = {k.replace("-", "_"): v for k, v in values.items()}
    unknown = sorted(k for k in settings if k not in _FIELDS)
    if unknown:
        raise ConfigError(f"{source}: unknown settings {', '.join(unknown)}")
    return {k: _coerce(k, v, source) for k, v in settings.items()}


def load_toml(path: str | Path) -> dict[str, Any]:
    data = read_toml(path)
    flat: dict[str, Any] = {}
    for key, value in data.items():  # accept [sections] for readability: keys are unique
        if isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return job_settings(flat, f"job file {path}")


def from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    env = os.environ if environ is None else environ
    out = {}
    for name in _FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env and env[key] != "":
            out[name] = _coerce(name, env[key], key)
    return out


def resolve(
    flags: Mapping[str, Any], job_file: str | None = None, environ: Mapping[str, str] | None = None
) -> JobConfig:
    """Merge the layers: defaults < job file < environment < flags (None means unset)."""
    merged: dict[str, Any] = {}
    if job_file:
        merged.update(load_toml(job_file))
    merged.update(from_env(environ))
    merged.update({k: v for k, v in flags.items() if v is not None and k in _FIELDS})
    return JobConfig(**merged)
