"""The run directory: the one module that knows its layout.

A run lives in ``runs/<experiment>/<run name>/``::

    config.yaml            resolved config of the run (safe YAML)
    summary.json           status, metrics, wall time, parameters, environment
    metrics.csv            every logged metric, one row per logging step
    checkpoints/           best.ckpt, last.ckpt
    plots/                 figures written by callbacks
    wandb/                 offline W&B files (unless disabled)
    evals/<name>/          evaluations of the run (test/validate on other data or checkpoints)
    predictions/           per-example outputs of ``cnf predict``

Every other module asks this one for paths and for the summary; nobody spells
``"summary.json"`` again. ``summary.json`` is written atomically (write, then rename).

Statuses: ``running`` (written at start), ``finished``, ``failed``, ``interrupted``.

    >>> import tempfile
    >>> run = RunDir(tempfile.mkdtemp())
    >>> run.write_summary({"status": RUNNING})
    >>> run.status
    'running'
    >>> run.is_finished
    False
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "RunDir", "CONFIG", "SUMMARY", "METRICS", "CHECKPOINTS", "PLOTS", "EVALS", "PREDICTIONS",
    "RUNNING", "FINISHED", "FAILED", "INTERRUPTED", "STATUSES", "write_json_atomic",
    "find_runs", "run_dir_of_checkpoint",
]

CONFIG = "config.yaml"
SUMMARY = "summary.json"
METRICS = "metrics.csv"
CHECKPOINTS = "checkpoints"
PLOTS = "plots"
EVALS = "evals"
PREDICTIONS = "predictions"
WANDB = "wandb"

RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
INTERRUPTED = "interrupted"
STATUSES = (RUNNING, FINISHED, FAILED, INTERRUPTED)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename, so a reader
    (or a killed writer) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    tmp.replace(path)


@dataclass(frozen=True)
class RunDir:
    """Paths and summary of one run directory (it need not exist yet)."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path))

    def __fspath__(self) -> str:
        return str(self.path)

    # --- paths -------------------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    def checkpoint(self, name: str = "last") -> Path:
        """``checkpoints/<name>.ckpt`` (``best`` or ``last``)."""
        return self.checkpoints / f"{name}.ckpt"

    @property
    def plots(self) -> Path:
        return self.path / PLOTS

    @property
    def wandb(self) -> Path:
        return self.path / WANDB

    @property
    def evals(self) -> Path:
        return self.path / EVALS

    @property
    def predictions(self) -> Path:
        return self.path / PREDICTIONS

    # --- state -------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return self.path.is_dir()

    @property
    def is_run(self) -> bool:
        """Whether this folder holds a run record (a summary or a saved config)."""
        return self.summary_path.exists() or self.config.exists()

    def read_summary(self) -> dict[str, Any]:
        """The summary as a dict; ``{}`` when there is none or it cannot be parsed."""
        try:
            data = json.loads(self.summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Replace ``summary.json`` atomically."""
        write_json_atomic(self.summary_path, summary)

    def update_summary(self, **fields: Any) -> dict[str, Any]:
        """Merge ``fields`` into the summary and write it back atomically."""
        summary = self.read_summary()
        summary.update(fields)
        self.write_summary(summary)
        return summary

    @property
    def status(self) -> str | None:
        return self.read_summary().get("status")

    @property
    def is_finished(self) -> bool:
        return self.status == FINISHED

    def best_or_last_checkpoint(self) -> Path | None:
        """``best.ckpt`` if it exists, else ``last.ckpt``, else ``None``."""
        for name in ("best", "last"):
            if self.checkpoint(name).exists():
                return self.checkpoint(name)
        return None


def run_dir_of_checkpoint(ckpt_path: str | Path) -> RunDir | None:
    """The run a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), or ``None``."""
    parent = Path(ckpt_path).resolve().parent
    if parent.name == CHECKPOINTS and RunDir(parent.parent).is_run:
        return RunDir(parent.parent)
    return None


def find_runs(root: str | Path) -> Iterator[RunDir]:
    """Every run directory under ``root`` (any depth), sorted by path; evaluations inside a
    run (``evals/``) are not runs of their own."""
    root = Path(root)
    for marker in sorted(root.rglob(SUMMARY)):
        if EVALS in marker.relative_to(root).parts[:-1]:
            continue
        yield RunDir(marker.parent)
