"""The web command center: live charts, device table, image classification, job control.

Import :mod:`coordinator.dashboard.server` (Flask) only when a dashboard is wanted; this
package's ``__init__`` stays light so ``fedcoord start`` without ``--dashboard`` never
imports Flask.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coordinator.dashboard.server import DashboardSettings
    from edge_client.transport import BrokerConfig


@contextmanager
def attach_dashboard(
    settings: DashboardSettings | None, broker: BrokerConfig, job_config: Any
) -> Iterator[None]:
    """Serve the dashboard of ``job_config``'s job during the block (no-op without settings).

    Used by ``run_job`` for ``fedcoord start --dashboard``: the dashboard follows the job
    on its own MQTT connection, in threads of the coordinator's process.
    """
    if settings is None:
        yield
        return
    from dataclasses import replace

    from coordinator.dashboard.server import open_dashboard

    if settings.run_dir is None and hasattr(job_config, "run_path"):
        settings = replace(settings, run_dir=str(job_config.run_path))  # history on --resume
    key = getattr(job_config, "signing_key", None)
    if settings.signing_key is None and key:
        settings = replace(settings, signing_key=str(key))  # admins' decisions signed too
    is_instance = is_dataclass(job_config) and not isinstance(job_config, type)
    config = asdict(job_config) if is_instance else dict(job_config)
    with open_dashboard(settings, broker, config["job"], prefix=config["prefix"], config=config):
        yield
