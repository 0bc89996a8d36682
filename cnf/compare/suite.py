"""Suite files and their plan: what ``cnf compare`` runs, with which command, keyed how.

A suite (``experiments/<name>.yaml``) names model configs, datasets, a budget and seeds::

    # Toy 2D densities: every toy model on three datasets     <- first line: help text
    name: toy                          # default: the file stem; runs go to runs/<name>/
    members:                           # configs/experiment/<member>.yaml (or a path), or a
      - toy_realnvp                    # mapping: label (name in the report), data (dataset
      - config: power_maf              # shown when the member has no suite data), requires
        label: maf                     # (a path that must exist, else the member is left
        data: power                    # out with a note, e.g. data files not downloaded)
        requires: ${CNF_DATA_DIR:-data}/power
    data: [8gaussians, checkerboard]   # a name (configs/data/<name>.yaml must exist) sets
                                       # --data.init_args.name, keeping the member's batch
                                       # size etc.; a path to a data YAML replaces the data
                                       # config; omit: each member keeps its own data
    budget:
      max_steps: 2000                  # -> --trainer.max_steps
      max_time: null                   # "DD:HH:MM:SS", "90s", "10m", "1h" -> --trainer.max_time
      validations: 5                   # validations per run when max_steps is set
    seeds: [0, 1]                      # -> --seed_everything (the data stay the same)
    args: []                           # extra `cnf fit` arguments for every member
    resources:                         # per run, used by `--launcher slurm` (one job a run)
      gpus: 1                          # gpus_per_node        (also: nodes, tasks_per_node)
      cpus: 4                          # cpus_per_task
      mem_gb: 16
      time: 2h                         # the job's time limit (default: budget.max_time + 10m)
      partition: gpu                   # also: account, qos, constraint
      slurm: {exclude: node17}         # any other submitit slurm_* parameter

Every (member, dataset, seed) is one run of ``cnf fit``, written to
``runs/<suite>/<member>-<dataset>-s<seed>/``. A finished run is keyed by its budget and a
hash of its configuration (:mod:`cnf.compare.keys`): the same key is skipped when the suite
runs again; a different key is never skipped silently.

The runner (:mod:`cnf.compare.runner`) executes a plan; :mod:`cnf.compare.cli` is the command.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnf.compare.keys import parse_duration, run_key
from cnf.errors import ConfigError

__all__ = ["Member", "Suite", "load_suite", "plan", "data_name", "member_label"]

_SUITE_KEYS = {"name", "description", "members", "data", "budget", "seeds", "args", "root",
               "report", "wandb", "resources"}
_BUDGET_KEYS = {"max_steps", "max_time", "validations"}
_RESOURCE_KEYS = {"gpus", "cpus", "mem_gb", "time", "nodes", "tasks_per_node", "partition",
                  "account", "qos", "constraint", "slurm"}


# -- suite files -------------------------------------------------------------------------
@dataclass
class Suite:
    """A parsed suite file. ``members`` and ``data`` hold resolved config paths."""

    name: str
    path: Path
    description: str
    members: list[Path]
    data: list[Path | None]
    seeds: list[int]
    max_steps: int | None = None
    max_time: str | None = None
    validations: int = 5
    args: list[str] = field(default_factory=list)
    root: Path = Path("runs")
    report: Path | None = None
    wandb: str = "offline"
    replace_data: set[str] = field(default_factory=set)  # data given as YAML paths
    labels: dict[str, str] = field(default_factory=dict)  # config path -> label
    member_data: dict[str, str] = field(default_factory=dict)  # config path -> dataset shown
    left_out: list[str] = field(default_factory=list)  # members whose `requires` is missing
    resources: dict[str, Any] = field(default_factory=dict)  # per-run job resources (SLURM)

    @property
    def runs_dir(self) -> Path:
        return self.root / self.name


@dataclass
class Member:
    """One run of a suite: a member config on one dataset with one seed."""

    label: str
    config: str
    data: str | None
    data_config: str | None
    seed: int
    run_name: str
    run_dir: str
    command: list[str]
    status: str = "pending"  # pending | running | finished | failed | skipped
    returncode: int | None = None
    elapsed_s: float | None = None
    error: str | None = None
    log: str | None = None
    device: str | None = None
    key: dict[str, Any] | None = None  # the run key (budget + config hash), see run_key()
    job_id: str | None = None  # SLURM (submitit) job id when launched as a job


def _project_root(suite_path: Path) -> Path:
    """The folder holding ``configs/``: the working directory if it has one, else the first
    parent of the suite file that does."""
    if (Path.cwd() / "configs").is_dir():
        return Path.cwd()
    for parent in suite_path.resolve().parents:
        if (parent / "configs").is_dir():
            return parent
    return Path.cwd()


def _resolve(ref: str, kind: str, root: Path, suite_path: Path) -> Path:
    """``toy_realnvp`` -> ``configs/experiment/toy_realnvp.yaml``; paths stay paths."""
    ref = str(ref)
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
        candidates = [Path(ref), suite_path.parent / ref, root / ref]
    else:
        candidates = [root / "configs" / kind / f"{ref}.yaml"]
    for c in candidates:
        if c.is_file():
            return _rel(c)
    available = sorted(p.stem for p in (root / "configs" / kind).glob("*.yaml"))
    what = "member" if kind == "experiment" else "dataset"
    raise ConfigError(
        f"suite {suite_path}: {what} {ref!r} has no config file (looked for "
        f"{', '.join(str(c) for c in candidates)}). "
        + (f"Available in configs/{kind}/: {', '.join(available)}. " if available else "")
        + f"Create the config, fix the name, or drop it from the suite's `{'members' if kind == 'experiment' else 'data'}` list "
        f"(or select others with --only/--data)."
    )


def _rel(path: Path) -> Path:
    try:
        return path.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        return path.resolve()


def _as_list(value: Any, key: str, path: Path) -> list:
    if value is None:
        return []
    if isinstance(value, (str, int)):
        return [value]
    if isinstance(value, list):
        return value
    raise ConfigError(f"suite {path}: `{key}` must be a name or a list, got {value!r}")


def load_suite(path: str | Path) -> Suite:
    """Read and check a suite file; every member and dataset config must exist.

    Raises:
        ConfigError: unknown keys, a missing member/data config (named in the message), a bad
            budget or seed list.
    """
    path = Path(path)
    if not path.is_file():
        known = sorted(p.name for p in Path("experiments").glob("*.yaml"))
        raise ConfigError(f"suite file {path} not found"
                          + (f"; suites here: {', '.join(known)}" if known else ""))
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"suite {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"suite {path} must be a mapping with `members`, `data`, `budget`, `seeds`")
    unknown = set(raw) - _SUITE_KEYS
    if unknown:
        raise ConfigError(f"suite {path}: unknown key(s) {sorted(unknown)}; valid keys: "
                          f"{sorted(_SUITE_KEYS)}")
    root = _project_root(path)
    first = path.read_text().splitlines()[0] if path.read_text().strip() else ""
    description = raw.get("description") or first.lstrip("# ").strip()
    members_raw = _as_list(raw.get("members"), "members", path)
    if not members_raw:
        raise ConfigError(f"suite {path} lists no `members` (model configs to compare)")
    if len(members_raw) != len({str(m.get("config") if isinstance(m, dict) else m)
                                for m in members_raw}):
        raise ConfigError(f"suite {path} lists a member twice")
    members: list[Path] = []
    labels: dict[str, str] = {}
    member_data: dict[str, str] = {}
    left_out: list[str] = []
    for m in members_raw:
        if isinstance(m, dict):
            unknown_m = set(m) - {"config", "label", "data", "requires"}
            if "config" not in m or unknown_m:
                raise ConfigError(f"suite {path}: a member mapping takes `config` (required), "
                                  f"`label`, `data`, `requires`; got {sorted(m)}")
            requires = m.get("requires")
            if requires and not Path(os.path.expandvars(_default_vars(str(requires)))).exists():
                left_out.append(f"{m['config']} (needs {os.path.expandvars(_default_vars(str(requires)))})")
                continue
            config = _resolve(m["config"], "experiment", root, path)
            if m.get("label"):
                labels[str(config)] = str(m["label"])
            if m.get("data"):
                member_data[str(config)] = str(m["data"])
        else:
            config = _resolve(m, "experiment", root, path)
        members.append(config)
    data_raw = _as_list(raw.get("data"), "data", path)
    data: list[Path | None] = [_resolve(d, "data", root, path) for d in data_raw] or [None]
    replace_data = {str(p) for p, d in zip(data, data_raw)
                    if p is not None and (str(d).endswith((".yaml", ".yml")) or "/" in str(d))}
    seeds = _as_list(raw.get("seeds", [0]), "seeds", path)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"suite {path}: `seeds` must be a list of integers, got {seeds!r}")
    budget = raw.get("budget") or {}
    if not isinstance(budget, dict) or set(budget) - _BUDGET_KEYS:
        raise ConfigError(f"suite {path}: `budget` takes {sorted(_BUDGET_KEYS)}, got {budget!r}")
    max_steps = budget.get("max_steps")
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps <= 0):
        raise ConfigError(f"suite {path}: budget.max_steps must be a positive integer")
    validations = int(budget.get("validations", 5))
    args = [str(a) for a in _as_list(raw.get("args"), "args", path)]
    resources = _check_resources(raw.get("resources"), path)
    return Suite(
        name=str(raw.get("name") or path.stem), path=_rel(path), description=description,
        members=members, data=data, seeds=list(seeds), max_steps=max_steps,
        max_time=parse_duration(budget["max_time"]) if budget.get("max_time") else None,
        validations=max(validations, 0), args=args, root=Path(raw.get("root", "runs")),
        report=Path(raw["report"]) if raw.get("report") else None,
        wandb=str(raw.get("wandb", "offline")), replace_data=replace_data, labels=labels,
        member_data=member_data, left_out=left_out, resources=resources,
    )


def _check_resources(value: Any, path: Path) -> dict[str, Any]:
    """The suite's ``resources`` mapping, checked (names, positive numbers, a time)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - _RESOURCE_KEYS:
        raise ConfigError(f"suite {path}: `resources` takes {sorted(_RESOURCE_KEYS)}, got "
                          f"{value!r}")
    out = dict(value)
    for key in ("gpus", "cpus", "nodes", "tasks_per_node"):
        v = out.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ConfigError(f"suite {path}: resources.{key} must be a non-negative integer, "
                              f"got {v!r}")
    mem = out.get("mem_gb")
    if mem is not None and (isinstance(mem, bool) or not isinstance(mem, (int, float)) or mem <= 0):
        raise ConfigError(f"suite {path}: resources.mem_gb must be a positive number, got {mem!r}")
    if out.get("time") is not None:
        out["time"] = parse_duration(out["time"])
    if out.get("slurm") is not None and not isinstance(out["slurm"], dict):
        raise ConfigError(f"suite {path}: resources.slurm must be a mapping of extra submitit "
                          f"slurm parameters (e.g. {{exclude: node17}}), got {out['slurm']!r}")
    return out


