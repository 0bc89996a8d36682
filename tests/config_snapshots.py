"""Resolved experiment configs, as ``cnf fit --config X --print_config`` prints them.

``tests/test_config_snapshots.py`` compares every experiment's resolved config with the
snapshot in ``tests/resolved_configs/<experiment>.yaml``, so rewriting a config file (say,
to hold only overrides of ``configs/model/*.yaml``) cannot silently change an experiment.

After an intended change of an experiment, regenerate its snapshot and commit it::

    python -m tests.config_snapshots --update [EXPERIMENT ...]   # all when none is named
    python -m tests.config_snapshots                              # only report differences
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "configs" / "experiment"
SNAPSHOTS = Path(__file__).resolve().parent / "resolved_configs"


def experiments() -> list[str]:
    return sorted(p.stem for p in EXPERIMENTS.glob("*.yaml"))


def resolve(name: str) -> dict[str, Any]:
    """The resolved config of experiment ``name`` (``cnf fit --print_config``) as a dict."""
    from cnf.cli import run

    out = io.StringIO()
    argv = sys.argv
    sys.argv = argv[:1]  # LightningCLI would also look at this process's own arguments
    try:
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            run(["fit", "--config", str(EXPERIMENTS / f"{name}.yaml"), "--print_config"])
    finally:
        sys.argv = argv
    return yaml.safe_load(out.getvalue())


def snapshot(name: str) -> dict[str, Any] | None:
    path = SNAPSHOTS / f"{name}.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else None


def write(name: str, cfg: dict[str, Any]) -> None:
    SNAPSHOTS.mkdir(exist_ok=True)
    (SNAPSHOTS / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.config_snapshots", description=__doc__)
    ap.add_argument("names", nargs="*", help="experiments (default: every configs/experiment file)")
    ap.add_argument("--update", action="store_true", help="write the snapshots")
    args = ap.parse_args(argv)
    changed = 0
    for name in args.names or experiments():
        cfg = resolve(name)
        if cfg != snapshot(name):
            changed += 1
            print(f"{'updated' if args.update else 'differs'}: {name}")
            if args.update:
                write(name, cfg)
    print(f"{changed} of {len(args.names or experiments())} differ from their snapshot")
    return 0 if args.update or not changed else 1


if __name__ == "__main__":
    sys.exit(main())
