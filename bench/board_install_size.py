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


LABELS = {  # the doc's platform names; the first row of a platform says which OS
    "aarch64": ("aarch64 (64-bit Raspberry Pi OS)", "aarch64"),
    "armv7l": ("armv7l (32-bit Raspberry Pi OS)", "armv7l"),
    "x86_64": ("x86-64", "x86-64"),
}
LARGE = 5e6  # the "largest parts" column lists distributions above 5 MB
DEBIAN_NAMED = ("numpy", "cffi")  # the Debian packages the client uses (the others are cffi's)


def _debian(part: dict) -> str:
    versions = {
        e.split("-")[0]: e.split("-")[1].removesuffix(".egg")
        for e in part["entries"]
        if e.endswith(".egg-info")
    }
    named = " and ".join(f"{n} {versions[n]}" for n in DEBIAN_NAMED)
    return f" + {part['bytes'] / 1e6:.1f} MB of Debian's {named}"


def table(record: dict) -> str:
    """docs/benchmarks.md's table; the emulated boards' sizes in bold."""
    lines = [
        "| platform | extra | site-packages | largest parts |",
        "|---|---|---|---|",
    ]
    seen: set[str] = set()
    for r in record["rows"]:
        first, later = LABELS[r["platform"]]
        label = later if r["platform"] in seen else first
        seen.add(r["platform"])
        size = f"{r['bytes'] / 1e6:.1f} MB"
        if r["source"].startswith("emulated"):
            size = f"**{size}**"
        if "debian_dist_packages" in r:
            size += _debian(r["debian_dist_packages"])
        parts = sorted(r["distributions"].items(), key=lambda kv: -kv[1]["bytes"])
        large = ", ".join(
            f"{name} {d['version']} {d['bytes'] / 1e6:.1f}"
            for name, d in parts
            if d["bytes"] > LARGE
        )
        lines.append(f"| {label} | `{r['extra']}` | {size} | {large} MB |")
    return "\n".join(lines)


def claims(record: dict) -> list[str]:
    """The phrases of the section's prose that quote the record."""
    wheel = {
        r["distributions"]["edgefl"]["bytes"]
        for r in record["rows"]
        if "edgefl" in r["distributions"]
    }
    sizes = " / ".join(f"{b / 1e6:.1f}" for b in sorted(wheel))
    return [f"The client wheel (`edgefl`) is {sizes} MB installed"]


if __name__ == "__main__":
    main()
