"""``cnf compare SUITE.yaml``: run every member of an experiment suite, then write the report.

Example::

    cnf compare experiments/toy.yaml --max-steps 300 --seeds 0
    cnf compare experiments/toy.yaml --only toy_realnvp --data 8gaussians --dry-run
    cnf compare experiments/digits.yaml --launcher slurm      # one SLURM job per run
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from cnf.compare.keys import CONFLICT, RESUME, classify, parse_duration, resume_command
from cnf.compare.suite import Suite, data_name, load_suite, plan
from cnf.errors import ConfigError

__all__ = ["main", "parser", "select"]

LAUNCHERS = ("local", "slurm", "submitit-local")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="cnf compare", description="Run every member of an experiment suite (skipping "
        "runs already finished with the same budget and configuration), then write the "
        "comparison report.")
    p.add_argument("suite", help="suite file, e.g. experiments/toy.yaml")
    p.add_argument("--max-steps", type=int, help="override the suite's budget.max_steps")
    p.add_argument("--max-time", help="override budget.max_time (DD:HH:MM:SS, 90s, 10m, 1h)")
    p.add_argument("--seeds", help="override the seeds, e.g. 0,1,2")
    p.add_argument("--only", help="comma-separated member names to run (e.g. toy_realnvp)")
    p.add_argument("--data", help="comma-separated dataset names to run")
    p.add_argument("--root", help="runs root (default: the suite's `root`, else runs)")
    p.add_argument("--out", help="report folder (default: reports/<suite>)")
    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="local: subprocesses on this machine (default); slurm: one SLURM job "
                   "per run with the suite's `resources` (needs the slurm extra, submitit); "
                   "submitit-local: the slurm path run here by submitit's local executor")
    p.add_argument("--no-wait", action="store_true",
                   help="with a job launcher: submit and exit; run again later to wait and "
                   "write the report")
    p.add_argument("--rerun-changed", action="store_true",
                   help="runs finished with another budget or configuration move to "
                   ".attempts/ (marked superseded) and run again (default: refuse, naming them)")
    p.add_argument("--gpus", help="local launcher: GPU ids to spread runs over, e.g. 0,1,2,3 "
                   "(default: all visible when more than one; 'none' runs one at a time)")
    p.add_argument("--wandb", choices=["offline", "online", "disabled"],
                   help="W&B mode of the runs (default: the suite's, else offline)")
    p.add_argument("--no-report", action="store_true", help="run the members only")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--quiet", action="store_true", help="do not echo the runs' progress lines")
    p.epilog = ("Arguments after `--` go to every member's `cnf fit`, e.g. "
                "`cnf compare experiments/toy.yaml -- --trainer.precision bf16-mixed`.")
    return p


def select(items: list, wanted: str | None, what: str, names: list[str | None]) -> list:
    """The ``items`` whose name is in the comma-separated ``wanted`` (all when empty)."""
    if not wanted:
        return items
    keep = [w.strip() for w in wanted.split(",") if w.strip()]
    unknown = [w for w in keep if w not in names]
    if unknown:
        raise ConfigError(f"--{what} {','.join(unknown)}: not in this suite; it has "
                          f"{', '.join(str(n) for n in names)}")
    return [it for it, n in zip(items, names) if n in keep]


def _apply(args: argparse.Namespace, suite: Suite) -> None:
    """Command-line overrides of the suite file."""
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
    suite.members = select(suite.members, args.only, "only", [p.stem for p in suite.members])
    suite.data = select(suite.data, args.data, "data", [data_name(d) for d in suite.data])


def _gpus(spec: str | None) -> list[str]:
    from cnf.compare.runner import detect_gpus

    if spec is None:
        gpus = detect_gpus()
        return gpus if len(gpus) > 1 else []
    if spec.strip().lower() in ("none", "", "cpu"):
        return []
    return [g.strip() for g in spec.split(",") if g.strip()]


def main(argv: list[str] | None = None) -> int:
    """``cnf compare``; returns the exit status (0 when every run finished, 1 otherwise)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1:]
    args = parser().parse_args(argv)
    suite = load_suite(args.suite)
    _apply(args, suite)
    members = plan(suite, wandb=args.wandb, extra_args=extra)
    if args.dry_run:
        from cnf.compare.runner import SuiteState

        recorded = SuiteState(suite, members).recorded
        for m in members:
            verdict, why = classify(m, recorded(m.run_name))
            state = f"CONFLICT: {why}" if verdict == CONFLICT else verdict
            command = resume_command(m) if verdict == RESUME else m.command
            print(f"# {m.run_name} ({state})\n" + shlex.join(command))
        return 0
    from cnf.compare.runner import LocalLauncher, run_suite

    if args.launcher == "local":
        launcher = LocalLauncher(_gpus(args.gpus), echo=not args.quiet)
    else:
        from cnf.compare.slurm import CLUSTERS, SubmititLauncher

        launcher = SubmititLauncher(suite, CLUSTERS[args.launcher], wait=not args.no_wait,
                                    poll_s=2.0 if args.launcher != "slurm" else 15.0)
    run_suite(suite, members, launcher=launcher, replace=args.rerun_changed)
    if any(m.status == "submitted" for m in members):
        return 0  # --no-wait: the report comes when the jobs have finished
    if not args.no_report:
        from cnf.report import write_report

        out = Path(args.out) if args.out else (suite.report or Path("reports") / suite.name)
        paths = write_report(suite.runs_dir, out, title=f"cnf suite: {suite.name}",
                             description=suite.description)
        print(f"cnf compare: report {paths['html']} (also {paths['markdown']})")
    return 0 if all(m.status in ("finished", "skipped") for m in members) else 1
