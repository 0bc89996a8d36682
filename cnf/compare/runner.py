"""Running a planned suite: which runs go, on what, and the suite's state and ETA.

:func:`run_suite` takes the members :func:`cnf.compare.suite.plan` made, skips those whose
run directory holds a finished run with the same key, refuses (or, when asked, replaces)
those finished with another budget or configuration, and hands the rest to a launcher:

- :class:`LocalLauncher` (default): one ``cnf fit`` subprocess at a time, or one per GPU
  (``CUDA_VISIBLE_DEVICES`` per run) when several GPUs are given;
- :class:`cnf.compare.slurm.SubmititLauncher`: one SLURM job per run through submitit.

Both record every member in ``runs/<suite>/suite.json`` (status, error, log, device or job
id) and print progress with an ETA; a failed member is recorded and the suite goes on.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from cnf.compare.keys import CONFLICT, RESUME, SKIP, classify, resume_command
from cnf.compare.suite import Member, Suite
from cnf.errors import ConfigError
from cnf.rundir import RunDir, write_json_atomic

__all__ = ["run_suite", "LocalLauncher", "Launcher", "SuiteState", "detect_gpus", "execute",
           "finish_run", "fmt_s"]

# lines of a member's output echoed by `cnf compare` (the rest goes to its log file)
_ECHO = re.compile(r"^(\[(fit|validate|test|predict)\] (?!validation)|cnf: error|Traceback|\w+Error:)")


def detect_gpus() -> list[str]:
    """Visible CUDA devices (``CUDA_VISIBLE_DEVICES`` entries when set), else none. On a
    machine without the NVIDIA driver this answers without importing torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not os.path.exists("/proc/driver/nvidia") and shutil.which("nvidia-smi") is None:
        return []
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


