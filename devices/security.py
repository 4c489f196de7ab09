"""Broker security for a fleet: per-device passwords, a Mosquitto password file and ACL.

Each board gets its own broker user, named like its device id, with a random password
kept in ``secrets_dir/<user>.password`` (mode 600) on this machine and copied to that
board only. The ACL lets a device write nothing but its own ``update`` and ``status``
topics and read the model, global weights, round, control and metrics topics; the
coordinator user may do everything under the prefix.

Client ids are bound to user names: Mosquitto disconnects a client when another one
connects with the same client id (and hands the newcomer a persistent session), so any
device could otherwise kick the coordinator (``coordinator-<job>``) or another board and
fire its Last Will. ``clientids.json``, loaded by Mosquitto's dynamic security plugin,
lets each device user connect only with its own client id (``edgefl-<job>-<device>``, as
``fedge run`` uses); it holds no passwords and no roles, so the password file and the ACL
still decide everything else. (``use_username_as_clientid`` would not do: every tool that
logs in as the coordinator user, ``devices status`` included, would then take over the
coordinator's session.)

The password file uses Mosquitto 2's PBKDF2-SHA512 format (``$7$``, what
``mosquitto_passwd`` writes), produced here so this machine needs no Mosquitto. Existing
hashes that still match their password are kept, so regenerating changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import platform
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from devices.errors import DeviceError
from devices.inventory import Inventory

log = logging.getLogger(__name__)

PASSWORD_BYTES = 24  # 192 random bits, 32 URL-safe characters
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default for $7$
SALT_BYTES = 12  # mosquitto_passwd's salt length
DEFAULT_INSTALL_DIR = "/etc/mosquitto/edgefl"
DEFAULT_CONF_DIR = "/etc/mosquitto/conf.d"
DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"  # ships with Mosquitto 2.0 (Debian: mosquitto)
_MULTIARCH = {
    "x86_64": "x86_64-linux-gnu",
    "aarch64": "aarch64-linux-gnu",
    "arm64": "aarch64-linux-gnu",
}


def device_client_id(job: str, device: str) -> str:
    """The MQTT client id ``fedge run`` connects with (edge_client/client.py)."""
    return f"edgefl-{job}-{device}"


def default_plugin_path() -> str:
    """Where Debian (and Raspberry Pi OS) put the dynamic security plugin on this machine."""
    found = sorted(Path("/usr/lib").glob(f"*/{DYNSEC_PLUGIN}"))
    if found:
        return str(found[0])
    machine = platform.machine()
    triplet = _MULTIARCH.get(
        machine, "arm-linux-gnueabihf" if machine.startswith("arm") else machine
    )
    return f"/usr/lib/{triplet}/{DYNSEC_PLUGIN}"


def password_path(secrets_dir: Path, user: str) -> Path:
    return secrets_dir / f"{user}.password"


def read_password(secrets_dir: Path, user: str) -> str | None:
    try:
        return password_path(secrets_dir, user).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DeviceError(f"cannot read the MQTT password of {user}: {exc}") from None


def ensure_password(secrets_dir: Path, user: str) -> tuple[str, bool]:
    """The user's password, generating and saving one (mode 600) if none exists yet.

    Returns ``(password, created)``.
    """
    existing = read_password(secrets_dir, user)
    if existing is not None:
        return existing, False
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    try:
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(password_path(secrets_dir, user), password + "\n")
    except OSError as exc:
        raise DeviceError(
            f"cannot save the MQTT password of {user} in {secrets_dir}: {exc}"
        ) from None
    log.info("generated an MQTT password for %s in %s", user, password_path(secrets_dir, user))
    return password, True


def _write_private(path: Path, text: str, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def mosquitto_hash(
    password: str, *, salt: bytes | None = None, iterations: int = PBKDF2_ITERATIONS
) -> str:
    """``$7$ITERATIONS$SALT$HASH``: PBKDF2-HMAC-SHA512, 64-byte hash, standard base64."""
    salt = salt if salt is not None else secrets.token_bytes(SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def check_mosquitto_hash(password: str, encoded: str) -> bool:
    """True if ``encoded`` (a ``$7$`` entry) is the hash of ``password``."""
    parts = encoded.split("$")
    if len(parts) != 5 or parts[1] != "7" or not parts[2].isdigit():
        return False
    try:
        salt, digest = base64.b64decode(parts[3]), base64.b64decode(parts[4])
    except ValueError:
        return False
    mine = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), len(digest))
    return hmac.compare_digest(mine, digest)


def password_file_text(credentials: dict[str, str], previous: str = "") -> str:
    """A Mosquitto password file for ``{user: password}``, reusing matching old hashes."""
    old = {}
    for line in previous.splitlines():
        user, sep, encoded = line.partition(":")
        if sep:
            old[user] = encoded
    lines = []
    for user in sorted(credentials):
        keep = old.get(user)
        if keep is None or not check_mosquitto_hash(credentials[user], keep):
            keep = mosquitto_hash(credentials[user])
        lines.append(f"{user}:{keep}")
    return "\n".join(lines) + "\n"


def acl_text(devices: Iterable[str], *, prefix: str, coordinator_user: str) -> str:
    """The Mosquitto ACL: ``%u`` binds a device's topics to its authenticated user name."""
    names = ", ".join(sorted(devices)) or "none yet"
    return (
        "# edgefl broker ACL, generated by `fedcoord devices broker-files`; do not edit.\n"
        f"# Devices ({names}) log in with their device id as user name.\n"
        "\n"
        "# every device: read what the coordinator publishes, write only its own topics\n"
        f"pattern read {prefix}/+/model/#\n"
        f"pattern read {prefix}/+/global/#\n"
        f"pattern read {prefix}/+/round\n"
        f"pattern read {prefix}/+/control\n"
        f"pattern read {prefix}/+/metrics\n"
        f"pattern write {prefix}/+/update/%u/#\n"
        f"pattern write {prefix}/+/status/%u\n"
        "\n"
        "# the coordinator: everything under the prefix\n"
        f"user {coordinator_user}\n"
        f"topic readwrite {prefix}/#\n"
    )


