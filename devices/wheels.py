"""The wheels a board installs: the client itself and its pinned dependencies.

The client wheel (``edgefl-board``) holds ``edge_client`` alone, with the ``fedge``
command: a board needs nothing of the coordinator, the exporter or this package, and
the wheel is built here in milliseconds, byte for byte the same from the same sources
(fixed timestamps, sorted entries), so an unchanged client never looks like an update.

Dependencies are downloaded once per profile with ``pip download --only-binary=:all:`` for
the board's platform tags, Python and ABI, then locked (exact files and sha256) in a
wheelhouse cache. Later bundles reuse the lock without asking an index; ``refresh`` asks
again. A board installs them with ``pip install --no-index``: it needs no internet.
"""

from __future__ import annotations

import base64
import configparser
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import edge_client
from devices.errors import DeviceError
from devices.profiles import BoardProfile

log = logging.getLogger(__name__)

BOARD_DIST = "edgefl-board"
BOARD_EXTRAS = ("board", "board-legacy", "images")
# setup.cfg's requirements, used when edgefl's metadata is not installed.
_FALLBACK_REQUIRES = [
    "numpy>=1.23",
    "paho-mqtt>=2.0",
    "click>=8.1",
    'ai-edge-litert>=1.4; extra == "board"',
    'tflite-runtime==2.14.0; extra == "board-legacy"',
    'numpy<2; extra == "board-legacy"',
    'pillow>=9; extra == "images"',
]
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([\w.-]+)["']""")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip can hold: reproducible wheels


def _setup_cfg_requires(path: Path) -> list[str] | None:
    """edgefl's requirements from a source checkout's setup.cfg (fresher than metadata)."""
    cfg = configparser.ConfigParser()
    try:
        cfg.read(path, encoding="utf-8")
        if cfg.get("metadata", "name", fallback="") != "edgefl":
            return None
        lines = lambda text: [ln.strip() for ln in text.splitlines() if ln.strip()]
        out = lines(cfg.get("options", "install_requires", fallback=""))
        for extra, text in cfg.items("options.extras_require"):
            out += [f'{spec}; extra == "{extra}"' for spec in lines(text) if ";" not in spec]
        return out
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None


def _edgefl_requires() -> list[str]:
    """setup.cfg next to the sources if there is one, else the installed metadata."""
    from_source = _setup_cfg_requires(Path(edge_client.__file__).resolve().parents[1] / "setup.cfg")
    if from_source:
        return from_source
    try:
        return metadata.requires("edgefl") or _FALLBACK_REQUIRES
    except metadata.PackageNotFoundError:
        return _FALLBACK_REQUIRES


def _split(requirements: list[str]) -> list[tuple[str, str | None]]:
    """``(spec, extra)`` for every requirement that is unconditional or needs one extra."""
    out = []
    for req in requirements:
        spec, _, marker = req.partition(";")
        marker = marker.strip()
        if not marker:
            out.append((spec.strip(), None))
        elif match := _EXTRA_MARKER.fullmatch(marker):
            out.append((spec.strip(), match.group(1)))
    return out


def board_requirements(extra: str) -> list[str]:
    """What ``pip install 'edgefl[EXTRA]'`` needs on a board, e.g. ``ai-edge-litert>=1.4``."""
    return [spec for spec, e in _split(_edgefl_requires()) if e in (None, extra)]


# -- the client wheel ------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def _metadata_text(version: str) -> str:
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {BOARD_DIST}",
        f"Version: {version}",
        "Summary: edgefl edge client (fedge) for boards: TFLite training, weights over MQTT",
        "License: Apache-2.0",
        "Requires-Python: >=3.10",
    ]
    lines += [f"Provides-Extra: {e}" for e in BOARD_EXTRAS]
    for spec, extra in _split(_edgefl_requires()):
        if extra is None:
            lines.append(f"Requires-Dist: {spec}")
        elif extra in BOARD_EXTRAS:
            lines.append(f'Requires-Dist: {spec}; extra == "{extra}"')
    return "\n".join(lines) + "\n"


def board_wheel_name(version: str = edge_client.__version__) -> str:
    return f"{BOARD_DIST.replace('-', '_')}-{version}-py3-none-any.whl"


def build_board_wheel(out_dir: Path) -> Path:
    """Write the ``edgefl-board`` wheel (``edge_client`` + ``fedge``) into ``out_dir``."""
    version = edge_client.__version__
    source = Path(edge_client.__file__).resolve().parent
    dist_info = f"{BOARD_DIST.replace('-', '_')}-{version}.dist-info"
    entries: list[tuple[str, bytes]] = []
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source.parent)
        if (
            path.is_dir()
            or "__pycache__" in rel.parts
            or path.suffix in (".pyc", ".pyo")
            or any(p.startswith(".") for p in rel.parts)
        ):
            continue
        entries.append((rel.as_posix(), path.read_bytes()))
    entries += [
        (f"{dist_info}/METADATA", _metadata_text(version).encode()),
        (
            f"{dist_info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: edgefl-devices\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
        ),
        (f"{dist_info}/entry_points.txt", b"[console_scripts]\nfedge = edge_client.cli:main\n"),
        (f"{dist_info}/top_level.txt", b"edge_client\n"),
    ]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in entries)
    entries.append((f"{dist_info}/RECORD", (record + f"{dist_info}/RECORD,,\n").encode()))
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / board_wheel_name(version)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".wheel-", suffix=".tmp")
    with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    os.replace(tmp, target)
    return target