def fmt_s(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h10m``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class SuiteState:
    """``runs/<suite>/suite.json``: the members, their status and errors (thread-safe), and
    the progress line with an ETA from the durations of the runs finished so far."""

    def __init__(self, suite: Suite, members: list[Member]):
        self.suite = suite
        self.members = members
        self.path = suite.runs_dir / "suite.json"
        self.lock = threading.Lock()
        self.started = time.time()
        self.durations: list[float] = []
        # members recorded by earlier invocations (e.g. with --only) are kept
        try:
            self.previous: list[dict[str, Any]] = json.loads(self.path.read_text()).get("members", [])
        except (OSError, json.JSONDecodeError, AttributeError):
            self.previous = []

    def recorded(self, run_name: str) -> dict[str, Any]:
        """What an earlier invocation recorded about ``run_name`` (``{}`` if nothing)."""
        for p in self.previous:
            if isinstance(p, dict) and p.get("run_name") == run_name:
                return p
        return {}

    def _merged(self) -> list[dict[str, Any]]:
        current = {m.run_name: asdict(m) for m in self.members}
        out = [current.pop(p.get("run_name"), p) for p in self.previous if isinstance(p, dict)]
        return out + list(current.values())

    def save(self) -> None:
        with self.lock:
            write_json_atomic(self.path, {
                "suite": self.suite.name, "suite_file": str(self.suite.path),
                "description": self.suite.description,
                "budget": {"max_steps": self.suite.max_steps, "max_time": self.suite.max_time},
                "seeds": self.suite.seeds,
                "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "members": self._merged(),
            })

    def progress(self, n_workers: int) -> str:
        done = sum(m.status in ("finished", "failed", "skipped") for m in self.members)
        failed = sum(m.status == "failed" for m in self.members)
        todo = sum(m.status in ("pending", "running", "submitted") for m in self.members)
        elapsed = time.time() - self.started
        eta = ""
        if self.durations and todo:
            mean = sum(self.durations) / len(self.durations)
            eta = f", ETA ~{fmt_s(mean * todo / max(n_workers, 1))}"
        return (f"suite {done}/{len(self.members)} done"
                + (f", {failed} failed" if failed else "") + f", {fmt_s(elapsed)} elapsed{eta}")

    def record(self, member: Member, returncode: int | None, elapsed: float | None,
               error: str | None) -> None:
        """Set ``member``'s outcome (finished when its run says so) and save."""
        member.returncode = returncode
        member.elapsed_s = None if elapsed is None else round(elapsed, 2)
        if returncode == 0 and RunDir(member.run_dir).is_finished:
            member.status, member.error = "finished", None
            if member.elapsed_s is not None:
                self.durations.append(member.elapsed_s)
        else:
            member.status, member.error = "failed", error or f"exit status {returncode}"
        self.save()


# -- one run -------------------------------------------------------------------------------
def error_from(run_dir: str | Path, log_lines: list[str], returncode: int | None) -> str:
    """The error a failed run reports: its summary's ``error``, else the ``cnf: error:`` lines
    of its output, else the last lines."""
    err = RunDir(run_dir).read_summary().get("error")
    if err:
        return str(err)
    for i in range(len(log_lines) - 1, -1, -1):
        if log_lines[i].startswith("cnf: error:"):
            text = " ".join(ln.strip() for ln in log_lines[i:i + 12] if ln.strip())
            text = text.removeprefix("cnf: error:").strip()
            return text if len(text) <= 800 else text[:797] + "..."
    tail = [ln for ln in log_lines if ln.strip()][-5:]
    return " | ".join(tail) if tail else f"exit status {returncode}"


def execute(command: list[str], log_path: str | Path, *, device: str | None = None,
            on_line: Callable[[str], None] | None = None) -> tuple[int, float, list[str]]:
    """Run ``command`` with its output in ``log_path``; ``on_line`` sees every line.
    Returns ``(exit status, seconds, last lines)``; a command that cannot start gives 127."""
    env = dict(os.environ)
    env.pop("CNF_RUN_NAME", None)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    t0 = time.perf_counter()
    lines: list[str] = []
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        log.write("$ " + " ".join(command) + "\n")
        try:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, env=env, bufsize=1)
        except OSError as exc:
            log.write(f"could not start: {exc}\n")
            return 127, time.perf_counter() - t0, [f"could not start: {exc}"]
        assert proc.stdout is not None
        for raw in proc.stdout:
            # tqdm (TTY mode) rewrites lines with \r; keep the last state of each
            line = raw.rstrip("\n").split("\r")[-1]
            log.write(line + "\n")
            lines.append(line)
            if len(lines) > 400:
                del lines[:200]
            if on_line is not None:
                on_line(line)
        returncode = proc.wait()
    return returncode, time.perf_counter() - t0, lines


def finish_run(member: Member, returncode: int) -> bool:
    """After a run: when it finished, write its key into its summary (``suite_key``) so a
    later ``cnf compare`` knows its budget and configuration. Returns whether it finished."""
    run = RunDir(member.run_dir)
    if returncode != 0 or not run.is_finished:
        return False
    if member.key is not None:
        run.update_summary(suite_key=member.key)
    return True


def log_path(suite: Suite, member: Member) -> Path:
    return suite.runs_dir / "logs" / f"{member.run_name}.log"


def _move_aside(suite: Suite, member: Member, why: str) -> Path | None:
    """Move an existing run directory to ``runs/<suite>/.attempts/<run>-<stamp>-<why>``
    (kept for inspection; reports leave ``.attempts`` out)."""
    run_dir = Path(member.run_dir)
    if not run_dir.exists():
        return None
    stamp = f"{_dt.datetime.now():%Y%m%d-%H%M%S}"
    target = suite.runs_dir / ".attempts" / f"{member.run_name}-{stamp}-{why}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(run_dir), str(target))
    return target


# -- launchers -----------------------------------------------------------------------------
class Launcher(Protocol):
    """Runs the members a suite still needs; records each outcome in ``state``."""

    description: str
    n_workers: int

    def launch(self, todo: list[tuple[int, Member]], state: SuiteState, out: Any) -> None: ...


