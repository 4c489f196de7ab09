"""A simulated fleet described in TOML: board groups, their speed, availability and link.

See docs/fleet-simulation.md for the format. ``load_fleet(FILE_OR_PRESET)`` returns a
validated :class:`FleetSpec`; every mistake is a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from coordinator.fleet.link import LinkSpec
from coordinator.fleet.speed import default_factor, profile_family
from devices.errors import InventoryError
from devices.profiles import get_profile
from edge_client.errors import ConfigError, ProtocolError
from edge_client.protocol import check_id

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS_DIR = Path(__file__).parent / "presets"
OFFLINE_MODES = ("network", "power")  # Wi-Fi gone (process keeps running) | power cut (killed)
DEFAULT_MAX_UTILISATION = 0.8  # of the cores: the rest is the coordinator, broker and links


@dataclass(frozen=True)
class Availability:
    """Online/offline sessions drawn at random (exponential lengths), unless a trace says."""

    mean_online_s: float = 0.0  # 0: always online (no random offline sessions)
    mean_offline_s: float = 60.0
    offline: str = "network"  # how an offline session looks, one of OFFLINE_MODES


@dataclass(frozen=True)
class Dropout:
    """Leaving in the middle of local training, with ``probability`` per training."""

    probability: float = 0.0
    kill_share: float = 0.5  # share of dropouts that kill the process; the rest cut the network
    mean_downtime_s: float = 30.0  # how long the board stays away afterwards (exponential)


@dataclass(frozen=True)
class BoardSpec:
    device_id: str
    profile: str
    slowdown: float  # >= 1: wall time of local training relative to this machine
    link: LinkSpec
    availability: Availability
    dropout: Dropout


@dataclass(frozen=True)
class FleetSpec:
    name: str
    seed: int
    boards: tuple[BoardSpec, ...]
    trace: Path | None = None  # online sessions from a file (docs/fleet-simulation.md)
    max_utilisation: float = DEFAULT_MAX_UTILISATION
    source: str = ""  # the file or preset it came from
    mix: dict[str, int] = field(default_factory=dict)  # profile -> boards, for summaries

    def board(self, device_id: str) -> BoardSpec:
        return next(b for b in self.boards if b.device_id == device_id)

    def describe(self) -> str:
        parts = ", ".join(f"{n} x {p}" for p, n in self.mix.items())
        return f"fleet {self.name!r}: {len(self.boards)} boards ({parts}), seed {self.seed}"


def presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_fleet(file_or_preset: str, *, seed: int | None = None) -> FleetSpec:
    """A fleet from a TOML file, or a preset's name (``mixed-pi``, ``homogeneous``, ...)."""
    path = Path(file_or_preset)
    if not path.exists():
        if file_or_preset not in presets():
            raise ConfigError(
                f"--fleet {file_or_preset}: no such file and no such preset "
                f"(presets: {', '.join(presets())})"
            )
        path = PRESETS_DIR / f"{file_or_preset}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read fleet file {path}: {exc}") from None
    spec = parse_fleet(data, source=str(path), base=path.parent)
    if seed is not None:
        spec = replace(spec, seed=seed)
    return spec


_TOP = {"name", "seed", "trace", "max_utilisation", "defaults", "slowdown", "boards"}
_GROUP = {"name", "profile", "count", "slowdown", "link", "availability", "dropout"}