# -- dependencies -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LockedWheel:
    filename: str
    sha256: str

    @property
    def name(self) -> str:
        return self.filename.split("-")[0].replace("_", "-").lower()

    @property
    def version(self) -> str:
        return self.filename.split("-")[1]


@dataclass(frozen=True)
class DependencyLock:
    key: str
    requirements: tuple[str, ...]
    wheels: tuple[LockedWheel, ...]

    def pins(self) -> list[str]:
        """``name==version`` for every wheel: the board installs exactly these."""
        return [f"{w.name}=={w.version}" for w in self.wheels]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Wheelhouse:
    """A cache of downloaded wheels (``files/``) and per-profile locks (``locks/``)."""

    def __init__(self, cache_dir: Path) -> None:
        self.root = Path(cache_dir) / "wheelhouse"
        self.files = self.root / "files"
        self.locks = self.root / "locks"

    @staticmethod
    def requirements(profile: BoardProfile) -> list[str]:
        # pip itself: the board's venv is created without pip and installs from this wheel
        return [*board_requirements(profile.extra), "pip"]

    def pip_command(self, profile: BoardProfile, dest: Path) -> list[str]:
        cmd = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(dest)]
        cmd += ["--python-version", profile.python, "--implementation", "cp"]
        for abi in (profile.python_tag, "abi3", "none"):
            cmd += ["--abi", abi]
        for tag in profile.platform_tags():
            cmd += ["--platform", tag]
        if profile.extra_index_url:
            cmd += ["--extra-index-url", profile.extra_index_url]
        return cmd + ["--progress-bar", "off", *self.requirements(profile)]

    def key(self, profile: BoardProfile) -> str:
        args = self.pip_command(profile, Path("DEST"))[4:]  # without the interpreter path
        return hashlib.sha256(json.dumps(args).encode()).hexdigest()[:16]

    def lock_path(self, profile: BoardProfile) -> Path:
        return self.locks / f"{profile.name}-{self.key(profile)}.json"

    def path(self, wheel: LockedWheel) -> Path:
        return self.files / wheel.filename

    def cached(self, profile: BoardProfile, *, verify: bool = True) -> DependencyLock | None:
        """The lock for this profile if every locked wheel is present (and intact)."""
        try:
            data = json.loads(self.lock_path(profile).read_text(encoding="utf-8"))
            lock = DependencyLock(
                data["key"],
                tuple(data["requirements"]),
                tuple(LockedWheel(w["filename"], w["sha256"]) for w in data["wheels"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None
        for wheel in lock.wheels:
            path = self.path(wheel)
            if not path.is_file() or (verify and _sha256(path) != wheel.sha256):
                return None
        return lock

    def resolve(self, profile: BoardProfile, *, refresh: bool = False) -> DependencyLock:
        """The locked dependencies of ``profile``, downloading them on first use."""
        lock = None if refresh else self.cached(profile)
        if lock is not None:
            log.debug("dependencies for %s from the cache (%s)", profile.name, lock.key)
            return lock
        self.files.mkdir(parents=True, exist_ok=True)
        self.locks.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self.root, prefix="download-") as tmp:
            cmd = self.pip_command(profile, Path(tmp))
            log.info("downloading dependencies for %s: %s", profile.name, " ".join(cmd[3:]))
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            except subprocess.TimeoutExpired:
                raise DeviceError(f"pip download for profile {profile.name} timed out") from None
            if done.returncode != 0:
                errors = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")]
                reason = errors[-1] if errors else (done.stderr.strip().splitlines() or ["?"])[-1]
                raise DeviceError(
                    f"cannot download the dependencies of profile {profile.name} "
                    f"({profile.arch}, Python {profile.python}): {reason}"
                )
            wheels = []
            for path in sorted(Path(tmp).glob("*.whl")):
                wheels.append(LockedWheel(path.name, _sha256(path)))
                shutil.move(str(path), self.files / path.name)
        if not wheels:
            raise DeviceError(f"pip download for profile {profile.name} produced no wheels")
        lock = DependencyLock(self.key(profile), tuple(self.requirements(profile)), tuple(wheels))
        data = {
            "key": lock.key,
            "profile": profile.name,
            "requirements": list(lock.requirements),
            "wheels": [{"filename": w.filename, "sha256": w.sha256} for w in wheels],
        }
        tmp_lock = self.lock_path(profile).with_suffix(f".{os.getpid()}.tmp")
        tmp_lock.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        tmp_lock.replace(self.lock_path(profile))
        log.info("locked %d wheels for %s: %s", len(wheels), profile.name, " ".join(lock.pins()))
        return lock
