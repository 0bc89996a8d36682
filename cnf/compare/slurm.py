"""``cnf compare --launcher slurm``: one SLURM job per (member, dataset, seed), via submitit.

Each job runs the member's ``cnf fit`` command on the node SLURM gives it (same command,
same run directory as the local launcher, so runs look the same either way), writes the
run's key into its summary when it finished, and returns the outcome. ``cnf compare`` waits
for the jobs, printing progress, and records them in ``runs/<suite>/suite.json`` with their
job ids; submitit's own files (the pickled job, SLURM's stdout/stderr) go to
``runs/<suite>/slurm/<job id>/``.

Resources come from the suite's ``resources`` mapping (:func:`slurm_parameters`). The run
directory must be on a file system the nodes share (as on every SLURM cluster), and the
Python that runs ``cnf compare`` must exist on the nodes (the job uses the same path).

``--launcher submitit-local`` runs the same jobs through submitit's local executor on this
machine: a way to try a suite's SLURM set-up without a cluster (and what the tests use).

Needs the ``slurm`` extra: ``pip install 'cnf[slurm]'`` (submitit).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from cnf.compare.keys import duration_seconds, parse_duration
from cnf.compare.runner import SuiteState, error_from, execute, finish_run, fmt_s, log_path
from cnf.compare.suite import Member, Suite
from cnf.errors import ConfigError

__all__ = ["SubmititLauncher", "slurm_parameters", "run_job", "CLUSTERS"]

# --launcher value -> submitit cluster
CLUSTERS = {"slurm": "slurm", "submitit-local": "local", "submitit-debug": "debug"}
# SLURM job states in which a job still runs or will run (a re-run of compare waits on them)
_ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
           "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED"}
_MARGIN_S = 600  # job time limit beyond budget.max_time, for start-up, testing and saving

_GENERIC = {"gpus": "gpus_per_node", "cpus": "cpus_per_task", "mem_gb": "mem_gb",
            "nodes": "nodes", "tasks_per_node": "tasks_per_node"}
_SLURM = {"partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
          "constraint": "slurm_constraint"}


def slurm_parameters(resources: dict[str, Any], max_time: str | None = None,
                     cluster: str = "slurm") -> dict[str, Any]:
    """submitit ``AutoExecutor.update_parameters`` arguments for a suite's ``resources``.

    The job's time limit is ``resources.time``, else the run budget ``max_time`` plus 10
    minutes; on a real cluster one of them is required (SLURM's default limit, or submitit's
    5 minutes, would kill runs mid-way).

    >>> slurm_parameters({"gpus": 1, "cpus": 4, "time": "00:02:00:00", "partition": "gpu",
    ...                   "slurm": {"exclude": "n17"}})
    {'timeout_min': 120, 'gpus_per_node': 1, 'cpus_per_task': 4, 'slurm_partition': 'gpu', 'slurm_exclude': 'n17'}
    """
    params: dict[str, Any] = {}
    if resources.get("time"):
        seconds = duration_seconds(parse_duration(resources["time"]))
    elif max_time:
        seconds = duration_seconds(max_time) + _MARGIN_S
    elif cluster == "slurm":
        raise ConfigError(
            "--launcher slurm needs a time limit per job: set `resources: {time: 2h}` in the "
            "suite (or a budget.max_time, which adds 10 minutes)")
    else:
        seconds = None
    if seconds is not None:
        params["timeout_min"] = max(1, math.ceil(seconds / 60))
    for key, name in {**_GENERIC, **_SLURM}.items():
        if resources.get(key) is not None:
            params[name] = resources[key]
    for key, value in (resources.get("slurm") or {}).items():
        params[f"slurm_{key}"] = value
    return params


def _rank() -> int:
    """This task's global rank inside a submitit job (0 outside one)."""
    for var in ("SUBMITIT_GLOBAL_RANK", "SLURM_PROCID", "SUBMITIT_LOCAL_GLOBALID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def run_job(member: Member, log: str) -> dict[str, Any]:
    """The function each job runs (on the node): the member's ``cnf fit``, its log, its key.

    With several tasks per job (multi-GPU DDP under SLURM) every task runs the command
    (Lightning takes the ranks from SLURM) and rank 0 records the outcome."""
    rank = _rank()
    if rank:
        log = f"{log[:-4] if log.endswith('.log') else log}.rank{rank}.log"
    code, elapsed, lines = execute(member.command, log)
    ok = finish_run(member, code) if rank == 0 else code == 0
    return {"returncode": code, "elapsed_s": round(elapsed, 2),
            "error": None if ok else error_from(member.run_dir, lines, code)}


class SubmititLauncher:
    """One submitit job per member; waits for them unless ``wait`` is false."""

    def __init__(self, suite: Suite, cluster: str = "slurm", *, wait: bool = True,
                 poll_s: float = 15.0):
        try:
            import submitit
        except ImportError as exc:
            raise ConfigError("--launcher slurm needs submitit: pip install 'cnf[slurm]' "
                              "(or `pip install submitit`)") from exc
        self.suite, self.cluster, self.wait, self.poll_s = suite, cluster, wait, poll_s
        self.folder = suite.runs_dir / "slurm"
        self.executor = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=cluster)
        params = slurm_parameters(suite.resources, suite.max_time, cluster)
        try:
            self.executor.update_parameters(**params)
        except (NameError, ValueError, AssertionError) as exc:
            raise ConfigError(f"suite {suite.path}: submitit refused the resources "
                              f"{params}: {exc}") from exc
        self.n_workers = 1  # for the ETA: the jobs in flight (set in launch)
        what = {"slurm": "SLURM", "local": "submitit's local executor",
                "debug": "submitit's debug executor"}.get(cluster, cluster)
        self.description = f"one job per run on {what}"

    def in_flight(self, recorded: dict[str, Any]) -> str | None:
        """The job id of an earlier submission of this run that is still queued or running
        (a re-run of ``cnf compare`` waits on it instead of submitting it again)."""
        job_id = recorded.get("job_id")
        if recorded.get("status") != "submitted" or not job_id:
            return None
        try:
            return str(job_id) if self._job(str(job_id)).state.upper() in _ACTIVE else None
        except Exception:  # sacct unavailable: submit again (the run's lock refuses doubles)
            return None

    def _job(self, job_id: str) -> Any:
        """A handle on an earlier job by its id (a local job of another process never reads
        as running, so it is submitted again)."""
        import submitit

        job_class = submitit.SlurmJob if self.cluster == "slurm" else submitit.LocalJob
        return job_class(folder=str(self.folder / "%j"), job_id=job_id)

    def launch(self, todo: list[tuple[int, Member]], state: SuiteState, out: Any) -> None:
        total = len(state.members)
        self.n_workers = max(1, len(todo))  # the scheduler decides; assume all run at once
        jobs: list[tuple[str, Member, Any]] = []
        for i, m in todo:
            tag = f"[{i}/{total} {m.run_name}]"
            m.log = str(log_path(self.suite, m))
            Path(m.log).parent.mkdir(parents=True, exist_ok=True)
            if m.job_id and m.status == "submitted":
                job = self._job(m.job_id)
                print(f"{tag} job {m.job_id} still in the queue or running: waiting for it",
                      file=out, flush=True)
            else:
                self.executor.update_parameters(name=f"cnf-{self.suite.name}-{m.run_name}")
                job = self.executor.submit(run_job, m, m.log)
                m.job_id, m.status = str(job.job_id), "submitted"
                print(f"{tag} submitted job {m.job_id}; log: {m.log}", file=out, flush=True)
            jobs.append((tag, m, job))
        state.save()
        if not self.wait or not jobs:
            if jobs:
                print(f"cnf compare: {len(jobs)} job(s) submitted; run the same command again "
                      f"to wait for them and write the report", file=out, flush=True)
            return
        try:
            while jobs:
                for item in list(jobs):
                    tag, m, job = item
                    if not job.done():
                        continue
                    jobs.remove(item)
                    self._collect(tag, m, job, state, out)
                if jobs:
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            ids = " ".join(m.job_id or "" for _, m, _ in jobs)
            print(f"\ncnf compare: stopped waiting; {len(jobs)} job(s) keep running ({ids}). "
                  f"Run the same command again to wait for them (scancel {ids} stops them).",
                  file=out, flush=True)
            raise

    def _collect(self, tag: str, m: Member, job: Any, state: SuiteState, out: Any) -> None:
        try:
            result = job.result()
        except Exception as exc:  # the job died (time limit, node failure, cancelled)
            first = str(exc).strip().splitlines()[:3]
            result = {"returncode": None, "elapsed_s": None,
                      "error": f"job {m.job_id} ended without a result: {' '.join(first)} "
                               f"(SLURM output in {self.folder / str(m.job_id)})"}
        state.record(m, result["returncode"], result["elapsed_s"], result["error"])
        verdict = "finished" if m.status == "finished" else f"FAILED: {m.error}"
        took = f" in {fmt_s(m.elapsed_s)}" if m.elapsed_s is not None else ""
        print(f"{tag} {verdict}{took} ({state.progress(self.n_workers)})", file=out, flush=True)
