"""Board profiles: what a board is, and which wheels and settings fit it.

A profile names the hardware (RAM, CPU), the operating system's architecture, Python and
glibc (which decide the wheels ``pip download`` must fetch for it), the interpreter package
(``ai-edge-litert`` on 64-bit systems, ``tflite-runtime`` 2.14 on 32-bit Raspberry Pi OS),
and the defaults the client runs with there (interpreter threads, the batch size to export
models with, a memory limit for the service). An inventory may define its own profiles,
starting from a built-in one (``base = "rpi4-64"``).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields, replace
from typing import Any

from devices.errors import InventoryError

RUNTIME_EXTRAS = {"ai-edge-litert": "board", "tflite-runtime": "board-legacy"}
ARCHES = ("aarch64", "armv7l", "x86_64")
PIWHEELS = "https://www.piwheels.org/simple"
# Legacy manylinux names and the glibc they stand for: pip's --platform matches tags
# literally, and some wheels (protobuf for aarch64) carry only the legacy name.
_LEGACY_MANYLINUX = {"manylinux2014": 17, "manylinux2010": 12, "manylinux1": 5}


@dataclass(frozen=True)
class BoardProfile:
    name: str
    board: str  # human-readable hardware name
    os: str  # the operating system this profile's wheels are for
    arch: str  # the userland architecture (a 32-bit OS on a 64-bit CPU is armv7l)
    cpu: str
    cores: int
    ram_mb: int  # the smallest variant sold: limits are sized for it
    runtime: str  # interpreter package: ai-edge-litert or tflite-runtime (2.14)
    threads: int  # interpreter threads the client uses (EDGEFL_THREADS)
    batch_size: int  # the batch size to export models with for this board (static in `train`)
    memory_max_mb: int  # systemd MemoryMax of the service: the client peaks near 100 MB
    python: str = "3.11"  # Raspberry Pi OS / Debian 12 "bookworm" ship Python 3.11
    glibc: str = "2.36"  # bookworm's glibc: wheels up to manylinux_2_36 fit
    # numpy has no 32-bit ARM wheels on PyPI; Raspberry Pi OS gets them from piwheels.
    extra_index_url: str | None = None

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIME_EXTRAS:
            raise InventoryError(
                f"profile {self.name}: runtime must be one of {', '.join(RUNTIME_EXTRAS)}, "
                f"not {self.runtime!r}"
            )
        if self.arch not in ARCHES:
            raise InventoryError(
                f"profile {self.name}: arch must be one of {', '.join(ARCHES)}, not {self.arch!r}"
            )
        for name in ("cores", "ram_mb", "threads", "batch_size", "memory_max_mb"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InventoryError(
                    f"profile {self.name}: {name} must be a positive integer, not {value!r}"
                )
        for name in ("python", "glibc"):
            value = getattr(self, name)
            parts = value.split(".")
            if len(parts) != 2 or not all(p.isdigit() for p in parts):
                raise InventoryError(
                    f"profile {self.name}: {name} must look like 3.11, not {value!r}"
                )

    @property
    def extra(self) -> str:
        """The ``edgefl`` extra that installs this profile's interpreter."""
        return RUNTIME_EXTRAS[self.runtime]

    @property
    def python_tag(self) -> str:
        return "cp" + self.python.replace(".", "")

    def platform_tags(self) -> list[str]:
        """Every platform tag a wheel for this board may carry, newest first.

        ``pip download --platform`` matches exact tags only: listing just the newest
        manylinux tag silently picks an old release built for an older glibc.
        """
        major, minor = (int(p) for p in self.glibc.split("."))
        first = 5 if self.arch == "x86_64" else 17  # manylinux for ARM starts at glibc 2.17
        tags = [f"manylinux_{major}_{n}_{self.arch}" for n in range(minor, first - 1, -1)]
        for legacy, glibc_minor in _LEGACY_MANYLINUX.items():
            if glibc_minor <= minor and (self.arch == "x86_64" or legacy == "manylinux2014"):
                tags.append(f"{legacy}_{self.arch}")
        if self.extra_index_url:
            tags.append(f"linux_{self.arch}")  # piwheels' tag
        return tags

    def describe(self) -> str:
        return f"{self.board}, {self.os}"


