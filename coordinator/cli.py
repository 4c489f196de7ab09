"""``fedcoord``: the coordinator's command line.

Expected failures (``EdgeFLError``) become one line on stderr and exit code 1;
usage errors exit 2 (click's convention). Commands import their heavy
dependencies (TensorFlow) lazily so ``fedcoord --help`` stays fast.
"""

from __future__ import annotations

import logging
import os

import click

from edge_client import __version__
from edge_client.cli_support import ErrorHandlingGroup


def configure_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ chatter
    if verbose < 2:
        for noisy in ("tensorflow", "absl", "h5py"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


@click.group(
    cls=ErrorHandlingGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="fedcoord")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
def main(verbose: int) -> None:
    """Federated learning on edge boards over MQTT: the coordinator's command line."""
    configure_logging(verbose)


def _register() -> None:
    from coordinator.commands.broker import broker
    from coordinator.commands.dashboard import dashboard
    from coordinator.commands.devices import devices
    from coordinator.commands.export import export
    from coordinator.commands.monitor import monitor
    from coordinator.commands.security import certs, keys
    from coordinator.commands.simulate import simulate
    from coordinator.commands.start import start

    for command in (start, simulate, export, broker, keys, certs):
        main.add_command(command)
    for command in (monitor, dashboard):
        main.add_command(command)
    main.add_command(devices)
    from coordinator.commands.baseline import baseline
    from coordinator.commands.experiment import experiment
    from coordinator.commands.report import report

    for command in (report, baseline, experiment):
        main.add_command(command)
    from coordinator.commands.loadgen import loadgen
    from coordinator.commands.site import site

    main.add_command(loadgen)
    main.add_command(site)


_register()

if __name__ == "__main__":
    main()
