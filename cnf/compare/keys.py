"""Budgets and run keys: when is a finished run "the run asked for"?

A run is keyed by its budget (``max_steps``, ``max_time``) and a hash of everything else it
was trained with (:func:`config_hash`: the ``cnf fit`` arguments and the text of every config
file they name). ``cnf compare`` writes the key into a finished run's summary
(``suite_key``); :func:`classify` compares a planned run with what is on disk, so a run with
another budget or configuration is never skipped silently.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from cnf.errors import ConfigError
from cnf.rundir import INTERRUPTED, RunDir

if TYPE_CHECKING:
    from cnf.compare.suite import Member, Suite

__all__ = ["RunKey", "parse_duration", "duration_seconds", "config_hash", "run_key",
           "classify", "resume_command", "TODO", "SKIP", "CONFLICT", "RESUME"]


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


def duration_seconds(duration: str) -> int:
    """``DD:HH:MM:SS`` (from :func:`parse_duration`) in seconds."""
    d, h, m, s = (int(p) for p in duration.split(":"))
    return ((d * 24 + h) * 60 + m) * 60 + s



# -- run keys: what makes a finished run "the same run" -----------------------------------
# options that change where a run is shown or logged, not what it trains
_NOT_HASHED = {"--run.wandb"}


@dataclass(frozen=True)
class RunKey:
    """A run's budget and a hash of everything else it was trained with."""

    max_steps: int | None
    max_time: str | None
    config_hash: str | None  # None: not recorded (a run from before keys existed)

    def as_dict(self) -> dict[str, Any]:
        return {"max_steps": self.max_steps, "max_time": self.max_time,
                "config_hash": self.config_hash}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunKey:
        return cls(d.get("max_steps"), d.get("max_time"), d.get("config_hash"))

    def budget(self) -> str:
        parts = [f"max_steps={self.max_steps}" if self.max_steps is not None else None,
                 f"max_time={self.max_time}" if self.max_time is not None else None]
        return ", ".join(p for p in parts if p) or "no budget"


def _yaml_files(text: str, base: Path) -> list[Path]:
    """YAML files a config refers to (``model: ../model/realnvp.yaml``), relative to ``base``
    or to the working directory."""
    try:
        node = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    found: list[Path] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str) and v.endswith((".yaml", ".yml")):
            for cand in (base / v, Path(v)):
                if cand.is_file():
                    found.append(cand)
                    break

    walk(node)
    return found


def config_hash(command: list[str]) -> str:
    """A short hash of a member's ``cnf fit`` arguments and of the text of every config file
    they name (followed through the files those configs refer to). The Python executable and
    the W&B mode do not count."""
    args = command[command.index("fit") + 1:] if "fit" in command else list(command[1:])
    h = hashlib.sha256()
    seen: set[Path] = set()
    skip_next = False
    for a in args:
        if skip_next:
            skip_next = False
            continue
        if a in _NOT_HASHED:
            skip_next = True
            continue
        h.update(a.encode() + b"\0")
        if a.endswith((".yaml", ".yml")) and Path(a).is_file():
            todo = [Path(a)]
            while todo:
                f = todo.pop()
                r = f.resolve()
                if r in seen:
                    continue
                seen.add(r)
                text = f.read_text()
                h.update(text.encode() + b"\0")
                todo.extend(_yaml_files(text, f.parent))
    return h.hexdigest()[:16]


def run_key(suite: Suite, command: list[str]) -> RunKey:
    """The key a run of ``command`` under ``suite``'s budget is recorded (and found) by."""
    return RunKey(suite.max_steps, suite.max_time, config_hash(command))


def _recorded_key(run: RunDir) -> RunKey:
    """The key a finished run was recorded with: ``suite_key`` in its summary (written by
    ``cnf compare``), else its budget read from its saved config."""
    recorded = run.read_summary().get("suite_key")
    if isinstance(recorded, dict):
        return RunKey.from_dict(recorded)
    try:
        trainer = (yaml.safe_load(run.config.read_text()) or {}).get("trainer") or {}
    except (OSError, yaml.YAMLError, AttributeError):
        trainer = {}
    steps = trainer.get("max_steps")
    steps = None if steps is None or int(steps) < 0 else int(steps)
    max_time = trainer.get("max_time")
    if isinstance(max_time, dict):
        max_time = parse_duration(
            sum(float(max_time.get(k, 0)) * m for k, m in
                (("days", 86400), ("hours", 3600), ("minutes", 60), ("seconds", 1))))
    elif max_time is not None:
        max_time = parse_duration(max_time)
    return RunKey(steps, max_time, None)


# what classify() says about a planned run
TODO, SKIP, CONFLICT, RESUME = "to run", "finished, skip", "conflict", "resume"


def classify(member: Member, recorded: dict[str, Any] | None = None) -> tuple[str, str]:
    """Whether ``member`` has to run: ``(TODO, why)``, ``(SKIP, why)`` when its run directory
    holds a finished run with the same key, or ``(CONFLICT, what differs)`` when it holds a
    finished run with another budget or configuration; such a run is never skipped silently.
    A run recorded without a config hash (before keys existed) is compared by budget only.

    ``(RESUME, why)``: the run was interrupted (Ctrl-C, SIGTERM) with a ``last.ckpt``, and
    ``recorded`` (what ``suite.json`` holds about it) says it was started with this key, so
    ``cnf fit --resume`` continues it instead of starting again."""
    run = RunDir(member.run_dir)
    if not run.is_finished:
        if (run.status == INTERRUPTED and run.checkpoint("last").exists()
                and recorded and recorded.get("key") == member.key):
            return RESUME, "interrupted with this budget and configuration: resume from last.ckpt"
        return TODO, ("an unfinished earlier attempt is moved aside" if run.exists else "new")
    want = RunKey.from_dict(member.key or {})
    have = _recorded_key(run)
    if have.config_hash is None:
        # budget read from the run's own config: compare what the suite sets
        same = all(w is None or w == h for w, h in ((want.max_steps, have.max_steps),
                                                    (want.max_time, have.max_time)))
        if not same:
            return CONFLICT, f"finished with {have.budget()}; the suite now asks {want.budget()}"
        return SKIP, "finished with this budget (recorded without a config hash)"
    if (have.max_steps, have.max_time) != (want.max_steps, want.max_time):
        return CONFLICT, f"finished with {have.budget()}; the suite now asks {want.budget()}"
    if have.config_hash != want.config_hash:
        return CONFLICT, ("finished with this budget but another configuration (config hash "
                          f"{have.config_hash}, now {want.config_hash}): a config file or an "
                          f"argument changed")
    return SKIP, "finished with this budget and configuration"


def resume_command(member: Member) -> list[str]:
    """``cnf fit --resume RUN_DIR`` with the Python of ``member``'s own command: the run's
    saved config, name and ``last.ckpt`` (see :mod:`cnf.cli`)."""
    return [member.command[0], "-m", "cnf", "fit", "--resume", member.run_dir]
