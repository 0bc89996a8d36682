"""Comparison reports from finished runs: ``cnf report RUNS_DIR --out reports/<name>``.

Reads only local run files (``summary.json``, ``metrics.csv``, ``config.yaml``, ``plots/``),
so it works offline; writes ``report.md`` with ``figures/*.png`` and one self-contained
``report.html``. ``--wandb`` also builds the comparison as a W&B Report (written as
``wandb_report.json``) and saves it when a key and a server are available, saying why not
otherwise.

Example::

    cnf report runs/toy --out reports/toy
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

__all__ = ["write_report", "load_runs", "group_runs", "Run", "Group", "main"]

# imported on first use, so `cnf report --help` (and `import cnf.report`) stay light
_LAZY = {"write_report": "cnf.report.render", "load_runs": "cnf.report.runs",
         "group_runs": "cnf.report.runs", "Run": "cnf.report.runs", "Group": "cnf.report.runs"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cnf.report' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


def main(argv: list[str] | None = None) -> int:
    """``cnf report``; returns the exit status."""
    p = argparse.ArgumentParser(prog="cnf report", description="Write a comparison report "
                                "(Markdown, PNG figures, self-contained HTML) from finished runs.")
    p.add_argument("runs_dir", help="folder holding run directories, e.g. runs/toy")
    p.add_argument("--out", help="output folder (default: reports/<name of RUNS_DIR>)")
    p.add_argument("--title", help="report title")
    p.add_argument("--wandb", action="store_true",
                   help="also build the comparison as a W&B Report (wandb_report.json in "
                        "--out) and save it when wandb-workspaces, a key and a server are "
                        "available")
    p.add_argument("--project", default="cnf", help="W&B project of the runs (with --wandb)")
    p.add_argument("--entity", default=None, help="W&B entity (with --wandb)")
    args = p.parse_args(argv)
    from cnf.report.render import write_report
    from cnf.report.runs import load_runs

    runs_dir = Path(args.runs_dir)
    out = Path(args.out) if args.out else Path("reports") / runs_dir.resolve().name
    title = args.title or f"cnf comparison: {runs_dir.resolve().name}"
    paths = write_report(runs_dir, out, title=title)
    print(f"cnf report: {paths['html']}\n  markdown  {paths['markdown']}\n  figures   {paths['figures']}")
    if args.wandb:
        from cnf.report.wandb_report import write_and_publish

        write_and_publish(load_runs(runs_dir), out, project=args.project, entity=args.entity,
                          title=title)
    return 0
