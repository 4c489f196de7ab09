"""Flashing: put the client on a board over SSH, safely and repeatably.

1. Build the device's bundle here (client wheel, locked dependency wheels, settings,
   password, unit); its release id is a hash of all of it.
2. Probe the board (read-only): architecture, Python, glibc, systemd, current release.
   A board that already runs this release is "up to date": nothing is uploaded.
3. Upload the release into ``releases/<id>`` (the staging directory) with the wheels the
   board lacks; install a venv from those wheels only (``--no-index``) into ``venvs/<id>``,
   or reuse the one already there when only settings changed.
4. Switch ``current`` to it with a rename, install the unit, (re)start the client with
   systemd (or, where systemd does not run, the ``fedge-service`` supervisor) and check
   that it keeps running and connects to its broker (it writes ``state/connected`` with its
   pid once connected); otherwise go back to the previous release.

Any failure before the switch removes the staging directory; the previous install keeps
running untouched. See ``devices.remote_scripts`` for the board side.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from devices.bundle import Bundle, build_bundle, check_client_wheel
from devices.errors import FlashError
from devices.inventory import Device, Inventory
from devices.profiles import BoardProfile, board_arch
from devices.remote_scripts import ACTIVATE, INSTALL, PREPARE, PROBE
from devices.security import password_path
from devices.ssh import SshTarget
from devices.wheels import Wheelhouse, board_wheel_name, build_board_wheel

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FlashOptions:
    cache_dir: Path  # the wheelhouse cache on this machine (downloaded wheels and locks)
    refresh: bool = False  # resolve the dependencies again instead of using the lock
    check_s: float = 3.0  # the client must still run this long after a (re)start
    connect_s: float = 30.0  # ... and have connected to its broker within this (fedge's timeout)
    client_wheel: Path | None = None  # a prebuilt client wheel; None: build it from this tree


@dataclass(frozen=True)
class FlashResult:
    device: str
    release: str
    action: str  # "installed", "up to date", "restarted"
    previous: str = ""  # release the board ran before ("" if none)
    manager: str = ""  # systemd or supervisor
    password_created: bool = False

    def line(self) -> str:
        where = f"running under {self.manager}, connected" if self.manager else ""
        if self.action == "installed":
            was = f" (was {self.previous})" if self.previous else " (first install)"
            return f"{self.device}: installed release {self.release}{was}, {where}"
        return f"{self.device}: {self.action} (release {self.release}, {where})"


@dataclass(frozen=True)
class BoardState:
    """What the probe found on the board."""

    machine: str
    python: str  # "3.11", or "none" when the configured Python is missing
    bits: int
    glibc: str
    user: str
    systemd: bool
    current: str
    complete: bool
    manager: str
    unit_sha256: str
    running: bool  # the service (systemd unit or supervisor) is up
    client: bool  # the client process itself is alive
    connected: bool  # the running client itself reached its broker (not just its supervisor)
    wheels: frozenset[str]
    venvs: frozenset[str]  # complete virtual environments on the board

    @classmethod
    def parse(cls, text: str) -> BoardState:
        kv = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        return cls(
            machine=kv.get("machine", "?"),
            python=kv.get("python", "none"),
            bits=int(kv.get("bits", "0") or 0),
            glibc=kv.get("glibc", "none"),
            user=kv.get("user", "?"),
            systemd=kv.get("systemd") == "yes",
            current=kv.get("current", ""),
            complete=kv.get("complete") == "yes",
            manager=kv.get("manager", ""),
            unit_sha256=kv.get("unit", ""),
            running=kv.get("running") == "yes",
            client=kv.get("client") == "yes",
            connected=kv.get("connected") == "yes",
            wheels=frozenset(kv.get("wheels", "").split()),
            venvs=frozenset(kv.get("venvs", "").split()),
        )


def _version(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split("."))
    except ValueError:
        return ()


def check_board(state: BoardState, device: Device, profile: BoardProfile) -> None:
    """Refuse a board the profile's wheels cannot run on, naming the difference."""
    if state.python in ("none", "broken"):
        raise FlashError(
            f"{device.id}: no working Python at {device.python!r} on the board; install "
            f'Python {profile.python} or set python = "/path/to/python3" in the inventory'
        )
    arch = board_arch(state.machine, state.bits)
    if (arch, state.python) != (profile.arch, profile.python):
        raise FlashError(
            f"{device.id}: the board runs Python {state.python} on {arch}, but profile "
            f"{profile.name} is for Python {profile.python} on {profile.arch}; pick a matching "
            "profile or define one under [profiles]"
        )
    if _version(state.glibc) < _version(profile.glibc):
        raise FlashError(
            f"{device.id}: the board has glibc {state.glibc}, older than the {profile.glibc} of "
            f"profile {profile.name}; its wheels would not load"
        )


