"""Fleet files, presets and schedules (coordinator/fleet/spec.py, schedule.py): validated,
and the same seed always gives the same offline sessions and dropout decisions."""

from __future__ import annotations

import sys

import pytest

from coordinator.fleet.schedule import Schedule
from coordinator.fleet.spec import load_fleet, parse_fleet, presets
from coordinator.fleet.speed import FACTORS
from edge_client.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_the_shipped_presets_describe_realistic_fleets():
    assert {"mixed-pi", "homogeneous"} <= set(presets())
    mixed = load_fleet("mixed-pi")
    assert len(mixed.boards) >= 20
    families = {
        b.profile.split("-")[0] if "zero" not in b.profile else "zero" for b in mixed.boards
    }
    assert families == {"rpi5", "rpi4", "rpi3bplus", "zero"}
    assert any(b.dropout.probability > 0 for b in mixed.boards)
    assert any(b.availability.mean_online_s > 0 for b in mixed.boards)
    assert {b.slowdown for b in mixed.boards} == {
        FACTORS[f] for f in ("rpi5", "rpi4", "rpi3bplus", "rpi-zero2w")
    }
    homogeneous = load_fleet("homogeneous")
    assert len({(b.profile, b.slowdown, b.link) for b in homogeneous.boards}) == 1


def test_same_seed_same_schedule_other_seed_other_schedule():
    a = Schedule(load_fleet("mixed-pi")).to_json()
    b = Schedule(load_fleet("mixed-pi")).to_json()
    c = Schedule(load_fleet("mixed-pi", seed=2)).to_json()
    assert a == b and a != c
    boards = a["boards"].values()
    assert any(x["offline"] for x in boards) and any(x["dropouts"] for x in boards)
    modes = {d["mode"] for x in boards for d in x["dropouts"].values()}
    assert modes == {"power", "network"}  # both kinds of dropout happen


def test_a_trace_file_sets_the_online_sessions(tmp_path):
    (tmp_path / "trace.csv").write_text(
        "# device,online_from_s,online_until_s\n"
        "device,online_from_s,online_until_s\n"
        "pi-00,0,30\npi-00,45,inf\npi-01,10,20\n"
    )
    spec = parse_fleet(
        {"trace": "trace.csv", "boards": [{"name": "pi", "profile": "rpi4-64", "count": 3}]},
        base=tmp_path,
    )
    s = Schedule(spec, horizon_s=100)
    assert [(w.start_s, w.end_s) for w in s.windows["pi-00"]] == [(30, 45)]
    assert [(w.start_s, w.end_s) for w in s.windows["pi-01"]] == [(0, 10), (20, 100)]
    assert s.windows["pi-02"] == []  # not in the trace, no random sessions: always online
    assert s.online_at_start() == ["pi-00", "pi-02"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[[boards]]\nprofile = "rpi9"', "unknown profile 'rpi9'"),
        ('[[boards]]\nprofile = "rpi4-64"\ncolor = 1', "unknown key(s) color"),
        ('[[boards]]\nprofile = "rpi4-64"\ncount = 0', "count must be a positive integer"),
        ('[[boards]]\nprofile = "rpi4-64"\nslowdown = 0.5', "slowdown must be a number >= 1"),
        (
            '[[boards]]\nprofile = "rpi4-64"\navailability = { offline = "flood" }',
            "availability.offline must be one of network, power",
        ),
        ('[[boards]]\nprofile = "rpi4-64"\nlink = { up_kbit = -1 }', "up_kbit must be >= 0"),
        ('[[boards]]\nprofile = "rpi4-64"\ndropout = { probability = 2 }', "probability"),
        ('[[boards]]\nprofile = "rpi4-64"\nlink = { mbit = 1 }', "link"),
        ("seed = 1", "no [[boards]] groups"),
    ],
)
def test_fleet_file_mistakes_are_one_line_errors(toml, message):
    with pytest.raises(ConfigError) as err:
        parse_fleet(tomllib.loads(toml), source="f.toml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_an_unknown_fleet_names_the_presets():
    with pytest.raises(ConfigError, match="no such file and no such preset.*mixed-pi"):
        load_fleet("mixed-py")
