"""``cnf compare SUITE.yaml``: run every member of an experiment suite, then write the report.

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

Every (member, dataset, seed) is one run of ``cnf fit`` in a subprocess, written to
``runs/<suite>/<member>-<dataset>-s<seed>/``; all runs share the W&B group ``<suite>`` and
carry the tags suite, member, dataset (the CLI adds the flow class). Runs go one after another,
or one per GPU when several GPUs are visible (``CUDA_VISIBLE_DEVICES`` per member). A member
whose run directory already holds ``summary.json`` with ``status: finished`` is skipped, so a
suite resumes where it stopped; a failed member is recorded (``runs/<suite>/suite.json``,
its log in ``runs/<suite>/logs/``) and the suite goes on. At the end the report is written
(:func:`cnf.report.write_report`).

Example::

    cnf compare experiments/toy.yaml --max-steps 300 --seeds 0
    cnf compare experiments/toy.yaml --only toy_realnvp --data 8gaussians --dry-run
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnf.errors import ConfigError

__all__ = ["Member", "Suite", "load_suite", "plan", "run_suite", "main", "parse_duration"]

_SUITE_KEYS = {"name", "description", "members", "data", "budget", "seeds", "args", "root",
               "report", "wandb"}
_BUDGET_KEYS = {"max_steps", "max_time", "validations"}
# lines of a member's output echoed by `cnf compare` (the rest goes to its log file)
_ECHO = re.compile(r"^(\[(fit|validate|test|predict)\] (?!validation)|cnf: error|Traceback|\w+Error:)")


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


def parse_duration(value: Any) -> str:
    """A wall-time budget as Lightning's ``DD:HH:MM:SS``: accepts that form, seconds (int or
    float), or ``"90s"``, ``"10m"``, ``"1.5h"``, ``"1d"``.

    >>> parse_duration("10m"), parse_duration(90), parse_duration("00:01:00:00")
    ('00:00:10:00', '00:00:01:30', '00:01:00:00')
    """
    if isinstance(value, bool):
        raise ConfigError(f"budget.max_time must be a duration, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        if re.fullmatch(r"\d+:\d{1,2}:\d{1,2}:\d{1,2}", text):
            return ":".join(f"{int(p):02d}" for p in text.split(":"))
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text)
        if not m:
            raise ConfigError(
                f"budget.max_time {value!r} is not a duration; write DD:HH:MM:SS, seconds, "
                f"or a number with s/m/h/d such as '10m'")
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if seconds <= 0:
        raise ConfigError(f"budget.max_time must be positive, got {value!r}")
    s = int(round(seconds))
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


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
    return Suite(
        name=str(raw.get("name") or path.stem), path=_rel(path), description=description,
        members=members, data=data, seeds=list(seeds), max_steps=max_steps,
        max_time=parse_duration(budget["max_time"]) if budget.get("max_time") else None,
        validations=max(validations, 0), args=args, root=Path(raw.get("root", "runs")),
        report=Path(raw["report"]) if raw.get("report") else None,
        wandb=str(raw.get("wandb", "offline")), replace_data=replace_data, labels=labels,
        member_data=member_data, left_out=left_out,
    )


def _default_vars(text: str) -> str:
    """``${VAR:-default}`` -> the variable's value, else the default (as in a shell)."""
    return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: os.environ.get(m.group(1)) or m.group(2), text)


# -- planning ----------------------------------------------------------------------------
def member_label(config: Path, suite_name: str) -> str:
    """``toy_realnvp`` in suite ``toy`` -> ``realnvp``; other names stay as they are."""
    stem = config.stem
    return stem[len(suite_name) + 1:] if stem.startswith(f"{suite_name}_") else stem


def _data_name(data_config: Path | None) -> str | None:
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
            data = _data_name(data_cfg) or suite.member_data.get(str(config))
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
                    run_name=run_name, run_dir=str(suite.runs_dir / run_name), command=cmd))
    return members