def _expected_manager(device: Device, state: BoardState) -> str:
    if device.service == "auto":
        return "systemd" if state.systemd else "supervisor"
    return device.service


def probe(target: SshTarget, device: Device) -> BoardState:
    done = target.run(PROBE, device.install_dir, device.python, device.unit_dir, device.unit_name)
    if done.returncode != 0:
        raise FlashError(f"{device.id}: probing the board failed: {_last(done.stderr)}")
    return BoardState.parse(done.stdout)


def _last(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln[len("ERROR: ") :] for ln in lines if ln.startswith("ERROR: ")]
    return errors[-1] if errors else (lines[-1] if lines else "no message")


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def flash_device(
    inventory: Inventory, device: Device, options: FlashOptions, progress: Progress = log.info
) -> FlashResult:
    """Install (or confirm) the client on one board; FlashError/SshError on failure."""
    target = SshTarget.of(device)
    target.check_key()
    with tempfile.TemporaryDirectory(prefix="edgefl-bundle-") as build_dir:
        bundle = build_bundle(
            inventory, device, Wheelhouse(options.cache_dir), Path(build_dir),
            refresh=options.refresh, client_wheel=options.client_wheel,
        )  # fmt: skip
    if bundle.password_created:
        progress(
            f"{device.id}: generated a new MQTT password; run `fedcoord devices broker-files` "
            "and reload the broker"
        )
    state = probe(target, device)
    check_board(state, device, bundle.profile)
    manager = _expected_manager(device, state)
    if manager == "systemd" and not state.systemd:
        raise FlashError(
            f'{device.id}: systemd is not running on the board; set service = "auto" (or '
            '"supervisor") in the inventory'
        )
    unit_sha = hashlib.sha256(bundle.files[device.unit_name].data).hexdigest()
    result = FlashResult(
        device.id, bundle.release, "installed", state.current if state.complete else "",
        manager, bundle.password_created,
    )  # fmt: skip
    if state.current == bundle.release and state.complete:
        same = state.manager == manager and state.unit_sha256 == unit_sha
        if state.running and state.connected and same:
            return FlashResult(device.id, bundle.release, "up to date", state.current, manager)
        why = "not connected to its broker" if state.client and same else "not running"
        progress(
            f"{device.id}: release {bundle.release} is installed but its client is {why}; "
            "restarting it"
        )
        _activate(target, device, bundle, options, inventory.fleet.broker)
        return FlashResult(device.id, bundle.release, "restarted", state.current, manager)
    _install(target, device, bundle, state, progress)
    progress(f"{device.id}: switching to release {bundle.release} and starting the client")
    try:
        _activate(target, device, bundle, options, inventory.fleet.broker)
    except BaseException:
        _discard(target, device, bundle)  # unless it became current: nothing to undo
        raise
    return result


def _install(
    target: SshTarget, device: Device, bundle: Bundle, state: BoardState, progress: Progress
) -> None:
    root, rel = device.install_dir, bundle.release
    done = target.run(PREPARE, root, rel)
    if done.returncode != 0:
        raise FlashError(f"{device.id}: preparing {root} failed: {_last(done.stderr)}")
    reuse = bundle.venv in state.venvs  # only settings changed: no wheels needed
    missing = [] if reuse else [w for w in bundle.wheels if w.name not in state.wheels]
    size = sum(len(f.data) for f in bundle.files.values()) + sum(w.stat().st_size for w in missing)
    progress(
        f"{device.id}: uploading release {rel} ({len(bundle.files)} files, {len(missing)} of "
        f"{len(bundle.wheels)} wheels, {size / 1e6:.1f} MB) to {target.where}:{root}"
    )

    def write(tar: tarfile.TarFile) -> None:
        for name, f in sorted(bundle.files.items()):
            _add(tar, f"releases/{rel}/{name}", f.data, f.mode)
        for wheel in missing:
            _add(tar, f"releases/{rel}/incoming/{wheel.name}", wheel.read_bytes(), 0o644)

    try:
        target.upload(root, write)
        if reuse:
            progress(f"{device.id}: reusing the installed environment {root}/venvs/{bundle.venv}")
        else:
            progress(f"{device.id}: installing into {root}/venvs/{bundle.venv} (pip --no-index)")
        done = target.run(
            INSTALL, root, rel, device.python, bundle.wheel_name, bundle.profile.runtime,
            device.user, bundle.venv,
        )  # fmt: skip
        if done.returncode != 0:
            raise FlashError(f"{device.id}: install failed: {_last(done.stderr)}")
    except BaseException:
        _discard(target, device, bundle)
        raise


