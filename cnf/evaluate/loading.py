"""Rebuilding a finished run for evaluation: its model and data from the resolved config,
its weights from a checkpoint loaded weights-only (:func:`cnf.checkpoint.load_checkpoint`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnf.errors import DataError
from cnf.rundir import RunDir

__all__ = ["load_run", "output_dir"]


def load_run(run_dir: str | Path, checkpoint: str = "best",
             trust: bool = False) -> tuple[Any, Any]:
    """``(LightningModule, LightningDataModule)`` of the run in ``run_dir``, rebuilt from its
    resolved config with the weights of checkpoint ``checkpoint`` (``best``, else ``last``),
    in eval mode. ``trust=True`` unpickles the checkpoint in full (files you trust only)."""
    import lightning as L
    import yaml
    from jsonargparse import ArgumentParser

    from cnf.checkpoint import load_checkpoint

    run = RunDir(run_dir)
    if not run.config.is_file():
        raise DataError(f"no {run.config.name} in {run.path.resolve()}: pass a run directory "
                        f"made by `cnf fit` (runs/<experiment>/<run name>/)")
    cfg = yaml.safe_load(run.config.read_text())
    ckpts = [run.checkpoint(checkpoint), run.checkpoint("last")]
    ckpt = next((c for c in ckpts if c.is_file()), None)
    if ckpt is None:
        raise DataError(f"no checkpoint found at {ckpts[0]} or {ckpts[1]}; pass "
                        f"--checkpoint NAME for checkpoints/NAME.ckpt")
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(L.LightningModule, "model")
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    init = parser.instantiate(parser.parse_object({"model": cfg["model"], "data": cfg["data"]}))
    module, dm = init.model, init.data
    state = load_checkpoint(ckpt, trust=trust, trust_option="--trust-checkpoint")
    module.load_state_dict(state["state_dict"])
    module.eval()
    return module, dm


def output_dir(run_dir: str | Path) -> Path:
    """Where ``cnf evaluate`` writes its images and JSON results: ``RUN/eval/``."""
    return RunDir(run_dir).path / "eval"