class LocalLauncher:
    """``cnf fit`` subprocesses on this machine: one at a time, or one per GPU in ``gpus``."""

    def __init__(self, gpus: list[str] | None = None, echo: bool = True):
        self.gpus = list(gpus or [])
        self.echo = echo
        self.n_workers = max(len(self.gpus), 1)
        self.description = (f"one run per GPU on {len(self.gpus)} GPUs" if self.gpus
                            else "one run at a time")

    def _run(self, member: Member, index: int, total: int, state: SuiteState,
             device: str | None, out: Any) -> None:
        log = log_path(state.suite, member)
        member.log, member.device, member.status = str(log), device, "running"
        state.save()
        tag = f"[{index}/{total} {member.run_name}]"
        where = f" on GPU {device}" if device is not None else ""
        print(f"{tag} running {member.label}" + (f" on {member.data}" if member.data else "")
              + f", seed {member.seed}{where} ({state.progress(self.n_workers)}); log: {log}",
              file=out, flush=True)

        def echo(line: str) -> None:
            if self.echo and _ECHO.match(line):
                print(f"{tag} {line}", file=out, flush=True)

        code, elapsed, lines = execute(member.command, log, device=device, on_line=echo)
        finish_run(member, code)
        state.record(member, code, elapsed, error_from(member.run_dir, lines, code))
        verdict = "finished" if member.status == "finished" else f"FAILED: {member.error}"
        print(f"{tag} {verdict} in {fmt_s(elapsed)} ({state.progress(self.n_workers)})",
              file=out, flush=True)

    def launch(self, todo: list[tuple[int, Member]], state: SuiteState, out: Any) -> None:
        items: queue.Queue[tuple[int, Member]] = queue.Queue()
        for item in todo:
            items.put(item)
        total = len(state.members)

        def worker(device: str | None) -> None:
            while True:
                try:
                    i, m = items.get_nowait()
                except queue.Empty:
                    return
                self._run(m, i, total, state, device, out)

        workers: list[str | None] = list(self.gpus) or [None]
        try:
            if len(workers) == 1:
                worker(workers[0])
            else:
                threads = [threading.Thread(target=worker, args=(d,), daemon=True)
                           for d in workers]
                for t in threads:
                    t.start()
                for t in threads:
                    while t.is_alive():
                        t.join(0.5)
        except KeyboardInterrupt:
            # the runs got the same Ctrl-C (one process group): stop scheduling
            while not items.empty():
                items.get_nowait()
            raise


# -- the suite -------------------------------------------------------------------------------
def check_keys(members: list[Member], *, replace: bool = False) -> list[tuple[Member, str]]:
    """Members whose run directory holds a finished run with another key. Without
    ``replace`` they are refused with a :class:`ConfigError` naming each and the ways out."""
    conflicts = []
    for m in members:
        verdict, why = classify(m)
        if verdict == CONFLICT:
            conflicts.append((m, why))
    if conflicts and not replace:
        lines = "\n".join(f"  {m.run_dir}: {why}" for m, why in conflicts[:20])
        more = f"\n  ... and {len(conflicts) - 20} more" if len(conflicts) > 20 else ""
        raise ConfigError(
            f"{len(conflicts)} run(s) of this suite already finished with another budget or "
            f"configuration, so they are not the runs asked for:\n{lines}{more}\n"
            f"Keep both: give this budget its own folder (--root runs/<other>). Replace them: "
            f"--rerun-changed (the old runs move to .attempts/ in the suite folder, which reports leave out). Or run "
            f"with the budget they were made with.")
    return conflicts


