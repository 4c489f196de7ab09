"""A device's bundle: everything one board needs, named by the hash of its content.

Files of a release (``releases/<id>/`` on the board): the client wheel, the pinned
``requirements.txt``, ``wheels.sha256`` (the dependency wheels, kept in the board's shared
wheelhouse), ``fedge.env`` (the job's broker settings for ``fedge run``), the device's MQTT
``password``, the broker's ``ca.crt`` (``mqtts://`` only), the coordinator's public signing
key ``signing.pub`` (with ``trust_key``), the systemd unit, the fallback
supervisor and ``bundle.json``. The release id is a hash over all of that and the install
paths, so flashing the same inventory twice yields the same id: nothing to do. The venv id
covers only what is installed (wheels, Python), so a settings change reuses the venv.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import edge_client
from devices.errors import DeviceError
from devices.inventory import Device, Inventory
from devices.profiles import BoardProfile
from devices.remote_scripts import SUPERVISOR
from devices.security import ensure_password
from devices.wheels import DependencyLock, Wheelhouse, build_board_wheel
from edge_client.errors import EdgeFLError

log = logging.getLogger(__name__)

_UNSAFE_ENV = set('"\\$`\n\r')  # characters systemd and sh would read differently


@dataclass(frozen=True)
class BundleFile:
    data: bytes = field(repr=False)
    mode: int = 0o644


@dataclass(frozen=True)
class Bundle:
    device: Device
    profile: BoardProfile
    release: str  # 16 hex digits of the content hash
    files: dict[str, BundleFile] = field(hash=False)  # release-relative path -> file
    wheels: tuple[Path, ...]  # dependency wheels (local paths) for the board's wheelhouse
    wheel_name: str  # the client wheel's file name (in `files`)
    venv: str  # id of the virtual environment: hash of the wheels and the board's Python
    password_created: bool = False


def env_text(inventory: Inventory, device: Device, profile: BoardProfile) -> str:
    """``fedge.env``: ``KEY="value"`` lines that systemd and ``sh`` read alike."""
    fleet, root = inventory.fleet, device.install_dir
    values = {
        "EDGEFL_BROKER": fleet.broker,
        "EDGEFL_JOB": fleet.job,
        "EDGEFL_DEVICE_ID": device.id,
        "EDGEFL_PREFIX": fleet.prefix,
        "EDGEFL_STATE_DIR": f"{root}/state",
        "EDGEFL_RUNTIME": profile.runtime,
        "EDGEFL_THREADS": str(profile.threads),
        "EDGEFL_MQTT_USERNAME": device.id,
        "EDGEFL_MQTT_PASSWORD_FILE": f"{root}/current/password",
    }
    if device.data is not None:
        values["EDGEFL_DATA"] = device.data
    else:
        values["EDGEFL_DATASET"] = str(device.dataset)
    if fleet.ca_file is not None:
        values["EDGEFL_CA_FILE"] = f"{root}/current/ca.crt"
    if fleet.trust_key is not None:
        values["EDGEFL_TRUST_KEY"] = f"{root}/current/signing.pub"
    values.update(device.env)  # the inventory's own settings win over the profile's
    lines = [f"# fedge run settings for {device.id}, made by `fedcoord devices flash`"]
    for key in sorted(values):
        if _UNSAFE_ENV & set(values[key]):
            raise DeviceError(f"{device.id}: {key} contains a quote, $, ` or backslash")
        lines.append(f'{key}="{values[key]}"')
    return "\n".join(lines) + "\n"


def unit_text(device: Device, profile: BoardProfile) -> str:
    root = device.install_dir
    return f"""\
# edgefl client for {device.id} (profile {profile.name}), made by `fedcoord devices flash`
[Unit]
Description=edgefl edge client {device.id} (federated learning)
Wants=network-online.target time-sync.target
After=network-online.target time-sync.target

[Service]
Type=simple
User={device.user}
WorkingDirectory={root}
EnvironmentFile={root}/current/fedge.env
ExecStart={root}/current/venv/bin/fedge run
# SIGTERM: training stops between two batches, the status goes offline, exit 0
TimeoutStopSec=30
# exit 1 (e.g. broker unreachable at boot): try again
Restart=on-failure
RestartSec=10
MemoryMax={profile.memory_max_mb}M
NoNewPrivileges=yes
PrivateTmp=yes
ProtectSystem=strict
ProtectHome=read-only
ReadWritePaths={root}/state

