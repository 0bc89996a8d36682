"""Read runs from disk through :mod:`cnf.rundir`: summary, metrics, config, plots, and the
evaluations kept in each run's ``evals/``. Runs that did not finish are read too: their
status is ``failed``, ``interrupted``, or ``unfinished`` (marked running, but no live process
holds them: killed), so a report lists them instead of dropping them.

Only local files are read, so reports work offline and long after the run. A runs folder is
any folder that holds run directories (a run directory is one with ``summary.json``) at any
depth; ``runs/<suite>/suite.json`` written by ``cnf compare`` adds member labels and the
members that failed before writing a summary.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnf.errors import DataError
from cnf.rundir import INTERRUPTED, RUNNING, UNFINISHED, find_evaluations, find_runs

__all__ = ["Run", "Group", "Evaluation", "load_runs", "load_evaluations", "group_runs",
           "flatten", "config_differences", "mean_std", "UNFINISHED_STATUSES"]

# runs that stopped before the end and can be resumed (`cnf fit --resume`)
UNFINISHED_STATUSES = (RUNNING, UNFINISHED, INTERRUPTED)

# config keys that name or place a run rather than define it
_IGNORED_PREFIXES = ("run.", "trainer.logger", "trainer.callbacks", "trainer.default_root_dir",
                     "ckpt_path", "config", "trainer.enable_progress_bar")


@dataclass
class Run:
    """One run directory. ``history`` maps a metric name to ``[(step, value), ...]``."""

    path: Path
    label: str
    data: str
    seed: int | None
    status: str
    summary: dict[str, Any]
    config: dict[str, Any]
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)
    error: str | None = None
    labelled: bool = False  # label given by a suite (not derived from the folder)
    evaluations: list[Evaluation] = field(default_factory=list)

    @property
    def metrics(self) -> dict[str, float]:
        return self.summary.get("metrics", {})

    @property
    def name(self) -> str:
        return self.path.name

    def metric(self, key: str) -> float | None:
        """A run-level number: a final metric, a summary field, or a history statistic.

        ``train/nfe_forward`` and ``train/nfe_backward`` (per-step counters) are the mean over
        the last quarter of the logged training steps, so one odd step does not decide them.
        ``time/train_step_s`` is the median over all logged steps.
        """
        if key in ("train/nfe_forward", "train/nfe_backward") and self.history.get(key):
            values = [v for _, v in self.history[key]]
            tail = values[len(values) * 3 // 4:] or values
            return sum(tail) / len(tail)
        if key == "time/train_step_s" and self.history.get(key):
            return statistics.median(v for _, v in self.history[key])
        if key in self.metrics:
            return self.metrics[key]
        value = self.summary.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def elapsed_at(self) -> list[tuple[int, float]]:
        """``(step, seconds since fit start)`` pairs: logged ``time/elapsed_s`` when present,
        else ``step × s_per_step`` (an estimate that spreads validation time evenly)."""
        if self.history.get("time/elapsed_s"):
            return self.history["time/elapsed_s"]
        sps = self.summary.get("s_per_step")
        steps = self.summary.get("steps") or 0
        if not sps:
            return []
        return [(s, s * float(sps)) for s in range(0, int(steps) + 1, max(1, int(steps) // 50 or 1))]


@dataclass
class Evaluation:
    """A ``cnf test`` / ``cnf validate`` of a run (``<run>/evals/<name>/``), or of an
    untrained model / outside checkpoint (``<experiment>/evals/<name>/``)."""

    path: Path
    summary: dict[str, Any]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def of_run(self) -> str | None:
        return self.summary.get("of_run")

    @property
    def label(self) -> str:
        """What was evaluated: the checkpoint file name, or ``untrained``."""
        if self.summary.get("untrained"):
            return "untrained"
        ckpt = self.summary.get("checkpoint")
        return Path(ckpt).name if ckpt else "-"


def load_evaluations(root: str | Path) -> list[Evaluation]:
    """Every evaluation folder under ``root`` (any ``evals/<name>/`` with a summary)."""
    return [Evaluation(ev.path, ev.read_summary()) for ev in find_evaluations(root)]


@dataclass
class Group:
    """The runs of one model on one dataset (its seeds)."""

    label: str
    data: str
    runs: list[Run]

    @property
    def finished(self) -> list[Run]:
        return [r for r in self.runs if r.status == "finished"]

    def stat(self, key: str) -> tuple[float, float, int] | None:
        """``(mean, std, n)`` of ``key`` over the finished seeds (std 0 for one seed)."""
        values = [v for r in self.finished if (v := r.metric(key)) is not None and math.isfinite(v)]
        if not values:
            return None
        return mean_std(values)


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count."""
    vals = list(values)
    n = len(vals)
    mean = sum(vals) / n
    std = statistics.stdev(vals) if n > 1 else 0.0
    return mean, std, n