def _default_vars(text: str) -> str:
    """``${VAR:-default}`` -> the variable's value, else the default (as in a shell)."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m.group(1)) or m.group(2), text)


# -- planning ----------------------------------------------------------------------------
def member_label(config: Path, suite_name: str) -> str:
    """``toy_realnvp`` in suite ``toy`` -> ``realnvp``; other names stay as they are."""
    stem = config.stem
    return stem[len(suite_name) + 1:] if stem.startswith(f"{suite_name}_") else stem


def data_name(data_config: Path | None) -> str | None:
    """The dataset name a data config selects (``init_args.name``, else its file stem)."""
    if data_config is None:
        return None
    try:
        node = yaml.safe_load(data_config.read_text()) or {}
        name = (node.get("init_args") or {}).get("name")
    except (OSError, yaml.YAMLError, AttributeError):
        name = None
    return str(name) if name else data_config.stem


def plan(suite: Suite, *, wandb: str | None = None, extra_args: list[str] | None = None,
         python: str | None = None) -> list[Member]:
    """Every (member, dataset, seed) run of ``suite`` with its ``cnf fit`` command line."""
    members = []
    for config in suite.members:
        label = suite.labels.get(str(config)) or member_label(config, suite.name)
        for data_cfg in suite.data:
            data = data_name(data_cfg) or suite.member_data.get(str(config))
            for seed in suite.seeds:
                run_name = "-".join([label] + ([data] if data else []) + [f"s{seed}"])
                cmd = [python or sys.executable, "-m", "cnf", "fit", "--config", str(config)]
                if data_cfg is not None and str(data_cfg) in suite.replace_data:
                    cmd += ["--data", str(data_cfg)]
                elif data_cfg is not None and data is not None:
                    cmd += ["--data.init_args.name", data]
                cmd += ["--seed_everything", str(seed)]
                if suite.max_steps is not None:
                    cmd += ["--trainer.max_steps", str(suite.max_steps)]
                    cmd += ["--run.progress_every", str(max(1, suite.max_steps // 10))]
                    if suite.validations:
                        every = max(1, suite.max_steps // suite.validations)
                        cmd += ["--trainer.val_check_interval", str(every),
                                "--trainer.check_val_every_n_epoch", "null"]
                if suite.max_time is not None:
                    cmd += ["--trainer.max_time", suite.max_time]
                    if suite.max_steps is None:
                        cmd += ["--trainer.max_steps", "-1"]
                tags = [suite.name, label] + ([data] if data else [])
                cmd += ["--run.root", str(suite.root), "--run.experiment", suite.name,
                        "--run.name", run_name, "--run.group", suite.name,
                        "--run.tags", json.dumps(tags), "--run.wandb", wandb or suite.wandb]
                cmd += suite.args + list(extra_args or [])
                members.append(Member(
                    label=label, config=str(config), data=data,
                    data_config=str(data_cfg) if data_cfg else None, seed=seed,
                    run_name=run_name, run_dir=str(suite.runs_dir / run_name), command=cmd,
                    key=run_key(suite, cmd).as_dict()))
    return members
