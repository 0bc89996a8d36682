"""The run directory: the one module that knows its layout.

A run lives in ``runs/<experiment>/<run name>/``::

    config.yaml            resolved config of the run (safe YAML)
    summary.json           status, metrics, wall time, parameters, environment
    metrics.csv            every logged metric, one row per logging step
    checkpoints/           best.ckpt, last.ckpt
    plots/                 figures written by callbacks
    wandb/                 offline W&B files (unless disabled)
    evals/<name>/          evaluations of the run (``cnf test`` / ``cnf validate``), each with
                           its own summary.json, config.yaml and metrics.csv
    predictions/           per-example outputs of ``cnf predict`` (one file per call)
    .lock                  present while a process writes the run: PID, host, start time

Every other module asks this one for paths and for the summary; nobody spells
``"summary.json"`` again. ``summary.json`` is written atomically (write, then rename).

Statuses: ``running`` (written at start), ``finished``, ``failed``, ``interrupted``. A
``running`` run whose lock is gone or stale (its process died, e.g. ``kill -9``) is
*unfinished*. A run is written by one process at a time (:meth:`RunDir.lock`); a resumed run
adds a *segment* (``summary["segments"]``) per ``cnf fit`` invocation.

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
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnf.errors import ConfigError

__all__ = [
    "RunDir", "CONFIG", "SUMMARY", "METRICS", "CHECKPOINTS", "PLOTS", "EVALS", "PREDICTIONS",
    "RUNNING", "FINISHED", "FAILED", "INTERRUPTED", "STATUSES", "write_json_atomic",
    "find_runs", "find_evaluations", "run_dir_of_checkpoint", "RunLockedError", "UNFINISHED", "LockInfo", "unique_path",
]

CONFIG = "config.yaml"
SUMMARY = "summary.json"
METRICS = "metrics.csv"
CHECKPOINTS = "checkpoints"
PLOTS = "plots"
EVALS = "evals"
PREDICTIONS = "predictions"
WANDB = "wandb"
LOCK = ".lock"

RUNNING = "running"
FINISHED = "finished"
FAILED = "failed"
INTERRUPTED = "interrupted"
STATUSES = (RUNNING, FINISHED, FAILED, INTERRUPTED)
UNFINISHED = "unfinished"  # reported, never written: running, but no live process holds it


class RunLockedError(ConfigError):
    """Another live process writes this run directory."""


@dataclass(frozen=True)
class LockInfo:
    """Who holds a run's lock: process id, host, start time (seconds since the epoch)."""

    pid: int
    host: str
    since: float

    @property
    def alive(self) -> bool | None:
        """Whether the holder still runs: ``None`` when it is on another host (unknown)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"process {self.pid} on {self.host} (since {when})"


def unique_path(path: str | Path) -> Path:
    """``path`` if nothing is there, else ``<stem>-2<suffix>``, ``-3``, ...: never an
    existing file or folder."""
    path = Path(path)
    if not path.exists():
        return path
    i = 2
    while True:
        cand = path.with_name(f"{path.stem}-{i}{path.suffix}")
        if not cand.exists():
            return cand
        i += 1


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

    @property
    def lock_path(self) -> Path:
        return self.path / LOCK

    def eval_dir(self, name: str) -> RunDir:
        """``evals/<name>/`` of this run, as a run directory of its own."""
        return RunDir(self.evals / name)

    def new_eval_dir(self, name: str) -> RunDir:
        """A fresh ``evals/<name>[-N]/`` (never an existing one), created."""
        path = unique_path(self.evals / name)
        path.mkdir(parents=True)
        return RunDir(path)

    def new_prediction_path(self, name: str, suffix: str = ".csv") -> Path:
        """A fresh ``predictions/<name>[-N]<suffix>`` (never an existing file)."""
        self.predictions.mkdir(parents=True, exist_ok=True)
        return unique_path(self.predictions / f"{name}{suffix}")

    def evaluations(self) -> list[RunDir]:
        """The evaluations of this run (``evals/*`` with a summary), sorted by name."""
        if not self.evals.is_dir():
            return []
        return [RunDir(p) for p in sorted(self.evals.iterdir()) if (p / SUMMARY).exists()]

    # --- lock --------------------------------------------------------------------------
    def lock_info(self) -> LockInfo | None:
        """The current lock holder, or ``None`` when the run is not locked."""
        try:
            data = json.loads(self.lock_path.read_text())
            return LockInfo(int(data["pid"]), str(data["host"]), float(data.get("since", 0)))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def lock(self) -> str | None:
        """Take the run's lock for this process (creating the folder). A stale lock (its
        process is gone on this host) is taken over; returns a note saying so, else ``None``.

        Raises:
            RunLockedError: a live process (or one on another host) holds the lock.
        """
        self.path.mkdir(parents=True, exist_ok=True)
        note = None
        for _ in range(3):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self.lock_info()
                if info is not None and info.pid == os.getpid() and info.host == socket.gethostname():
                    return None
                if info is not None and info.alive is not False:
                    where = "" if info.alive else (" (on another host, so cnf cannot tell whether "
                                                   "it still runs; if it does not, delete "
                                                   f"{self.lock_path})")
                    raise RunLockedError(
                        f"run directory {self.path} is being written by {info.describe()}"
                        f"{where}; wait for it to end, or choose another --run.name") from None
                note = (f"removed a stale lock of {info.describe()}, which no longer runs"
                        if info is not None else f"removed an unreadable lock {self.lock_path}")
                try:
                    self.lock_path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, f)
            return note
        raise RunLockedError(f"could not take the lock {self.lock_path}; another process "
                             "keeps taking it")

    def unlock(self) -> None:
        """Release the lock if this process holds it."""
        info = self.lock_info()
        if info is not None and info.pid == os.getpid() and info.host == socket.gethostname():
            try:
                self.lock_path.unlink()
            except FileNotFoundError:
                pass

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

    @property
    def state(self) -> str | None:
        """The status for a reader: the written one, except ``unfinished`` for a run marked
        ``running`` that no live process holds (killed), and for a folder with checkpoints
        but no summary."""
        status = self.status
        if status is None:
            return UNFINISHED if self.checkpoints.is_dir() else None
        if status == RUNNING:
            info = self.lock_info()
            if info is None or info.alive is False:
                return UNFINISHED
        return status

    @property
    def is_empty(self) -> bool:
        """Whether the folder is missing or holds nothing."""
        return not self.exists or not any(self.path.iterdir())

    @property
    def segments(self) -> list[dict[str, Any]]:
        """One entry per ``cnf fit`` invocation of this run (resumes add segments)."""
        seg = self.read_summary().get("segments")
        return list(seg) if isinstance(seg, list) else []

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
    """Every run directory under ``root`` (any depth), sorted by path: folders with a
    ``summary.json``, or with ``checkpoints/`` but no summary (a run killed before cnf wrote
    one). Evaluations inside a run (``evals/``) are not runs of their own."""
    root = Path(root)
    found = {m.parent for m in root.rglob(SUMMARY)}
    found |= {c.parent for c in root.rglob(CHECKPOINTS) if c.is_dir()}
    for path in sorted(found):
        if EVALS in path.relative_to(root).parts:
            continue
        yield RunDir(path)


def find_evaluations(root: str | Path) -> Iterator[RunDir]:
    """Every evaluation folder (``.../evals/<name>/`` with a summary) under ``root``."""
    root = Path(root)
    for marker in sorted(root.rglob(SUMMARY)):
        parts = marker.relative_to(root).parts
        if len(parts) >= 3 and parts[-3] == EVALS:
            yield RunDir(marker.parent)