def _refuse_submitted(state: SuiteState, members: list[Member]) -> None:
    """A launcher that cannot see jobs must not start runs a job launcher submitted and
    that have not finished (it would move their run directories from under them)."""
    jobs = [(m, state.recorded(m.run_name).get("job_id")) for m in members
            if state.recorded(m.run_name).get("status") == "submitted"
            and not RunDir(m.run_dir).is_finished]
    if jobs:
        listed = ", ".join(f"{m.run_name} (job {job})" for m, job in jobs[:10])
        raise ConfigError(
            f"{len(jobs)} run(s) of this suite were submitted as jobs and have not finished: "
            f"{listed}. Run with the launcher that submitted them (e.g. --launcher slurm): it "
            f"waits for jobs still queued or running and resubmits those that ended.")


def run_suite(suite: Suite, members: list[Member], *, gpus: list[str] | None = None,
              echo: bool = True, out: Any = None, launcher: Launcher | None = None,
              replace: bool = False) -> list[Member]:
    """Run the members not finished yet with ``launcher`` (default: :class:`LocalLauncher`
    over ``gpus``) and record them in ``runs/<suite>/suite.json``. A finished run with the
    same key is skipped; one with another key is refused (:func:`check_keys`) unless
    ``replace``, which moves it aside and runs again. Returns ``members`` updated."""
    out = out or sys.stdout
    launcher = launcher or LocalLauncher(gpus, echo=echo)
    conflicts = {m.run_name for m, _ in check_keys(members, replace=replace)}
    state = SuiteState(suite, members)
    in_flight = getattr(launcher, "in_flight", None)
    if in_flight is None:
        _refuse_submitted(state, members)
    todo: list[tuple[int, Member]] = []
    resumed = 0
    for i, m in enumerate(members, 1):
        verdict = classify(m, state.recorded(m.run_name))[0]
        if m.run_name in conflicts:
            _move_aside(suite, m, "superseded")
        elif verdict == SKIP:
            m.status = "skipped"
            continue
        elif verdict == RESUME:
            m.command, m.status = resume_command(m), "pending"  # continue it in place
            todo.append((i, m))
            resumed += 1
            continue
        elif in_flight is not None and (job_id := in_flight(state.recorded(m.run_name))):
            m.status, m.job_id = "submitted", job_id  # an earlier submission still runs it
            todo.append((i, m))
            continue
        else:
            _move_aside(suite, m, "attempt")  # an unfinished attempt: keep it, start clean
        m.status = "pending"
        todo.append((i, m))
    skipped = sum(m.status == "skipped" for m in members)
    budget = ", ".join(f"{k}={v}" for k, v in (("max_steps", suite.max_steps),
                                              ("max_time", suite.max_time)) if v is not None)
    print(f"cnf compare: suite {suite.name!r}: {len(members)} runs "
          f"({len(suite.members)} models x {len(suite.data)} datasets x {len(suite.seeds)} seeds)"
          + (f", budget {budget}" if budget else "")
          + (f"; {skipped} already finished (skipped)" if skipped else "")
          + (f"; {resumed} interrupted (resumed)" if resumed else "")
          + (f"; {len(conflicts)} finished with another budget or config (replaced)"
             if conflicts else "")
          + f"; {launcher.description}", file=out, flush=True)
    for note in suite.left_out:
        print(f"cnf compare: left out {note}", file=out, flush=True)
    state.save()
    try:
        launcher.launch(todo, state, out)
    except KeyboardInterrupt:
        for m in members:
            if m.status in ("running", "pending"):
                m.status = "pending"
        state.save()
        print(f"\ncnf compare: interrupted; finished runs are kept in {suite.runs_dir}. Run the "
              f"same command again to resume.", file=out, flush=True)
        raise
    state.save()
    n_ok = sum(m.status in ("finished", "skipped") for m in members)
    waiting = sum(m.status == "submitted" for m in members)
    print(f"cnf compare: {n_ok}/{len(members)} runs finished"
          + (f", {waiting} submitted" if waiting else "")
          + (f", {len(members) - n_ok - waiting} failed" if n_ok + waiting < len(members) else "")
          + f" in {fmt_s(time.time() - state.started)}; state in {state.path}",
          file=out, flush=True)
    return members