def _read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    history: dict[str, list[tuple[int, float]]] = {}
    if not path.exists():
        return history
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or 0))
            except ValueError:
                continue
            for key, value in row.items():
                if key in ("step", "epoch") or value in (None, ""):
                    continue
                try:
                    v = float(value)
                except ValueError:
                    continue
                if math.isfinite(v):
                    history.setdefault(key.removesuffix("_epoch").removesuffix("_step"), []).append((step, v))
    for series in history.values():
        series.sort(key=lambda sv: sv[0])
    return history


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) if path.exists() else {}
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _suite_members(root: Path) -> dict[Path, dict[str, Any]]:
    """``suite.json`` entries under ``root`` keyed by resolved run directory."""
    out: dict[Path, dict[str, Any]] = {}
    for sj in sorted(root.rglob("suite.json")):
        try:
            state = json.loads(sj.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        for i, m in enumerate(state.get("members", [])):
            m = dict(m, order=i)
            run_dir = Path(m.get("run_dir", ""))
            if not run_dir.is_absolute():
                # run_dir is relative to where compare ran; the suite.json sits in its parent
                run_dir = sj.parent / run_dir.name
            out[run_dir.resolve()] = m
    return out


def load_runs(root: str | Path) -> list[Run]:
    """Every run under ``root`` (finished, failed, and suite members that never started a
    summary). Raises ``DataError`` when ``root`` holds no run at all."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"runs folder {root} does not exist; pass the folder `cnf compare` or "
                        f"`cnf fit` wrote to, e.g. runs/toy")
    members = _suite_members(root)
    runs: list[Run] = []
    seen: set[Path] = set()
    evaluations: dict[Path, list[Evaluation]] = {}
    for ev in load_evaluations(root):
        evaluations.setdefault(ev.path.parent.parent.resolve(), []).append(ev)
    for record in find_runs(root):
        run_dir = record.path
        if ".attempts" in run_dir.parts or run_dir.name in ("validate", "test", "predict"):
            continue
        summary = record.read_summary()
        if not summary and record.summary_path.exists():
            continue  # unreadable
        config = _read_yaml(record.config)
        member = members.get(run_dir.resolve(), {})
        seed = config.get("seed_everything")
        # a suite member keeps its label; other runs are named by their experiment folder
        label = member.get("label") or run_dir.parent.name
        runs.append(Run(
            path=run_dir, label=str(label), labelled=bool(member),
            data=str(member.get("data") or summary.get("data") or "-"),
            seed=int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else member.get("seed"),
            status=str(record.state or "unknown"),
            summary=summary, config=config,
            history=_read_metrics(record.metrics),
            plots=sorted(record.plots.glob("*.png")) if record.plots.is_dir() else [],
            error=summary.get("error") or member.get("error"),
            evaluations=evaluations.get(run_dir.resolve(), []),
        ))
        seen.add(run_dir.resolve())
    for run_dir, m in members.items():
        if run_dir in seen or m.get("status") in ("pending", "running", None):
            continue
        runs.append(Run(path=run_dir, label=str(m.get("label")), labelled=True,
                        data=str(m.get("data") or "-"),
                        seed=m.get("seed"), status=str(m.get("status")), summary={}, config={},
                        error=m.get("error")))
    if not runs:
        raise DataError(f"no runs under {root}: a run directory holds summary.json (written by "
                        f"`cnf fit`); check the path or run `cnf compare` first")
    # an experiment folder holding several models: name those runs by their model class
    by_label: dict[str, set[str]] = {}
    for r in runs:
        if not r.labelled:
            by_label.setdefault(r.label, set()).add(str(r.summary.get("model")))
    for r in runs:
        if not r.labelled and len(by_label.get(r.label, ())) > 1:
            r.label = str(r.summary.get("model"))
    order = {p: m.get("order", 0) for p, m in members.items()}
    runs.sort(key=lambda r: (order.get(r.path.resolve(), len(order)), str(r.path)))
    _split_differing_configs(runs)
    return runs


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"a.b.c": value}``; ``init_args`` levels are dropped and a
    ``class_path`` shows as the class name."""
    out: dict[str, Any] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "init_args":
                out.update(flatten(value, prefix))
                continue
            name = f"{prefix}.{key}" if prefix else str(key)
            if key == "class_path":
                out[prefix or "class_path"] = str(value).rsplit(".", 1)[-1]
            elif isinstance(value, dict):
                out.update(flatten(value, name))
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for i, v in enumerate(value):
                    out.update(flatten(v, f"{name}[{i}]"))
            else:
                out[name] = value
    else:
        out[prefix] = node
    return out


def _defining(config: dict[str, Any]) -> dict[str, Any]:
    flat = flatten(config)
    return {k: v for k, v in flat.items()
            if not k.startswith(_IGNORED_PREFIXES) and k != "seed_everything"}


def _split_differing_configs(runs: list[Run]) -> None:
    """Runs sharing a label and dataset but trained with different configs (not just another
    seed) get distinct labels, so seeds are never averaged across different settings."""
    by_key: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        by_key.setdefault((r.label, r.data), []).append(r)
    for (label, _), group in by_key.items():
        digests = {}
        for r in group:
            if r.config:
                digests[id(r)] = hashlib.sha1(
                    json.dumps(_defining(r.config), sort_keys=True, default=str).encode()
                ).hexdigest()[:6]
        if len(set(digests.values())) > 1:
            for r in group:
                if id(r) in digests:
                    r.label = f"{label}#{digests[id(r)]}"


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs grouped by (label, dataset), in order of first appearance."""
    groups: dict[tuple[str, str], Group] = {}
    for r in runs:
        groups.setdefault((r.label, r.data), Group(r.label, r.data, [])).runs.append(r)
    return list(groups.values())


def config_differences(runs: list[Run]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Keys whose values differ between runs (run names, seeds and loggers excluded), and for
    each model label the value of each key (``a | b`` when it varies within the label).

    Returns ``(keys, {label: {key: value}})``.
    """
    flats = [(r.label, _defining(r.config)) for r in runs if r.config]
    if len(flats) < 2:
        return [], {}
    keys = sorted({k for _, f in flats for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k), default=str) for _, f in flats}) > 1]
    table: dict[str, dict[str, str]] = {}
    for label, flat in flats:
        row = table.setdefault(label, {})
        for k in differing:
            value = "-" if k not in flat else _short(flat[k])
            if k in row and value not in row[k].split(" | "):
                row[k] = f"{row[k]} | {value}"
            else:
                row.setdefault(k, value)
    return differing, table


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if isinstance(value, (list, dict)) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
