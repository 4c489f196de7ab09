"""Installed size of the board's site-packages, per extra, on aarch64 and armhf next to x86-64.

The aarch64 and armhf figures are the client's virtual environments in the emulated
Raspberry Pi OS userlands that ``scripts/board-emulation.sh`` builds (installed exactly as
docs/deployment.md says). The x86-64 figures come from the same steps on this machine: the
client wheel and ``pip download`` of the extra's wheels, a ``venv --without-pip``, pip from
its wheel, ``pip install --no-index``. Sizes are the apparent bytes of every file under
``site-packages``, bytecode (``__pycache__``, written by pip at install) included. On armhf
numpy and cffi come from Debian (``/usr/lib/python3/dist-packages``); they are counted apart.

    .venv/bin/python bench/board_install_size.py [--out bench/results/board_install_size.json]

Needs root (the emulated userlands; see scripts/board-emulation.sh).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts/board-emulation.sh"
CACHE = Path(os.environ.get("EDGEFL_EMU_CACHE", "/var/cache/edgefl-emulation"))
EMULATED = {  # ENV of scripts/board-emulation.sh -> (architecture, extra)
    "aarch64-board": ("aarch64", "board"),
    "aarch64-legacy": ("aarch64", "board-legacy"),
    "armhf-legacy": ("armv7l", "board-legacy"),
}
SITE = "lib/python3.11/site-packages"
# Debian's packages that the armhf venv uses through --system-site-packages.
DEBIAN_PACKAGES = ("numpy", "cffi", "_cffi_backend", "pycparser", "ply")


def tree_bytes(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() or p.is_symlink())


def measure(site: Path) -> dict:
    """Total bytes, and bytes and version of every distribution (its files per RECORD)."""
    dists = {}
    for info in sorted(site.glob("*.dist-info")):
        name, _, version = info.name[: -len(".dist-info")].partition("-")
        record = info / "RECORD"
        files = [line.split(",")[0] for line in record.read_text().splitlines() if line]
        size = sum(
            (site / f).lstat().st_size for f in files if (site / f).exists() and ".." not in f
        )
        # bytecode written at install is listed in RECORD too (pip adds it)
        dists[name.lower().replace("_", "-")] = {"version": version, "bytes": size}
    return {"bytes": tree_bytes(site), "distributions": dists}


def debian_part(rootfs: Path) -> dict:
    dist = rootfs / "usr/lib/python3/dist-packages"
    parts = {}
    for entry in sorted(dist.iterdir()):
        if entry.name.split(".")[0].split("-")[0] in DEBIAN_PACKAGES:
            parts[entry.name] = tree_bytes(entry)
    return {"bytes": sum(parts.values()), "entries": parts}


def x86_install(extra: str, work: Path) -> dict:
    """The same steps as on a board, for this machine (x86-64, its own Python 3.11)."""
    wheels = work / f"wheels-{extra}"
    venv = work / f"venv-{extra}"
    pip = [sys.executable, "-m", "pip"]
    wheels.mkdir(parents=True)
    # the client wheel the emulated boards installed (pure Python: the same on every board)
    (built,) = (CACHE / "aarch64-board/rootfs/home/pi/wheels").glob("edgefl-*.whl")
    client = wheels / built.name
    client.write_bytes(built.read_bytes())
    subprocess.run(
        [*pip, "download", "-q", "--dest", str(wheels), "--only-binary=:all:"]
        + [f"{client}[{extra}]", "pip"],
        check=True,
        capture_output=True,
    )
    python = "/usr/bin/python3"  # the system's Python, as on a board
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True)
    (pip_wheel,) = wheels.glob("pip-*.whl")
    subprocess.run(
        [str(venv / "bin/python3"), str(pip_wheel / "pip"), "install", "-q", "--no-index"]
        + ["--find-links", str(wheels), "pip", f"edgefl[{extra}]"],
        check=True,
        capture_output=True,
    )
    (site,) = venv.glob("lib/python3.*/site-packages")
    return measure(site)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench/results/board_install_size.json"))
    args = ap.parse_args()
    t0 = time.time()
    subprocess.run([str(SCRIPT), "build", *EMULATED], check=True, stdout=subprocess.DEVNULL)
    rows = []
    for env, (arch, extra) in EMULATED.items():
        rootfs = CACHE / env / "rootfs"
        row = {"platform": arch, "extra": extra, "source": f"emulated ({env})"}
        row |= measure(rootfs / "home/pi/edgefl" / SITE)
        if arch == "armv7l":
            row["debian_dist_packages"] = debian_part(rootfs)
        rows.append(row)
    with tempfile.TemporaryDirectory(prefix="edgefl-size-") as tmp:
        for extra in ("board", "board-legacy"):
            row = {"platform": "x86_64", "extra": extra, "source": "this machine"}
            rows.append(row | x86_install(extra, Path(tmp)))
    record = {
        "bench": "board_install_size",
        "command": "python bench/board_install_size.py",
        "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "host": {"machine": platform.machine(), "python": platform.python_version()},
        "seconds": round(time.time() - t0, 1),
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    mb = lambda n: f"{n / 1e6:7.1f} MB"  # noqa: E731
    for row in rows:
        big = sorted(row["distributions"].items(), key=lambda kv: -kv[1]["bytes"])[:4]
        top = ", ".join(f"{k} {v['version']} {v['bytes'] / 1e6:.1f}" for k, v in big)
        extra = row.get("debian_dist_packages", {}).get("bytes")
        deb = f" + Debian {mb(extra).strip()}" if extra else ""
        print(f"{row['platform']:8} {row['extra']:13} {mb(row['bytes'])}{deb}   ({top} MB)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
