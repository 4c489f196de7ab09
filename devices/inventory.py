"""The fleet inventory: one TOML file naming every board and how to reach it.

```toml
[fleet]                      # the job the boards join
job = "demo"
broker = "mqtts://broker.lan:8883"     # as the boards reach it
ca_file = "ca.crt"                     # copied to every board (mqtts only)

[defaults]                   # any device key; each device may override it
ssh_user = "pi"
ssh_key = "~/.ssh/edgefl_ed25519"
profile = "rpi4-64"
data = "/srv/edgefl/data"

[devices.pi-01]
host = "192.168.1.21"

[devices.pi-02]
host = "pi-02.local"
profile = "rpi-zero2w-32"
env = { EDGEFL_HEARTBEAT = "30" }
```

Relative paths on this machine (``ssh_key``, ``known_hosts``, ``ca_file``, ``trust_key``,
``secrets_dir``, ``broker_dir``) are relative to the inventory file; paths on the board must be absolute.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from devices.errors import InventoryError
from devices.profiles import BoardProfile, custom_profile, get_profile
from edge_client.errors import EdgeFLError, ProtocolError
from edge_client.protocol import DEFAULT_PREFIX, check_id
from edge_client.transport import BrokerConfig

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_INVENTORY = "fleet.toml"
SERVICES = ("auto", "systemd", "supervisor")
# Variables the inventory sets itself; an ``env`` table may not override them.
MANAGED_ENV = frozenset(
    {
        "EDGEFL_BROKER",
        "EDGEFL_JOB",
        "EDGEFL_DEVICE_ID",
        "EDGEFL_PREFIX",
        "EDGEFL_DATA",
        "EDGEFL_DATASET",
        "EDGEFL_STATE_DIR",
        "EDGEFL_MQTT_USERNAME",
        "EDGEFL_MQTT_PASSWORD",
        "EDGEFL_MQTT_PASSWORD_FILE",
        "EDGEFL_CA_FILE",
        "EDGEFL_TRUST_KEY",
    }
)
_ENV_NAME = re.compile(r"EDGEFL_[A-Z0-9_]+")
# Device ids that would be the coordinator on the broker: its user name (and password file),
# its status topic and the sender of everything it publishes.
RESERVED_IDS = frozenset({"coordinator"})


@dataclass(frozen=True)
class FleetSettings:
    job: str
    broker: str  # URL the boards connect to
    prefix: str = DEFAULT_PREFIX
    ca_file: Path | None = None  # CA bundle copied to the boards (mqtts://)
    coordinator_user: str = "coordinator"  # the broker user that may read and write everything
    coordinator_broker: str | None = None  # URL from this machine, when it differs from `broker`
    secrets_dir: Path = Path("secrets")  # per-device MQTT passwords (mode 600), kept here
    broker_dir: Path = Path("broker")  # where `devices broker-files` writes
    # The coordinator's public signing key (signing.pub), installed on every board, which then
    # refuses unsigned models and rounds. None: the job's own key (`fedcoord devices flash`
    # makes it if needed, as `fedcoord start` does), unless `unsigned`.
    trust_key: Path | None = None
    unsigned: bool = False  # boards get no key and accept unsigned models (an explicit choice)


@dataclass(frozen=True)
class Device:
    id: str
    host: str
    profile: str
    data: str | None = None  # absolute path on the board (or `dataset`)
    dataset: str | None = None  # a named data set found on the board
    ssh_user: str = "pi"  # Raspberry Pi Imager's suggested user
    ssh_port: int = 22
    ssh_key: Path | None = None  # None: ssh's own defaults and agent
    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts
    install_dir: str = "/opt/edgefl"  # venvs, wheels, state and logs live under it
    unit_dir: str = "/etc/systemd/system"
    service: str = "auto"  # auto: systemd when it runs on the board, else a nohup supervisor
    service_user: str | None = None  # the service's user; None: ssh_user
    python: str = "python3"  # the board's Python that creates the virtual environment
    env: tuple[tuple[str, str], ...] = ()  # extra EDGEFL_* settings for `fedge run`

    @property
    def unit_name(self) -> str:
        return f"fedge-{self.id}.service"

    @property
    def user(self) -> str:
        return self.service_user or self.ssh_user


_DEVICE_KEYS = {f.name for f in fields(Device)} - {"id"}
_FLEET_KEYS = {f.name for f in fields(FleetSettings)}


@dataclass(frozen=True)
class Inventory:
    path: Path
    fleet: FleetSettings
    devices: tuple[Device, ...]
    profiles: dict[str, BoardProfile] = field(default_factory=dict, hash=False)

    def device(self, device_id: str) -> Device:
        for d in self.devices:
            if d.id == device_id:
                return d
        known = ", ".join(d.id for d in self.devices) or "none"
        raise InventoryError(f"{self.path}: no device {device_id!r} (devices: {known})")

    def select(self, ids: tuple[str, ...] | list[str], all_devices: bool) -> list[Device]:
        if all_devices and ids:
            raise InventoryError("give device ids or --all, not both")
        if all_devices:
            if not self.devices:
                raise InventoryError(f"{self.path}: no devices")
            return list(self.devices)
        if not ids:
            raise InventoryError("name the devices to use, or --all")
        return [self.device(i) for i in ids]

    def profile(self, device: Device) -> BoardProfile:
        return get_profile(device.profile, self.profiles)

    def coordinator_broker(self) -> BrokerConfig:
        """Where this machine reaches the broker (no credentials)."""
        return BrokerConfig.from_url(
            self.fleet.coordinator_broker or self.fleet.broker,
            ca_file=str(self.fleet.ca_file) if self.fleet.ca_file else None,
        )


def load_inventory(path: str | Path) -> Inventory:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InventoryError(
            f"inventory {path} not found (give --inventory FILE or set EDGEFL_INVENTORY)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"cannot read inventory {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InventoryError(f"{path}: invalid TOML: {exc}") from None
    return parse_inventory(data, path)


def parse_inventory(data: dict[str, Any], path: Path) -> Inventory:
    base = path.resolve().parent
    _check_keys(path, "the top level", data, {"fleet", "defaults", "devices", "profiles"})
    profiles: dict[str, BoardProfile] = {}
    for name, table in _table(path, data, "profiles").items():
        profiles[name] = custom_profile(name, _table(path, {name: table}, name), profiles)
    fleet = _fleet(path, _table(path, data, "fleet"), base)
    defaults = _table(path, data, "defaults")
    _check_keys(path, "[defaults]", defaults, _DEVICE_KEYS - {"host"})
    devices = []
    for device_id, table in _table(path, data, "devices").items():
        if not isinstance(table, dict):
            raise InventoryError(f"{path}: devices.{device_id} must be a table")
        merged = {**defaults, **table}
        for own, other in (("data", "dataset"), ("dataset", "data")):
            if own in table and other not in table:
                merged.pop(other, None)  # a device's own data source replaces the default one
        devices.append(_device(path, device_id, merged, base, profiles))
    for d in devices:
        if d.id in RESERVED_IDS | {fleet.coordinator_user}:
            raise InventoryError(
                f"{path}: devices.{d.id}: the name {d.id!r} is reserved for the coordinator "
                "(its broker user, password and status topic); give the device another id"
            )
    return Inventory(path, fleet, tuple(devices), profiles)


def _table(path: Path, data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise InventoryError(f"{path}: [{key}] must be a table")
    return value


def _check_keys(path: Path, where: str, table: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InventoryError(
            f"{path}: unknown key {unknown[0]!r} in {where} (known: {', '.join(sorted(allowed))})"
        )


def _local_path(value: Any, base: Path, where: str, path: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise InventoryError(f"{path}: {where} must be a non-empty string")
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _fleet(path: Path, table: dict[str, Any], base: Path) -> FleetSettings:
    _check_keys(path, "[fleet]", table, _FLEET_KEYS)
    for key in ("job", "broker"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise InventoryError(f'{path}: [fleet] needs {key} = "..."')
    kw: dict[str, Any] = dict(table)
    try:
        check_id(kw["job"], "job id")
        if "coordinator_user" in kw:
            check_id(kw["coordinator_user"], "coordinator_user")
        for url in (kw["broker"], kw.get("coordinator_broker")):
            if url is not None:
                BrokerConfig.from_url(str(url))
    except EdgeFLError as exc:  # an invalid id or broker URL
        raise InventoryError(f"{path}: [fleet] {exc}") from None
    for key in ("ca_file", "trust_key"):
        kw[key] = _local_path(kw[key], base, key, path) if key in kw else None
    if not isinstance(kw.get("unsigned", False), bool):
        raise InventoryError(f"{path}: [fleet] unsigned must be true or false")
    if kw.get("unsigned") and kw["trust_key"] is not None:
        raise InventoryError(f"{path}: [fleet] give trust_key or unsigned = true, not both")
    for key in ("secrets_dir", "broker_dir"):
        default = getattr(FleetSettings, key)
        kw[key] = _local_path(str(kw.get(key, default)), base, key, path)
    return FleetSettings(**kw)


def _device(
    path: Path, device_id: str, table: dict[str, Any], base: Path, profiles: dict
) -> Device:
    where = f"devices.{device_id}"
    try:
        check_id(device_id, "device id")
    except ProtocolError as exc:
        raise InventoryError(f"{path}: {where}: {exc}") from None
    _check_keys(path, where, table, _DEVICE_KEYS)
    for key in ("host", "profile"):
        if not isinstance(table.get(key), str) or not table[key]:
            raise InventoryError(f'{path}: {where} is missing {key} = "..."')
    if ("data" in table) == ("dataset" in table):
        raise InventoryError(
            f'{path}: {where} needs exactly one of data = "/path/on/board" or dataset = "NAME"'
        )
    kw: dict[str, Any] = {k: v for k, v in table.items() if k != "env"}
    for key in ("ssh_port",):
        if key in kw and (not isinstance(kw[key], int) or not 0 < kw[key] < 65536):
            raise InventoryError(f"{path}: {where}.{key} must be a port number")
    for key in _DEVICE_KEYS - {"ssh_port", "env"}:
        if key in kw and not isinstance(kw[key], str):
            raise InventoryError(f"{path}: {where}.{key} must be a string")
    for key in ("data", "install_dir", "unit_dir"):
        if key in kw and not kw[key].startswith("/"):
            raise InventoryError(
                f"{path}: {where}.{key} must be an absolute path on the board, not {kw[key]!r}"
            )
    if kw.get("service", "auto") not in SERVICES:
        raise InventoryError(f"{path}: {where}.service must be one of {', '.join(SERVICES)}")
    for key in ("ssh_key", "known_hosts"):
        if key in kw:
            kw[key] = _local_path(kw[key], base, f"{where}.{key}", path)
    env = table.get("env", {})
    if not isinstance(env, dict):
        raise InventoryError(f"{path}: {where}.env must be a table")
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise InventoryError(f"{path}: {where}.env: {name!r} is not an EDGEFL_* variable")
        if name in MANAGED_ENV:
            raise InventoryError(f"{path}: {where}.env: {name} is set from the inventory itself")
        if not isinstance(value, (str, int, float, bool)):
            raise InventoryError(f"{path}: {where}.env.{name} must be a string or number")
    kw["env"] = tuple(sorted((k, str(v).lower() if isinstance(v, bool) else str(v))
                             for k, v in env.items()))  # fmt: skip
    try:  # an unknown profile fails at load, naming the known ones
        get_profile(kw["profile"], profiles)
    except InventoryError as exc:
        raise InventoryError(f"{path}: {where}: {exc}") from None
    return Device(id=device_id, **kw)
