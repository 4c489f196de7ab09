"""Profiles and the inventory: parsing, defaults, and one clear line for every mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_devices_support import fedcoord

from devices.errors import InventoryError
from devices.inventory import load_inventory
from devices.profiles import PROFILES, board_arch, get_profile

EXAMPLE = """
[fleet]
job = "demo"
broker = "mqtts://broker.lan:8883"
ca_file = "ca.crt"

[defaults]
ssh_user = "pi"
ssh_key = "keys/edgefl"
profile = "rpi4-64"
data = "/srv/edgefl/data"

[profiles.lab-pi]
base = "rpi5-64"
threads = 2

[devices.pi-01]
host = "192.168.1.21"

[devices.pi-02]
host = "pi-02.local"
profile = "rpi-zero2w-32"
ssh_port = 2222
env = { EDGEFL_HEARTBEAT = 30, EDGEFL_EVAL = false }

[devices.pi-03]
host = "pi-03.local"
profile = "lab-pi"
dataset = "fashion-mnist"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def test_example_inventory_merges_defaults_and_resolves_paths(tmp_path):
    # Execute
    inv = load_inventory(write(tmp_path, EXAMPLE))
    # Assert
    pi1, pi2, pi3 = inv.devices
    assert (inv.fleet.job, inv.fleet.ca_file) == ("demo", tmp_path / "ca.crt")
    assert inv.fleet.secrets_dir == tmp_path / "secrets"
    assert (pi1.ssh_user, pi1.ssh_key, pi1.profile, pi1.data) == (
        "pi",
        tmp_path / "keys/edgefl",
        "rpi4-64",
        "/srv/edgefl/data",
    )
    assert (pi2.ssh_port, pi2.env) == (2222, (("EDGEFL_EVAL", "false"), ("EDGEFL_HEARTBEAT", "30")))
    assert inv.profile(pi2).runtime == "tflite-runtime" and inv.profile(pi2).arch == "armv7l"
    assert (pi3.data, pi3.dataset) == (None, "fashion-mnist")
    lab = inv.profile(pi3)
    assert (lab.threads, lab.arch, lab.ram_mb) == (2, "aarch64", PROFILES["rpi5-64"].ram_mb)
    assert pi1.unit_name == "fedge-pi-01.service" and pi1.install_dir == "/opt/edgefl"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('host = "192.168.1.21"', ""), "devices.pi-01 is missing host"),
        (('profile = "rpi-zero2w-32"', 'profile = "rpi6-64"'), "unknown profile 'rpi6-64'"),
        (('host = "pi-02.local"', 'hots = "x"\nhost = "y"'), "unknown key 'hots' in devices.pi-02"),
        (('dataset = "fashion-mnist"', 'dataset = "mnist"\ndata = "/d"'), "exactly one of data"),
        (('job = "demo"', ""), '[fleet] needs job = "..."'),
        (('broker = "mqtts://broker.lan:8883"', 'broker = "http://x"'), "unsupported broker URL"),
        (("EDGEFL_HEARTBEAT = 30", 'EDGEFL_JOB = "x"'), "EDGEFL_JOB is set from the inventory"),
        (('data = "/srv/edgefl/data"', 'data = "data"'), "must be an absolute path on the board"),
        (("threads = 2", 'threads = "2"'), "threads must be a positive integer"),
        (("[devices.pi-01]", "[devices.'pi 01']"), "device id"),
        (('ca_file = "ca.crt"', 'unsigned = "yes"'), "[fleet] unsigned must be true or false"),
        (('ca_file = "ca.crt"', 'unsigned = true\ntrust_key = "k.pub"'), "not both"),
        (("EDGEFL_HEARTBEAT = 30", 'EDGEFL_TRUST_KEY = "k"'), "EDGEFL_TRUST_KEY is set from"),
    ],
)
def test_inventory_mistakes_are_one_clear_line(tmp_path, edit, message):
    # Prepare
    old, new = edit
    text = EXAMPLE.replace(old, new, 1)
    # Execute
    with pytest.raises(InventoryError) as info:
        load_inventory(write(tmp_path, text))
    # Assert
    assert message in str(info.value) and "\n" not in str(info.value)


def test_missing_data_is_reported_for_the_device(tmp_path):
    text = EXAMPLE.replace('data = "/srv/edgefl/data"\n', "")
    with pytest.raises(InventoryError, match="devices.pi-01 needs exactly one of data"):
        load_inventory(write(tmp_path, text))


def test_unknown_profile_suggests_the_closest():
    with pytest.raises(InventoryError, match=r"did you mean rpi4-64\?"):
        get_profile("rpi4_64")


def test_cli_prints_inventory_errors_on_one_line(tmp_path):
    # Prepare
    path = write(tmp_path, EXAMPLE.replace('host = "192.168.1.21"', ""))
    # Execute
    done = fedcoord("devices", "list", "-i", str(path))
    missing = fedcoord("devices", "list", "-i", str(tmp_path / "nope.toml"))
    # Assert
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f'error: {path}: devices.pi-01 is missing host = "..."'
    ]
    assert (
        missing.returncode == 1 and "inventory" in missing.stderr and "not found" in missing.stderr
    )


def test_cli_lists_devices_and_profiles(tmp_path):
    path = write(tmp_path, EXAMPLE)
    listed = fedcoord("devices", "list", "-i", str(path))
    profiles = fedcoord("devices", "profiles")
    assert listed.returncode == 0, listed.stderr
    assert "pi@pi-02.local:2222" in listed.stdout and "tflite-runtime" in listed.stdout
    assert "dataset fashion-mnist" in listed.stdout
    assert profiles.returncode == 0
    for name in ("rpi-zero2w-64", "rpi3bplus-32", "rpi4-64", "rpi5-64", "linux-x86_64"):
        assert name in profiles.stdout


def test_platform_tags_list_every_manylinux_up_to_the_glibc():
    tags = get_profile("rpi4-64").platform_tags()
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags
    assert len([t for t in tags if t.startswith("manylinux_2_")]) == 36 - 17 + 1
    assert "manylinux2014_aarch64" in tags  # protobuf's aarch64 wheels carry only this name
    legacy = get_profile("rpi-zero2w-32")
    assert "linux_armv7l" in legacy.platform_tags() and legacy.extra == "board-legacy"
    assert "manylinux1_x86_64" in get_profile("linux-x86_64").platform_tags()


@pytest.mark.parametrize(
    ("machine", "bits", "arch"),
    [("aarch64", 64, "aarch64"), ("aarch64", 32, "armv7l"), ("armv7l", 32, "armv7l"),
     ("x86_64", 64, "x86_64"), ("armv6l", 32, "armv6l")],
)  # fmt: skip
def test_board_arch_sees_a_32_bit_userland_on_a_64_bit_kernel(machine, bits, arch):
    assert board_arch(machine, bits) == arch
