"""Shared test helpers: run the cnf CLI in-process on a temporary run root."""

from __future__ import annotations

import json
from pathlib import Path

from cnf.cli import run

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "configs" / "experiment"


def run_cli(tmp_path: Path, subcommand: str, config: str | Path, *args: str, name: str = "t"):
    """``cnf <subcommand> --config <config> ...`` with runs under ``tmp_path/runs``; returns
    the CLI object (``cli.run_dir`` is the run directory)."""
    config = Path(config)
    if not config.is_absolute() and not config.exists():
        config = EXPERIMENTS / f"{config}.yaml"
    argv = [subcommand, "--config", str(config), "--run.root", str(tmp_path / "runs"),
            "--run.wandb", "disabled", "--trainer.enable_progress_bar", "false"]
    if name:
        argv += ["--run.name", name]
    return run(argv + list(args))


def summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())
