"""The run directory: the coordinator's system of record.

    RUN_DIR/
      model/model.tflite, model/manifest.json   the trainable model the job uses
      config.json                                the resolved job configuration
      run_id                                     this run's identity (made once, kept by --resume)
      state.json                                 last completed round and its checkpoint
      checkpoints/round-NNNN.npz                 global weights (+ strategy state) after round N
      metrics.jsonl                              RoundMetrics.to_record() per completed round
      final/                                     trained model, weights, inference-only model

Every file is written to a temporary name and renamed, so a crash at any moment leaves
the previous consistent state. A round is saved as checkpoint, then ``metrics.jsonl``, then
``state.json``; ``state.json`` says which rounds count, so a line of a round that a crash
left unconfirmed is dropped on loading and a resumed job never counts a round twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_client.errors import ConfigError, ProtocolError
from edge_client.protocol import RoundMetrics, check_id

KEEP_CHECKPOINTS = 2


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class RunState:
    job: str
    round: int = 0  # last completed round
    checkpoint: str | None = None  # relative path of its weights
    history: list[RoundMetrics] = field(default_factory=list)  # per completed round
    finished: bool = False


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def final_dir(self) -> Path:
        return self.path / "final"

    def create(self, config: Mapping[str, Any], *, resume: bool) -> None:
        if (self.path / "state.json").exists() and not resume:
            raise ConfigError(
                f"run directory {self.path} already holds a job: use --resume {self.path} to continue it, "
                "or choose another --run-dir"
            )
        (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write(
            self.path / "config.json",
            (json.dumps(dict(config), indent=2, default=str) + "\n").encode(),
        )

    def run_id(self) -> str:
        """This run's identity: made at the first call, read back afterwards (--resume).

        Round announcements carry it (``run``) and boards key their progress on it, so a
        second run of the same job and model is trained again, while a resumed run's rounds
        are recognised (and resent rather than retrained)."""
        path = self.path / "run_id"
        try:
            run_id = path.read_text().strip()
        except FileNotFoundError:
            run_id = ""
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if run_id:
            try:
                return check_id(run_id, "run id")
            except ProtocolError as exc:
                raise ConfigError(
                    f"{path} is corrupt ({exc}): delete it to start a new run"
                ) from exc
        run_id = secrets.token_hex(8)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write(path, f"{run_id}\n".encode())
        return run_id

    def load_state(self, job: str) -> RunState:
        p = self.path / "state.json"
        if not p.exists():
            return RunState(job)
        try:
            raw = json.loads(p.read_text())
            state = RunState(
                raw["job"],
                int(raw["round"]),
                raw.get("checkpoint"),
                [],
                bool(raw.get("finished")),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot resume: {p} is unreadable ({exc})") from exc
        if state.job != job:
            raise ConfigError(
                f"cannot resume: {self.path} belongs to job {state.job!r}, not {job!r}"
            )
        state.history = [m for m in self.load_history(job) if m.round <= state.round]
        return state

    def load_history(self, job: str) -> list[RoundMetrics]:
        """The rounds of ``metrics.jsonl`` (none if it does not exist)."""
        p = self.path / "metrics.jsonl"
        if not p.exists():
            return []
        try:
            return [
                RoundMetrics.from_record(job, json.loads(line))
                for line in p.read_text().splitlines()
                if line.strip()
            ]
        except (OSError, ValueError, ProtocolError) as exc:
            raise ConfigError(f"cannot resume: {p} is unreadable ({exc})") from exc

    def load_weights(self, state: RunState) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """(global weights, strategy state) of the state's checkpoint."""
        if state.checkpoint is None:
            raise ConfigError("no checkpoint to resume from")
        try:
            with np.load(self.path / state.checkpoint, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot resume: checkpoint {state.checkpoint} is unreadable ({exc})"
            ) from exc
        weights = {k[2:]: v for k, v in arrays.items() if k.startswith("w/")}
        strategy = {k[2:]: v for k, v in arrays.items() if k.startswith("s/")}
        return weights, strategy

    def save_round(
        self,
        state: RunState,
        round_: int,
        weights: Mapping[str, np.ndarray],
        strategy_state: Mapping[str, np.ndarray],
        metrics: RoundMetrics | None,
    ) -> RunState:
        """Checkpoint round ``round_`` (weights first, then metrics.jsonl, then state)."""
        rel = f"checkpoints/round-{round_:04d}.npz"
        arrays = {f"w/{k}": v for k, v in weights.items()} | {
            f"s/{k}": v for k, v in strategy_state.items()
        }
        tmp = self.path / f"checkpoints/.round-{round_:04d}.tmp.npz"
        np.savez(tmp, **arrays)
        os.replace(tmp, self.path / rel)
        history = [h for h in state.history if h.round < round_]
        if metrics is not None:
            history.append(metrics)
        new = RunState(state.job, round_, rel, history, state.finished)
        self._write_history(history)
        self._write_state(new)
        self._prune(round_)
        return new

    def record_metrics(self, state: RunState, metrics: RoundMetrics) -> RunState:
        """Replace round ``metrics.round``'s line of metrics.jsonl (its score came in after
        the checkpoint); state.json is unchanged."""
        history = [metrics if h.round == metrics.round else h for h in state.history]
        self._write_history(history)
        return dataclasses.replace(state, history=history)

    def mark_finished(self, state: RunState) -> RunState:
        new = RunState(state.job, state.round, state.checkpoint, state.history, True)
        self._write_state(new)
        return new

    def _write_state(self, state: RunState) -> None:
        raw = {
            "job": state.job,
            "round": state.round,
            "checkpoint": state.checkpoint,
            "finished": state.finished,
        }
        atomic_write(self.path / "state.json", (json.dumps(raw, indent=1) + "\n").encode())

    def _write_history(self, history: list[RoundMetrics]) -> None:
        lines = "".join(json.dumps(h.to_record()) + "\n" for h in history)
        atomic_write(self.path / "metrics.jsonl", lines.encode())

    def _prune(self, round_: int) -> None:
        for old in sorted((self.path / "checkpoints").glob("round-*.npz"))[:-KEEP_CHECKPOINTS]:
            if old.name != f"round-{round_:04d}.npz":
                old.unlink(missing_ok=True)
