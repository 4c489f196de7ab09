"""The board's wheels: a reproducible client wheel, and dependencies for another platform."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
from test_devices_support import fedcoord

from devices.bundle import check_client_wheel
from devices.errors import DeviceError
from devices.profiles import get_profile
from devices.wheels import Wheelhouse, board_requirements, build_board_wheel


def test_client_wheel_is_reproducible_and_holds_only_the_edge_client(tmp_path):
    # Execute
    first = build_board_wheel(tmp_path / "a")
    second = build_board_wheel(tmp_path / "b")
    # Assert
    assert first.read_bytes() == second.read_bytes()
    assert first.name.startswith("edgefl_board-") and first.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(first).namelist()
    packages = {n.split("/")[0] for n in names}
    assert "edge_client" in packages and not {"coordinator", "devices", "model_export"} & packages
    assert not any(n.endswith(".pyc") or "__pycache__" in n for n in names)
    dist_info = next(p for p in packages if p.endswith(".dist-info"))
    meta = zipfile.ZipFile(first).read(f"{dist_info}/METADATA").decode()
    entry = zipfile.ZipFile(first).read(f"{dist_info}/entry_points.txt").decode()
    assert "Requires-Dist: paho-mqtt>=2.0" in meta
    assert 'Requires-Dist: ai-edge-litert>=1.4; extra == "board"' in meta
    assert "fedge = edge_client.cli:main" in entry


def test_board_requirements_follow_the_extras():
    assert "ai-edge-litert>=1.4" in board_requirements("board")
    legacy = board_requirements("board-legacy")
    assert "tflite-runtime==2.14.0" in legacy and "numpy<2" in legacy
    assert not any(r.startswith(("tensorflow", "pytest")) for r in legacy)


def test_pip_command_for_32_bit_boards_uses_piwheels_and_every_tag(tmp_path):
    cmd = Wheelhouse(tmp_path).pip_command(get_profile("rpi-zero2w-32"), tmp_path)
    assert cmd[cmd.index("--extra-index-url") + 1] == "https://www.piwheels.org/simple"
    platforms = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"]
    assert "manylinux_2_34_armv7l" in platforms and "linux_armv7l" in platforms
    assert cmd[cmd.index("--python-version") + 1] == "3.11" and "--only-binary=:all:" in cmd
    assert "tflite-runtime==2.14.0" in cmd and "pip" in cmd


@pytest.mark.slow
def test_download_for_a_64_bit_pi_picks_current_aarch64_wheels_and_locks_them(tmp_path):
    """The real path: pip download from the index, for aarch64 / CPython 3.11 / glibc 2.36."""
    # Prepare
    house = Wheelhouse(tmp_path / "cache")
    profile = get_profile("rpi5-64")
    # Execute
    lock = house.resolve(profile)
    again = house.resolve(profile)
    # Assert: the newest ai-edge-litert for manylinux_2_27 aarch64, not an old release
    files = {w.name: w.filename for w in lock.wheels}
    litert = files["ai-edge-litert"]
    assert "aarch64" in litert and "cp311" in litert
    assert tuple(int(p) for p in litert.split("-")[1].split(".")[:2]) >= (2, 3)
    assert "aarch64" in files["numpy"] and {"paho-mqtt", "click", "pip"} <= set(files)
    assert all(house.path(w).is_file() for w in lock.wheels)
    assert again == lock and house.cached(profile) == lock
    assert any(p.startswith("ai-edge-litert==") for p in lock.pins())


def test_a_prebuilt_client_wheel_must_hold_the_edge_client(tmp_path):
    good = build_board_wheel(tmp_path)
    other = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("other/__init__.py", "")
    (tmp_path / "broken.whl").write_bytes(b"not a zip")
    assert check_client_wheel(good) == good
    with pytest.raises(DeviceError, match="is not a wheel of the edge client"):
        check_client_wheel(other)
    with pytest.raises(DeviceError, match="cannot read the client wheel"):
        check_client_wheel(tmp_path / "broken.whl")


def test_the_client_wheel_command_ships_the_board_only_what_it_runs(tmp_path):
    # Execute
    done = fedcoord("devices", "client-wheel", "--out", str(tmp_path / "dist"))
    # Assert: the edge client and fedge only, small, the same bytes flash installs
    assert done.returncode == 0, done.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    assert wheel.name == "edgefl_board-0.1.0-py3-none-any.whl" and str(wheel) in done.stdout
    with zipfile.ZipFile(wheel) as zf:
        tops = {n.split("/")[0] for n in zf.namelist()}
        entry = zf.read("edgefl_board-0.1.0.dist-info/entry_points.txt").decode()
        requires = zf.read("edgefl_board-0.1.0.dist-info/METADATA").decode()
    assert tops == {"edge_client", "edgefl_board-0.1.0.dist-info"}
    assert "fedge = edge_client.cli:main" in entry and "fedcoord" not in entry
    assert 'Requires-Dist: cryptography>=42; extra == "board"' in requires
    assert wheel.stat().st_size < 300_000
    assert wheel.read_bytes() == build_board_wheel(tmp_path / "again").read_bytes()
    # Execute: pip installs it offline, and the client runs from it
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target"]
    subprocess.run([*pip, str(target), str(wheel)], check=True, capture_output=True, timeout=300)
    code = "import edge_client.cli; print(edge_client.cli.__file__)"
    env = {**os.environ, "PYTHONPATH": str(target)}
    ran = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(str(target / "edge_client"))