def finished(run_dir: str | Path) -> bool:
    """Whether ``run_dir/summary.json`` says ``status: finished``."""
    path = Path(run_dir) / "summary.json"
    try:
        return json.loads(path.read_text()).get("status") == "finished"
    except (OSError, json.JSONDecodeError):
        return False


def detect_gpus() -> list[str]:
    """Visible CUDA devices (``CUDA_VISIBLE_DEVICES`` entries when set), else none."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:  # pragma: no cover - torch always importable here
        n = 0
    if n <= 0:
        return []
    if visible:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return ids[:n]
    return [str(i) for i in range(n)]


# -- running -----------------------------------------------------------------------------
def _fmt_s(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class _State:
    """``runs/<suite>/suite.json``: the members, their status and errors (thread-safe)."""

    def __init__(self, suite: Suite, members: list[Member]):
        self.suite = suite
        self.members = members
        self.path = suite.runs_dir / "suite.json"
        self.lock = threading.Lock()
        self.started = time.time()
        self.durations: list[float] = []
        # members recorded by earlier invocations (e.g. with --only) are kept
        self.previous: list[dict[str, Any]] = []
        try:
            self.previous = json.loads(self.path.read_text()).get("members", [])
        except (OSError, json.JSONDecodeError, AttributeError):
            self.previous = []

    def _merged(self) -> list[dict[str, Any]]:
        current = {m.run_name: asdict(m) for m in self.members}
        out = [current.pop(p.get("run_name"), p) for p in self.previous if isinstance(p, dict)]
        return out + list(current.values())

    def save(self) -> None:
        with self.lock:
            data = {
                "suite": self.suite.name, "suite_file": str(self.suite.path),
                "description": self.suite.description,
                "budget": {"max_steps": self.suite.max_steps, "max_time": self.suite.max_time},
                "seeds": self.suite.seeds,
                "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "members": self._merged(),
            }
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(data, indent=2))
            tmp.replace(self.path)

    def progress(self, n_workers: int) -> str:
        done = sum(m.status in ("finished", "failed", "skipped") for m in self.members)
        failed = sum(m.status == "failed" for m in self.members)
        todo = sum(m.status in ("pending", "running") for m in self.members)
        elapsed = time.time() - self.started
        eta = ""
        if self.durations and todo:
            mean = sum(self.durations) / len(self.durations)
            eta = f", ETA ~{_fmt_s(mean * todo / max(n_workers, 1))}"
        return (f"suite {done}/{len(self.members)} done"
                + (f", {failed} failed" if failed else "") + f", {_fmt_s(elapsed)} elapsed{eta}")


def _error_from(member: Member, log_lines: list[str]) -> str:
    summary = Path(member.run_dir) / "summary.json"
    try:
        err = json.loads(summary.read_text()).get("error")
        if err:
            return str(err)
    except (OSError, json.JSONDecodeError):
        pass
    for i in range(len(log_lines) - 1, -1, -1):
        if log_lines[i].startswith("cnf: error:"):
            text = " ".join(ln.strip() for ln in log_lines[i:i + 12] if ln.strip())
            text = text.removeprefix("cnf: error:").strip()
            return text if len(text) <= 800 else text[:797] + "..."
    tail = [ln for ln in log_lines if ln.strip()][-5:]
    return " | ".join(tail) if tail else f"exit status {member.returncode}"


def _run_member(member: Member, index: int, total: int, state: _State, device: str | None,
                n_workers: int, echo: bool, out: Any) -> None:
    run_dir = Path(member.run_dir)
    if run_dir.exists():
        # an unfinished earlier attempt: keep it for inspection, start clean
        attempts = state.suite.runs_dir / ".attempts"
        attempts.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        shutil.move(str(run_dir), str(attempts / f"{member.run_name}-{stamp}"))
    log_path = state.suite.runs_dir / "logs" / f"{member.run_name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    member.log, member.device, member.status = str(log_path), device, "running"
    state.save()
    where = f" on GPU {device}" if device is not None else ""
    tag = f"[{index}/{total} {member.run_name}]"
    print(f"{tag} running {member.label}"
          + (f" on {member.data}" if member.data else "") + f", seed {member.seed}{where} "
          f"({state.progress(n_workers)}); log: {log_path}", file=out, flush=True)
    env = dict(os.environ)
    env.pop("CNF_RUN_NAME", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    t0 = time.perf_counter()
    lines: list[str] = []
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(member.command) + "\n")
        try:
            proc = subprocess.Popen(member.command, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env=env, bufsize=1)
        except OSError as exc:
            member.status, member.error = "failed", f"could not start: {exc}"
            state.save()
            return
        assert proc.stdout is not None
        for raw in proc.stdout:
            # tqdm (TTY mode) rewrites lines with \r; keep the last state of each
            line = raw.rstrip("\n").split("\r")[-1]
            log.write(line + "\n")
            lines.append(line)
            if len(lines) > 400:
                del lines[:200]
            if echo and _ECHO.match(line):
                print(f"{tag} {line}", file=out, flush=True)
        member.returncode = proc.wait()
    member.elapsed_s = round(time.perf_counter() - t0, 2)
    if member.returncode == 0 and finished(run_dir):
        member.status, member.error = "finished", None
        state.durations.append(member.elapsed_s)
    else:
        member.status = "failed"
        member.error = _error_from(member, lines)
    state.save()
    verdict = "finished" if member.status == "finished" else f"FAILED: {member.error}"
    print(f"{tag} {verdict} in {_fmt_s(member.elapsed_s)} ({state.progress(n_workers)})",
          file=out, flush=True)


def run_suite(suite: Suite, members: list[Member], *, gpus: list[str] | None = None,
              echo: bool = True, out: Any = None) -> list[Member]:
    """Run the members not finished yet, one per GPU in ``gpus`` (or one at a time without
    GPUs), and record them in ``runs/<suite>/suite.json``. Returns ``members`` updated."""
    out = out or sys.stdout
    state = _State(suite, members)
    todo: queue.Queue[tuple[int, Member]] = queue.Queue()
    for i, m in enumerate(members, 1):
        if finished(m.run_dir):
            m.status = "skipped"
        else:
            todo.put((i, m))
    skipped = sum(m.status == "skipped" for m in members)
    workers: list[str | None] = list(gpus) if gpus else [None]
    budget = ", ".join(f"{k}={v}" for k, v in (("max_steps", suite.max_steps),
                                              ("max_time", suite.max_time)) if v is not None)
    print(f"cnf compare: suite {suite.name!r}: {len(members)} runs "
          f"({len(suite.members)} models x {len(suite.data)} datasets x {len(suite.seeds)} seeds)"
          + (f", budget {budget}" if budget else "")
          + (f"; {skipped} already finished (skipped)" if skipped else "")
          + (f"; one run per GPU on {len(workers)} GPUs" if gpus else "; one run at a time"),
          file=out, flush=True)
    for note in suite.left_out:
        print(f"cnf compare: left out {note}", file=out, flush=True)
    state.save()

    def worker(device: str | None) -> None:
        while True:
            try:
                i, m = todo.get_nowait()
            except queue.Empty:
                return
            _run_member(m, i, len(members), state, device, len(workers), echo, out)

    try:
        if len(workers) == 1:
            worker(workers[0])
        else:
            threads = [threading.Thread(target=worker, args=(d,), daemon=True) for d in workers]
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.5)
    except KeyboardInterrupt:
        # the runs got the same Ctrl-C (one process group); stop scheduling, keep the state
        for m in members:
            if m.status in ("running", "pending"):
                m.status = "pending"
        while not todo.empty():
            todo.get_nowait()
        state.save()
        print(f"\ncnf compare: interrupted; finished runs are kept in {suite.runs_dir}. Run the "
              f"same command again to resume.", file=out, flush=True)
        raise
    state.save()
    n_ok = sum(m.status in ("finished", "skipped") for m in members)
    print(f"cnf compare: {n_ok}/{len(members)} runs finished"
          + (f", {len(members) - n_ok} failed" if n_ok < len(members) else "")
          + f" in {_fmt_s(time.time() - state.started)}; state in {state.path}",
          file=out, flush=True)
    return members


# -- command line ------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cnf compare", description="Run every member of an experiment suite (resuming "
        "finished ones), then write the comparison report.")
    p.add_argument("suite", help="suite file, e.g. experiments/toy.yaml")
    p.add_argument("--max-steps", type=int, help="override the suite's budget.max_steps")
    p.add_argument("--max-time", help="override budget.max_time (DD:HH:MM:SS, 90s, 10m, 1h)")
    p.add_argument("--seeds", help="override the seeds, e.g. 0,1,2")
    p.add_argument("--only", help="comma-separated member names to run (e.g. toy_realnvp)")
    p.add_argument("--data", help="comma-separated dataset names to run")
    p.add_argument("--root", help="runs root (default: the suite's `root`, else runs)")
    p.add_argument("--out", help="report folder (default: reports/<suite>)")
    p.add_argument("--gpus", help="GPU ids to spread runs over, e.g. 0,1,2,3 (default: all "
                   "visible when more than one; 'none' runs one at a time)")
    p.add_argument("--wandb", choices=["offline", "online", "disabled"],
                   help="W&B mode of the runs (default: the suite's, else offline)")
    p.add_argument("--no-report", action="store_true", help="run the members only")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--quiet", action="store_true", help="do not echo the runs' progress lines")
    p.epilog = ("Arguments after `--` go to every member's `cnf fit`, e.g. "
                "`cnf compare experiments/toy.yaml -- --trainer.precision bf16-mixed`.")
    return p


def _select(items: list[Path] | list[Path | None], wanted: str | None, what: str,
            names: list[str | None]) -> list:
    if not wanted:
        return items
    keep = [w.strip() for w in wanted.split(",") if w.strip()]
    unknown = [w for w in keep if w not in names]
    if unknown:
        raise ConfigError(f"--{what} {','.join(unknown)}: not in this suite; it has "
                          f"{', '.join(str(n) for n in names)}")
    return [it for it, n in zip(items, names) if n in keep]


def main(argv: list[str] | None = None) -> int:
    """``cnf compare``; returns the exit status (0 when every run finished, 1 otherwise)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = _parser().parse_args(argv)
    suite = load_suite(args.suite)
    if args.max_steps is not None:
        if args.max_steps <= 0:
            raise ConfigError("--max-steps must be positive")
        suite.max_steps = args.max_steps
    if args.max_time:
        suite.max_time = parse_duration(args.max_time)
        if args.max_steps is None:
            suite.max_steps = None
    if args.seeds:
        try:
            suite.seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError as exc:
            raise ConfigError(f"--seeds takes integers separated by commas, got {args.seeds!r}") from exc
    if args.root:
        suite.root = Path(args.root)
    suite.members = _select(suite.members, args.only, "only", [p.stem for p in suite.members])
    suite.data = _select(suite.data, args.data, "data", [_data_name(d) for d in suite.data])
    members = plan(suite, wandb=args.wandb, extra_args=extra)
    if args.dry_run:
        for m in members:
            state = "finished, skip" if finished(m.run_dir) else "to run"
            print(f"# {m.run_name} ({state})\n" + shlex.join(m.command))
        return 0
    if args.gpus is None:
        gpus = detect_gpus()
        gpus = gpus if len(gpus) > 1 else []
    elif args.gpus.strip().lower() in ("none", "", "cpu"):
        gpus = []
    else:
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    run_suite(suite, members, gpus=gpus, echo=not args.quiet)
    if not args.no_report:
        from cnf.report import write_report

        out = Path(args.out) if args.out else (suite.report or Path("reports") / suite.name)
        paths = write_report(suite.runs_dir, out, title=f"cnf suite: {suite.name}",
                             description=suite.description)
        print(f"cnf compare: report {paths['html']} (also {paths['markdown']})")
    return 0 if all(m.status in ("finished", "skipped") for m in members) else 1
