"""``fedcoord devices``: board profiles, the fleet inventory, flashing, presence, logs.

Every command reads the inventory (``-i FILE``, ``$EDGEFL_INVENTORY``, or ``fleet.toml``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from devices.inventory import Inventory

inventory_option = click.option(
    "-i",
    "--inventory",
    "inventory_path",
    envvar="EDGEFL_INVENTORY",
    default="fleet.toml",
    show_default=True,
    show_envvar=True,
    type=click.Path(dir_okay=False),
    help="The fleet inventory (TOML).",
)


def default_cache_dir() -> Path:
    """``$EDGEFL_CACHE_DIR``, else ``$XDG_CACHE_HOME/edgefl``, else ``~/.cache/edgefl``."""
    if os.environ.get("EDGEFL_CACHE_DIR"):
        return Path(os.environ["EDGEFL_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "edgefl"


def table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


@click.group()
def devices() -> None:
    """Boards: profiles, the inventory, flashing the client over SSH, presence, logs.

    \b
    fedcoord devices list                      # the inventory (fleet.toml)
    fedcoord devices broker-files              # passwords, Mosquitto passwd + acl
    fedcoord devices flash --all --dry-run     # what flashing would do
    fedcoord devices flash pi-01               # install or update one board
    fedcoord devices status                    # online / offline from the broker
    """


@devices.command()
def profiles() -> None:
    """The built-in board profiles."""
    from devices.profiles import PROFILES

    rows = [["profile", "board", "cpu", "ram", "os", "arch", "runtime", "threads", "batch"]]
    for p in PROFILES.values():
        rows.append([
            p.name, p.board, p.cpu, f"{p.ram_mb} MB", p.os, p.arch, p.runtime, str(p.threads),
            str(p.batch_size),
        ])  # fmt: skip
    click.echo(table(rows))


@devices.command("list")
@inventory_option
def list_devices(inventory_path: str) -> None:
    """The devices of the inventory and how each is reached."""
    from devices.inventory import load_inventory

    inv = load_inventory(inventory_path)
    rows = [["device", "ssh", "profile", "arch", "runtime", "data"]]
    for d in inv.devices:
        p = inv.profile(d)
        data = d.data if d.data is not None else f"dataset {d.dataset}"
        rows.append([d.id, f"{d.ssh_user}@{d.host}:{d.ssh_port}", p.name, p.arch, p.runtime, data])
    click.echo(f"job {inv.fleet.job} on {inv.fleet.broker}: {len(inv.devices)} device(s)")
    click.echo(table(rows))


@devices.command()
@inventory_option
@click.argument("device_ids", nargs=-1, metavar="[DEVICE]...")
@click.option("--all", "all_devices", is_flag=True, help="Every device of the inventory.")
@click.option("--dry-run", is_flag=True, help="Print the plan; connect to nothing, change nothing.")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Wheelhouse cache [default: $EDGEFL_CACHE_DIR or ~/.cache/edgefl].",
)
@click.option("--refresh", is_flag=True, help="Resolve and download the dependencies again.")
@click.option(
    "--client-wheel",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Install this prebuilt client wheel (e.g. a released one) instead of building the "
    "edgefl-board wheel (edge_client only) from this tree.",
)
@click.option(
    "--check-seconds",
    type=click.FloatRange(min=0),
    default=3.0,
    show_default=True,
    help="The client must still run this long after starting, else the flash rolls back.",
)
@click.option(
    "--connect-seconds",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="The new client must connect to its broker within this, else the flash rolls back.",
)
def flash(
    inventory_path: str,
    device_ids: tuple[str, ...],
    all_devices: bool,
    dry_run: bool,
    cache_dir: Path | None,
    refresh: bool,
    client_wheel: Path | None,
    check_seconds: float,
    connect_seconds: float,
) -> None:
    """Install or update the client on boards over SSH, and start it.

    Builds each device's bundle (the edge client wheel, its dependencies downloaded for the
    board's architecture and Python, the job's broker settings, the device's MQTT password,
    a systemd unit), uploads what the board lacks, installs it into a new virtual
    environment, switches to it and (re)starts the service, and goes back to the previous
    release unless the new client stays up and connects to its broker. Safe to repeat: a
    board whose client runs this release and is connected is "up to date" and left alone.
    """
    from devices.errors import DeviceError
    from devices.flash import FlashOptions, flash_device, plan_lines
    from devices.inventory import load_inventory

    if bool(device_ids) == all_devices:
        raise click.UsageError("name the devices to flash, or give --all (not both)")
    inv = with_trust_key(load_inventory(inventory_path), dry_run)
    targets = inv.select(device_ids, all_devices)
    options = FlashOptions(
        cache_dir or default_cache_dir(), refresh, check_seconds, connect_seconds, client_wheel
    )
    if dry_run:
        for d in targets:
            click.echo("\n".join(plan_lines(inv, d, options)))
        return
    failed = []
    for d in targets:
        try:
            result = flash_device(inv, d, options, progress=click.echo)
        except DeviceError as exc:
            if len(targets) == 1:
                raise
            click.echo(f"error: {exc}", err=True)
            failed.append(d.id)
            continue
        click.echo(result.line())
    if failed:
        raise DeviceError(f"{len(failed)} of {len(targets)} devices failed: {', '.join(failed)}")


@devices.command("client-wheel")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("dist"),
    show_default=True,
    help="Directory to write the wheel into.",
)
def client_wheel(out: Path) -> None:
    """Build the board's wheel: edge_client and fedge only (what `devices flash` installs).

    About 0.1 MB instead of the 1.7 MB of the full edgefl wheel (which also holds the
    coordinator, the exporter and devices); built here without setuptools or an index, byte
    for byte the same from the same sources. Install it on a board with its extra:
    pip install 'edgefl_board-VERSION-py3-none-any.whl[board]' (or [board-legacy]).
    """
    from devices.wheels import build_board_wheel

    wheel = build_board_wheel(out)
    click.echo(f"wrote {wheel} ({wheel.stat().st_size / 1e3:.0f} kB: edge_client and fedge)")


def with_trust_key(inv: Inventory, dry_run: bool) -> Inventory:
    """The inventory with the key boards will trust: its trust_key, else the job's own key
    (made now unless it exists or this is a dry run), or none when it says unsigned."""
    import dataclasses

    from coordinator.job_keys import job_key_dir, job_signing_key
    from coordinator.pki import SIGNING_PUB

    fleet = inv.fleet
    if fleet.unsigned or fleet.trust_key is not None:
        return inv
    if dry_run:
        public = job_key_dir(fleet.job) / SIGNING_PUB
    else:
        keys, made = job_signing_key(fleet.job)
        if made:
            click.echo(
                f"made job {fleet.job}'s signing key {keys.private} (key id {keys.key_id}); "
                f"fedcoord start --job {fleet.job} signs with it"
            )
        public = keys.public
    return dataclasses.replace(inv, fleet=dataclasses.replace(fleet, trust_key=public))


@devices.command()
@inventory_option
@click.option("--broker", metavar="URL", help="Broker URL [default: the inventory's].")
@click.option(
    "--username",
    help="Broker user [default: the inventory's coordinator_user, if its password exists].",
)
@click.option(
    "--password-file",
    type=click.Path(dir_okay=False),
    help="Broker password file [default: secrets/<user>.password].",
)
@click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per device.")
def status(
    inventory_path: str,
    broker: str | None,
    username: str | None,
    password_file: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    """Which devices are online, from their retained status on the broker."""
    from devices.inventory import load_inventory
    from devices.presence import age, fleet_presence, read_statuses
    from devices.security import read_password
    from edge_client.transport import BrokerConfig

    inv = load_inventory(inventory_path)
    fleet = inv.fleet
    user = username or fleet.coordinator_user
    password = None
    if password_file is None:
        password = read_password(fleet.secrets_dir, user)
        if username is None and password is None:
            user = None  # no coordinator password yet: an anonymous broker
    ca = str(fleet.ca_file) if fleet.ca_file else None
    config = BrokerConfig.from_url(
        broker or fleet.coordinator_broker or fleet.broker,
        username=user, password=password, password_file=password_file, ca_file=ca,
    )  # fmt: skip
    statuses = read_statuses(config, fleet.job, prefix=fleet.prefix, timeout=timeout)
    now = time.time()
    presence = fleet_presence(inv, statuses)
    if as_json:
        for p in presence:
            click.echo(json.dumps(p.row(now)))
        return
    rows = [["device", "state", "seen", "round", "interpreter", "detail"]]
    for p in presence:
        r: dict[str, Any] = p.row(now)
        note = "" if p.in_inventory else "(not in the inventory) "
        rows.append([
            p.device, str(r["state"]), age(r["seen_s"]),
            "-" if r["round"] is None else str(r["round"]), str(r["interpreter"]) or "-",
            note + str(r["detail"]),
        ])  # fmt: skip
    online = sum(1 for p in presence if p.status is not None and p.status.state != "offline")
    click.echo(f"job {fleet.job} on {config.url}: {online} of {len(presence)} device(s) online")
    click.echo(table(rows))


@devices.command()
@inventory_option
@click.argument("device_id", metavar="DEVICE")
@click.option("-n", "--lines", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C stops).")
def logs(inventory_path: str, device_id: str, lines: int, follow: bool) -> None:
    """The client's log on a board (journald, or the supervisor's log file)."""
    from devices.errors import DeviceError
    from devices.inventory import load_inventory
    from devices.remote_scripts import LOGS
    from devices.ssh import SshTarget

    inv = load_inventory(inventory_path)
    d = inv.device(device_id)
    done = SshTarget.of(d).run(
        LOGS, d.install_dir, d.unit_name, str(lines), "yes" if follow else "no",
        timeout=None if follow else 120, capture=False,
    )  # fmt: skip
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()[-1:] or ["no message"]
        raise DeviceError(f"{device_id}: {message[0].removeprefix('ERROR: ')}")


@devices.command("broker-files")
@inventory_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output directory [default: the inventory's broker_dir, ./broker].",
)
@click.option(
    "--install-dir",
    default="/etc/mosquitto/edgefl",
    show_default=True,
    help="Where the passwd, acl and clientids.json files will live on the broker (named in "
    "edgefl.conf).",
)
@click.option(
    "--conf-dir",
    default="/etc/mosquitto/conf.d",
    show_default=True,
    help="The directory the broker's mosquitto.conf includes (include_dir), for edgefl.conf.",
)
@click.option(
    "--plugin",
    metavar="PATH",
    help="Mosquitto's dynamic security plugin on the broker [default: where Debian puts it "
    "on this machine, e.g. /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so].",
)
def broker_files(
    inventory_path: str, out: Path | None, install_dir: str, conf_dir: str, plugin: str | None
) -> None:
    """Per-device MQTT passwords, a Mosquitto password file, ACL, client ids and conf snippet.

    Each device may write only its own update and status topics, read the model, global
    weights, round, control and metrics topics, and connect only with its own client id;
    the coordinator user may do everything. Safe to repeat: existing passwords and matching
    hashes are kept. Needs Mosquitto 2.0 or newer.
    """
    from devices.inventory import load_inventory
    from devices.security import write_broker_files

    inv = load_inventory(inventory_path)
    written = write_broker_files(inv, out, install_dir=install_dir, plugin=plugin)
    for f in written:
        click.echo(f"{'wrote    ' if f.changed else 'unchanged'} {f.path}")
    click.echo(f"passwords in {inv.fleet.secrets_dir} (mode 600)")
    d, i = written[0].path.parent, install_dir
    files = f"{d}/passwd {d}/acl {d}/clientids.json"
    click.echo("install on a broker that runs under systemd (Debian, Raspberry Pi OS):")
    click.echo(
        f"  sudo install -d -m 750 -g mosquitto {i} && "
        f"sudo install -m 640 -g mosquitto {files} {i}/ && "
        f"sudo install -m 644 {d}/edgefl.conf {conf_dir}/ && "
        "sudo systemctl restart mosquitto"
    )
    click.echo(
        "or on a Mosquitto you start yourself, as the user it runs as (its config needs "
        f"include_dir {conf_dir}):"
    )
    click.echo(
        f"  install -d -m 700 {i} && install -m 600 {files} {i}/ && "
        f"install -d {conf_dir} && install -m 644 {d}/edgefl.conf {conf_dir}/"
    )
    click.echo("  then restart it: kill $(pidof mosquitto); mosquitto -d -c YOUR-mosquitto.conf")