[Install]
WantedBy=multi-user.target
"""


def supervisor_text(device: Device) -> str:
    return SUPERVISOR.replace("__DIR__", "'" + device.install_dir.replace("'", "") + "'")


def build_bundle(
    inventory: Inventory,
    device: Device,
    wheelhouse: Wheelhouse,
    build_dir: Path,
    *,
    refresh: bool = False,
    client_wheel: Path | None = None,
) -> Bundle:
    """Make the bundle of ``device``: downloads dependencies once, generates its password.

    ``client_wheel``: a prebuilt wheel holding ``edge_client`` (e.g. a released one) instead
    of the ``edgefl-board`` wheel built from this tree.
    """
    profile = inventory.profile(device)
    lock = wheelhouse.resolve(profile, refresh=refresh)
    password, created = ensure_password(inventory.fleet.secrets_dir, device.id)
    wheel = check_client_wheel(client_wheel) if client_wheel else build_board_wheel(build_dir)
    files = {
        wheel.name: BundleFile(wheel.read_bytes()),
        "requirements.txt": BundleFile(("\n".join(lock.pins()) + "\n").encode()),
        "wheels.sha256": BundleFile(
            "".join(f"{w.sha256}  {w.filename}\n" for w in lock.wheels).encode()
        ),
        "fedge.env": BundleFile(env_text(inventory, device, profile).encode(), 0o600),
        "password": BundleFile((password + "\n").encode(), 0o600),
        device.unit_name: BundleFile(unit_text(device, profile).encode()),
        "supervise.sh": BundleFile(supervisor_text(device).encode(), 0o755),
    }
    if inventory.fleet.ca_file is not None:
        try:
            files["ca.crt"] = BundleFile(inventory.fleet.ca_file.read_bytes())
        except OSError as exc:
            raise DeviceError(f"cannot read ca_file {inventory.fleet.ca_file}: {exc}") from None
    if inventory.fleet.trust_key is not None:
        files["signing.pub"] = BundleFile(trusted_key(inventory.fleet.trust_key))
    venv = venv_id(files[wheel.name].data, files["wheels.sha256"].data, device, profile)
    files["bundle.json"] = BundleFile(_manifest(device, profile, lock, wheel.name, venv))
    release = release_id(files, device)
    return Bundle(
        device=device,
        profile=profile,
        release=release,
        files=files,
        wheels=tuple(wheelhouse.path(w) for w in lock.wheels),
        wheel_name=wheel.name,
        venv=venv,
        password_created=created,
    )


def trusted_key(path: Path) -> bytes:
    """The coordinator's public key file, refused unless it is an Ed25519 public key."""
    from edge_client.signing import Verifier

    if not path.is_file():
        raise DeviceError(f"trust_key {path} does not exist (fedcoord keys generate makes it)")
    try:
        Verifier.from_spec(str(path))
        return path.read_bytes()
    except (EdgeFLError, OSError):
        raise DeviceError(
            f"trust_key {path} is not an Ed25519 public key: give the signing.pub that "
            "fedcoord keys generate writes"
        ) from None


def check_client_wheel(path: Path) -> Path:
    """A prebuilt client wheel, refused unless it holds ``edge_client`` and ``fedge``."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            entry = next((n for n in names if n.endswith(".dist-info/entry_points.txt")), None)
            has_fedge = entry is not None and b"fedge = edge_client.cli:main" in zf.read(entry)
    except (OSError, zipfile.BadZipFile) as exc:
        raise DeviceError(f"cannot read the client wheel {path}: {exc}") from None
    if not path.name.endswith(".whl") or "edge_client/cli.py" not in names or not has_fedge:
        raise DeviceError(f"{path} is not a wheel of the edge client (edge_client + fedge)")
    return path


def _manifest(
    device: Device, profile: BoardProfile, lock: DependencyLock, wheel: str, venv: str
) -> bytes:
    data = {
        "venv": venv,
        "device": device.id,
        "profile": profile.name,
        "edge_client": edge_client.__version__,
        "wheel": wheel,
        "requirements": lock.pins(),
        "python": device.python,
        "install_dir": device.install_dir,
        "unit_dir": device.unit_dir,
        "service": device.service,
    }
    return (json.dumps(data, indent=1, sort_keys=True) + "\n").encode()


def venv_id(wheel: bytes, wheels_sha256: bytes, device: Device, profile: BoardProfile) -> str:
    """What the venv holds: the client wheel, the pinned wheels, the Python that runs them."""
    h = hashlib.sha256(f"edgefl-venv-1\0{device.python}\0{profile.runtime}\0".encode())
    h.update(hashlib.sha256(wheel).digest() + hashlib.sha256(wheels_sha256).digest())
    return h.hexdigest()[:16]


def release_id(files: dict[str, BundleFile], device: Device) -> str:
    """Hash of every file (name, mode, bytes) and where it goes: same inputs, same id."""
    h = hashlib.sha256(f"edgefl-release-1\0{device.install_dir}\0{device.unit_dir}\0".encode())
    for name in sorted(files):
        f = files[name]
        h.update(f"{name}\0{f.mode:o}\0{hashlib.sha256(f.data).hexdigest()}\0".encode())
    return h.hexdigest()[:16]