def clientids_text(job: str, devices: Iterable[str]) -> str:
    """The dynamic security plugin's file: each device user may use one client id only.

    No passwords (the plugin defers to the password file) and no roles; the default ACL
    access is "no opinion", so the ACL file decides (an unsubscribe concerns only the
    client itself and is allowed).
    """
    clients = [
        {
            "username": d,
            "clientid": device_client_id(job, d),
            "textdescription": "edgefl device: may connect with this client id only",
        }
        for d in sorted(devices)
    ]
    data = {
        "defaultACLAccess": {
            "publishClientSend": False,
            "publishClientReceive": False,
            "subscribe": False,
            "unsubscribe": True,
        },
        "clients": clients,
        "groups": [],
        "roles": [],
    }
    return json.dumps(data, indent=1) + "\n"


def conf_text(install_dir: str = DEFAULT_INSTALL_DIR, plugin: str | None = None) -> str:
    """A ``conf.d`` snippet: authentication, the ACL and client ids bound to user names."""
    plugin = plugin or default_plugin_path()
    return (
        "# edgefl fleet, generated by `fedcoord devices broker-files` (Mosquitto 2.0 or newer).\n"
        "# Copy to /etc/mosquitto/conf.d/edgefl.conf; the passwd, acl and clientids.json files\n"
        f"# go to {install_dir}/ (readable by the mosquitto user only).\n"
        "# Boards need a listener on the LAN, e.g. (once, in any .conf):\n"
        "#   listener 1883            (or listener 8883 with cafile/certfile/keyfile for TLS)\n"
        "per_listener_settings false\n"
        "allow_anonymous false\n"
        f"password_file {install_dir}/passwd\n"
        f"acl_file {install_dir}/acl\n"
        "# Each device may connect with its own client id only, so none can take over the\n"
        "# coordinator's session or kick another board (fedcoord devices broker-files --plugin\n"
        "# names the plugin where it is elsewhere, e.g. a broker of another architecture).\n"
        f"plugin {plugin}\n"
        f"plugin_opt_config_file {install_dir}/clientids.json\n"
    )


@dataclass(frozen=True)
class WrittenFile:
    path: Path
    changed: bool


def write_broker_files(
    inventory: Inventory,
    out_dir: Path | None = None,
    *,
    install_dir: str = DEFAULT_INSTALL_DIR,
    plugin: str | None = None,
) -> list[WrittenFile]:
    """Write ``passwd``, ``acl``, ``clientids.json`` and ``edgefl.conf`` for the inventory.

    Passwords missing from the secrets directory are generated (and then reused by
    ``devices flash``). A file whose content would not change is left untouched.
    """
    fleet = inventory.fleet
    out = out_dir or fleet.broker_dir
    users = [d.id for d in inventory.devices] + [fleet.coordinator_user]
    credentials = {u: ensure_password(fleet.secrets_dir, u)[0] for u in users}
    passwd_path = out / "passwd"
    try:
        previous = passwd_path.read_text(encoding="utf-8") if passwd_path.exists() else ""
        out.mkdir(parents=True, exist_ok=True)
        texts = {
            passwd_path: password_file_text(credentials, previous),
            out / "acl": acl_text(
                [d.id for d in inventory.devices],
                prefix=fleet.prefix,
                coordinator_user=fleet.coordinator_user,
            ),
            out / "clientids.json": clientids_text(fleet.job, [d.id for d in inventory.devices]),
            out / "edgefl.conf": conf_text(install_dir, plugin),
        }
        written = []
        for path, text in texts.items():
            changed = not path.exists() or path.read_text(encoding="utf-8") != text
            if changed:  # only the password hashes are private
                _write_private(path, text, 0o600 if path == passwd_path else 0o644)
            written.append(WrittenFile(path, changed))
    except OSError as exc:
        raise DeviceError(f"cannot write the broker files in {out}: {exc}") from None
    return written
