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


def test_the_runner_counts_each_local_training_once_from_the_boards_statuses(tmp_path):
    # Prepare: the statuses one board of the fleet publishes (heartbeats repeat "training";
    # a board publishes "idle" after each update, also between two grants of one version)
    from coordinator.config import JobConfig
    from coordinator.fleet.runner import FleetRunner
    from coordinator.simulation import FleetConfig
    from edge_client.protocol import DeviceStatus
    from edge_client.transport import BrokerConfig

    spec = load_fleet("homogeneous")
    board = spec.boards[0].device_id
    runner = FleetRunner(
        spec, Schedule(spec), FleetConfig(devices=len(spec.boards)), JobConfig(job="count"),
        BrokerConfig("127.0.0.1", 1), tmp_path, {b.device_id: 1.0 for b in spec.boards},
    )  # fmt: skip
    sequence = [("online", None), ("training", 1), ("training", 1), ("idle", 1),
                ("training", 1), ("idle", 1), ("training", 2), ("training", 2)]  # fmt: skip
    # Execute
    for t, (state, version) in enumerate(sequence):
        runner._on_status(DeviceStatus(board, state, float(t), round=version))
    runner._on_status(DeviceStatus("not-in-the-fleet", "training", 9.0, round=1))
    # Assert: three trainings (two from version 1, one from version 2), numbered 0, 1, 2
    assert runner.trainings[board] == 3
    events = [e for e in runner.events if e["event"] == "training"]
    assert [(e["round"], e["training"]) for e in events] == [(1, 0), (1, 1), (2, 2)]
    assert runner.first_training.is_set()