def parse_fleet(data: dict[str, Any], *, source: str = "", base: Path = Path(".")) -> FleetSpec:
    where = source or "fleet"
    _no_unknown(data, _TOP, where)
    defaults = data.get("defaults", {})
    _no_unknown(defaults, {"link", "availability", "dropout"}, f"{where}: [defaults]")
    overrides = data.get("slowdown", {})
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: slowdown must be a table of profile = factor")
    groups = data.get("boards")
    if not isinstance(groups, list) or not groups:
        raise ConfigError(f"{where}: no [[boards]] groups: describe at least one group of boards")
    boards: list[BoardSpec] = []
    mix: dict[str, int] = {}
    for i, group in enumerate(groups):
        made = _group(group, defaults, overrides, f"{where}: boards[{i}]")
        boards += made
        mix[made[0].profile] = mix.get(made[0].profile, 0) + len(made)
    ids = [b.device_id for b in boards]
    dupes = sorted({d for d in ids if ids.count(d) > 1})
    if dupes:
        raise ConfigError(f"{where}: device ids used twice: {', '.join(dupes)} (name the groups)")
    trace = data.get("trace")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}: seed must be an integer, not {seed!r}")
    max_util = _number(data, "max_utilisation", DEFAULT_MAX_UTILISATION, where, lo=0.05)
    return FleetSpec(
        name=str(data.get("name", Path(source).stem or "fleet")),
        seed=seed,
        boards=tuple(boards),
        trace=(base / str(trace)) if trace else None,
        max_utilisation=max_util,
        source=source,
        mix=mix,
    )


def _group(
    group: Any, defaults: dict[str, Any], overrides: dict[str, Any], where: str
) -> list[BoardSpec]:
    if not isinstance(group, dict):
        raise ConfigError(f"{where}: each [[boards]] entry must be a table")
    _no_unknown(group, _GROUP, where)
    if "profile" not in group:
        raise ConfigError(f'{where}: give the board profile, e.g. profile = "rpi4-64"')
    profile = str(group["profile"])
    try:
        get_profile(profile)
    except InventoryError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    count = group.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{where}: count must be a positive integer, not {count!r}")
    factor = group.get("slowdown", overrides.get(profile, overrides.get(profile_family(profile))))
    if factor is None:
        factor = default_factor(profile)
    if factor is None:
        raise ConfigError(f"{where}: no slow-down factor known for {profile}: set slowdown = ...")
    factor = _number({"slowdown": factor}, "slowdown", 1.0, where, lo=1.0)
    name = str(group.get("name", profile_family(profile).replace("rpi-", "").replace("rpi", "pi")))
    link = _merged(defaults, group, "link", where, lambda kw: LinkSpec(**kw))
    avail = _merged(defaults, group, "availability", where, lambda kw: Availability(**kw))
    drop = _merged(defaults, group, "dropout", where, lambda kw: Dropout(**kw))
    _check(avail, drop, where)
    boards = []
    for i in range(count):
        device_id = f"{name}-{i:02d}"
        try:
            check_id(device_id, "device id")
        except ProtocolError as exc:
            raise ConfigError(f"{where}: name {name!r} makes a bad device id: {exc}") from None
        boards.append(BoardSpec(device_id, profile, factor, link, avail, drop))
    return boards


def _merged(
    defaults: dict[str, Any], group: dict[str, Any], key: str, where: str, make: Any
) -> Any:
    table = {**defaults.get(key, {}), **group.get(key, {})}
    try:
        return make(table)
    except TypeError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from None


def _check(a: Availability, d: Dropout, where: str) -> None:
    for name, value, lo, hi in (
        ("availability.mean_online_s", a.mean_online_s, 0, math.inf),
        ("availability.mean_offline_s", a.mean_offline_s, 0, math.inf),
        ("dropout.probability", d.probability, 0, 1),
        ("dropout.kill_share", d.kill_share, 0, 1),
        ("dropout.mean_downtime_s", d.mean_downtime_s, 0, math.inf),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise ConfigError(f"{where}: {name} must be a number in [{lo}, {hi}], not {value!r}")
    if a.offline not in OFFLINE_MODES:
        raise ConfigError(
            f"{where}: availability.offline must be one of {', '.join(OFFLINE_MODES)}, "
            f"not {a.offline!r}"
        )


def _number(table: dict[str, Any], key: str, default: float, where: str, *, lo: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= lo:
        raise ConfigError(f"{where}: {key} must be a number >= {lo}, not {value!r}")
    return float(value)


def _no_unknown(table: Any, known: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table")
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