def _discard(target: SshTarget, device: Device, bundle: Bundle) -> None:
    """Remove a staging release (never the current one) and a half-built venv; best effort."""
    script = 'cur=$(readlink "$1/current" 2>/dev/null || true)\n'
    script += '[ "${cur##*/}" = "$2" ] || rm -rf "$1/releases/$2"\n'
    script += '[ -f "$1/venvs/$3/.complete" ] || rm -rf "$1/venvs/$3"\n'
    try:
        target.run(script, device.install_dir, bundle.release, bundle.venv, timeout=60)
    except Exception as exc:  # the original error matters more
        log.warning(
            "%s: could not remove the staging release %s: %s", device.id, bundle.release, exc
        )


def _activate(
    target: SshTarget, device: Device, bundle: Bundle, options: FlashOptions, broker: str
) -> None:
    done = target.run(
        ACTIVATE, device.install_dir, bundle.release, device.unit_name, device.unit_dir,
        device.service, f"{options.check_s:g}", str(math.ceil(options.connect_s)),
        broker, timeout=max(900, options.check_s + options.connect_s + 120),
    )  # fmt: skip
    if done.returncode != 0:
        raise FlashError(f"{device.id}: {_last(done.stderr)}")


def plan_lines(inventory: Inventory, device: Device, options: FlashOptions) -> list[str]:
    """What ``flash`` would do, without connecting, downloading or writing anything."""
    profile = inventory.profile(device)
    wheelhouse = Wheelhouse(options.cache_dir)
    lock = None if options.refresh else wheelhouse.cached(profile, verify=False)
    target = SshTarget.of(device)
    root, fleet = device.install_dir, inventory.fleet
    pw = password_path(fleet.secrets_dir, device.id)
    if lock is not None:
        wheels = f"locked in {wheelhouse.lock_path(profile)}: {' '.join(lock.pins())}"
    else:
        wheels = "not cached yet: " + " ".join(wheelhouse.pip_command(profile, Path("DIR"))[2:])
    if options.client_wheel is not None:
        client = check_client_wheel(options.client_wheel).name
    else:
        client = f"{board_wheel_name()} (edge_client only, built from this tree)"
        with tempfile.TemporaryDirectory() as tmp:
            build_board_wheel(Path(tmp))  # only to check that the client wheel builds
    service = {
        "auto": "systemd if it runs on the board, else the fedge-service supervisor",
        "systemd": "systemd",
        "supervisor": "the fedge-service supervisor (nohup, pid file)",
    }[device.service]
    return [
        f"{device.id}: plan (dry run: nothing is changed)",
        f"  board     {target.where}, profile {profile.name} ({profile.describe()}), "
        f"{device.python}",
        f"  client    {client} + {profile.runtime}",
        f"  wheels    {wheels}",
        f"  broker    {fleet.broker}, job {fleet.job}, user {device.id}, password "
        f"{pw} ({'exists' if pw.exists() else 'would be generated'})",
        "  signing   " + _signing_plan(fleet.trust_key),
        f"  1. check the board: {profile.arch}, Python {profile.python}, glibc >= {profile.glibc}"
        "; stop here if it already runs the same release (up to date)",
        f"  2. upload the release to {root}/releases/<id>, missing wheels to {root}/wheelhouse",
        f"  3. create {root}/venvs/<id> with {device.python} and pip install --no-index "
        f"--find-links {root}/wheelhouse (reused when only settings changed)",
        f"  4. switch {root}/current to the new release",
        f"  5. write {device.unit_dir}/{device.unit_name} and (re)start the client with {service}",
        f"  6. check that the client still runs after {options.check_s:g} s and connected to "
        f"{fleet.broker} within {options.connect_s:g} s, else go back to the previous release",
    ]


def _signing_plan(trust_key: Path | None) -> str:
    if trust_key is None:
        return "none (unsigned = true): boards accept unsigned models and rounds"
    made = "" if trust_key.exists() else " (made on the first flash)"
    return (
        f"boards trust {trust_key}{made} (EDGEFL_TRUST_KEY): unsigned models and rounds are refused"
    )