def _pi(name: str, board: str, bits: int, cpu: str, ram_mb: int, **kw: Any) -> BoardProfile:
    legacy = bits == 32
    return BoardProfile(
        name=name,
        board=board,
        os=f"Raspberry Pi OS bookworm {bits}-bit",
        arch="armv7l" if legacy else "aarch64",
        cpu=cpu,
        cores=4,
        ram_mb=ram_mb,
        runtime="tflite-runtime" if legacy else "ai-edge-litert",
        extra_index_url=PIWHEELS if legacy else None,
        **kw,
    )


# Threads: all four cores on boards with enough RAM and cooling; two on the Zero 2 W,
# which throttles under a sustained four-core load. Batch sizes grow with cache and RAM.
PROFILES: dict[str, BoardProfile] = {
    p.name: p
    for p in (
        _pi("rpi-zero2w-64", "Raspberry Pi Zero 2 W", 64, "4x Cortex-A53 1.0 GHz", 512,
            threads=2, batch_size=16, memory_max_mb=300),
        _pi("rpi-zero2w-32", "Raspberry Pi Zero 2 W", 32, "4x Cortex-A53 1.0 GHz", 512,
            threads=2, batch_size=16, memory_max_mb=300),
        _pi("rpi3bplus-64", "Raspberry Pi 3 Model B+", 64, "4x Cortex-A53 1.4 GHz", 1024,
            threads=4, batch_size=32, memory_max_mb=500),
        _pi("rpi3bplus-32", "Raspberry Pi 3 Model B+", 32, "4x Cortex-A53 1.4 GHz", 1024,
            threads=4, batch_size=32, memory_max_mb=500),
        _pi("rpi4-64", "Raspberry Pi 4 Model B", 64, "4x Cortex-A72 1.8 GHz", 1024,
            threads=4, batch_size=32, memory_max_mb=600),
        _pi("rpi4-32", "Raspberry Pi 4 Model B", 32, "4x Cortex-A72 1.8 GHz", 1024,
            threads=4, batch_size=32, memory_max_mb=600),
        _pi("rpi5-64", "Raspberry Pi 5", 64, "4x Cortex-A76 2.4 GHz", 2048,
            threads=4, batch_size=64, memory_max_mb=1000),
        _pi("rpi5-32", "Raspberry Pi 5", 32, "4x Cortex-A76 2.4 GHz", 2048,
            threads=4, batch_size=64, memory_max_mb=1000),
        BoardProfile(
            name="linux-x86_64",
            board="x86-64 PC or VM",
            os="Debian 12 / Ubuntu 22.04+ (glibc 2.36)",
            arch="x86_64",
            cpu="x86-64",
            cores=2,
            ram_mb=2048,
            runtime="ai-edge-litert",
            threads=2,
            batch_size=32,
            memory_max_mb=1000,
        ),
    )
}  # fmt: skip


def get_profile(name: str, custom: dict[str, BoardProfile] | None = None) -> BoardProfile:
    known = {**PROFILES, **(custom or {})}
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise InventoryError(f"unknown profile {name!r}{hint}; known: {', '.join(sorted(known))}")


_FIELDS = {f.name for f in fields(BoardProfile)}


def custom_profile(
    name: str, table: dict[str, Any], custom: dict[str, BoardProfile]
) -> BoardProfile:
    """A profile from an inventory's ``[profiles.NAME]`` table (``base`` = a known profile)."""
    table = dict(table)
    unknown = set(table) - _FIELDS - {"base"}
    if unknown:
        raise InventoryError(
            f"profiles.{name}: unknown key(s) {', '.join(sorted(unknown))}; "
            f"known: base, {', '.join(sorted(_FIELDS - {'name'}))}"
        )
    base_name = table.pop("base", None)
    try:
        if base_name is not None:
            return replace(get_profile(str(base_name), custom), name=name, **table)
        return BoardProfile(name=name, **table)
    except TypeError as exc:
        raise InventoryError(f"profiles.{name}: {exc} (or give base = a known profile)") from None


def board_arch(machine: str, pointer_bits: int) -> str:
    """The userland architecture from ``uname -m`` and the size of Python's pointers.

    A 32-bit Raspberry Pi OS often runs a 64-bit kernel, so ``uname -m`` says aarch64
    while every binary, Python included, is armv7l (pip's ``packaging.tags`` does the same).
    """
    if machine in ("aarch64", "arm64", "armv8l") and pointer_bits == 32:
        return "armv7l"
    if machine in ("armv6l", "armv7", "armv8l"):
        return "armv7l" if machine != "armv6l" else machine
    return {"arm64": "aarch64", "amd64": "x86_64"}.get(machine, machine)
