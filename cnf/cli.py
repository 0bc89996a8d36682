"""The ``cnf`` command: Lightning CLI subcommands ``fit | validate | test | predict``.

    cnf fit --config configs/experiment/toy_realnvp.yaml --trainer.max_steps 1000
    cnf fit --config configs/experiment/toy_realnvp.yaml --print_config

Every run writes to ``runs/<experiment>/<run name>/``: ``config.yaml`` (resolved),
``checkpoints/{best,last}.ckpt``, ``metrics.csv``, ``summary.json``, ``plots/`` and, unless
W&B is disabled, ``wandb/``. The ``run`` group of options names and places the run::

    --run.experiment NAME   (default: the stem of the last --config file)
    --run.name NAME         (default: a timestamp; validate/test/predict with --ckpt_path
                             inside a run directory write into that run)
    --run.wandb offline|online|disabled   (WANDB_MODE=disabled in the environment wins)

Errors a user can cause end with ``cnf: error: <what to change>`` and exit status 2; set
``CNF_DEBUG=1`` for the full traceback.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from cnf.errors import CNFError, ConfigError
from cnf.lightning.callbacks import DensityPlot2D, RunSummary

__all__ = ["CNFCLI", "RunOptions", "run", "main"]

warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
warnings.filterwarnings("ignore", message=".*`isinstance.treespec, LeafSpec.`.*")


@dataclass
class RunOptions:
    """Where a run goes and how it is tracked.

    Args:
        experiment: experiment name, the folder under ``root`` (default: the stem of the
            last ``--config`` file, e.g. ``toy_realnvp``).
        name: run name (default: a timestamp).
        root: root folder of all runs.
        wandb: W&B mode; ``offline`` writes local files only, ``online`` needs a key.
        wandb_project: W&B project.
        group: W&B group (default: the experiment name); runs of one suite share it.
        tags: extra W&B tags (the model and the dataset are always added).
        monitor: metric that selects ``best.ckpt`` (``None``: keep only ``last.ckpt``).
        monitor_mode: ``min`` or ``max``.
        test_after_fit: after ``fit``, run ``test`` with the best checkpoint.
        plot_every_n_val: also plot 2D densities every that many validations (0: at the end).
        progress_refresh: progress-bar refresh interval in steps (keeps CI logs short).
    """

    experiment: str | None = None
    name: str | None = None
    root: str = "runs"
    wandb: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "cnf"
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    monitor: str | None = "val/nll"
    monitor_mode: Literal["min", "max"] = "min"
    test_after_fit: bool = True
    plot_every_n_val: int = 0
    progress_refresh: int = 50


class _SaveConfig(SaveConfigCallback):
    """Save the resolved config to the run directory and log all of it to W&B."""

    def save_config(self, trainer, pl_module, stage) -> None:
        if not trainer.is_global_zero:
            return
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(resolved, allow_val_change=True)


def _class_name(node: Any) -> str | None:
    if isinstance(node, dict) or hasattr(node, "class_path"):
        cp = node.get("class_path") if isinstance(node, dict) else node.class_path
        return str(cp).rsplit(".", 1)[-1] if cp else None
    return None


class CNFCLI(LightningCLI):
    """LightningCLI with cnf's run layout, loggers, checkpoints, summary and plots."""

    run_dir: Path
    run_name: str
    experiment: str

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_class_arguments(RunOptions, "run")

    # -- run layout ----------------------------------------------------------------------
    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        opts = cfg.run
        configs = [str(c) for c in (cfg.get("config") or [])]
        self.experiment = opts.experiment or (Path(configs[-1]).stem if configs else "default")
        self.run_name = opts.name
        ckpt = cfg.get("ckpt_path")
        run_root = Path(opts.root) / self.experiment
        if self.run_name is None and ckpt and self.subcommand != "fit":
            parent = Path(str(ckpt)).resolve().parent
            if parent.name == "checkpoints" and (parent.parent / "config.yaml").exists():
                run_root, self.run_name = parent.parent.parent, parent.parent.name
        if self.run_name is None:
            self.run_name = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
        self.run_dir = run_root / self.run_name
        self.run_opts = opts
        self.cfg = cfg

    def _wandb_logger(self) -> WandbLogger | None:
        mode = self.run_opts.wandb
        if os.environ.get("WANDB_MODE", "").lower() == "disabled":
            mode = "disabled"
        if mode == "disabled":
            return None
        if mode == "online" and not (os.environ.get("WANDB_API_KEY") or _netrc_has_wandb()):
            raise ConfigError(
                "run.wandb=online needs a W&B API key: run `wandb login` or set WANDB_API_KEY, "
                "or use --run.wandb offline (the default; sync later with `wandb sync`)"
            )
        import wandb

        tags = list(self.run_opts.tags)
        model_node = self.cfg.get("model")
        density = model_node.init_args.get("density") if hasattr(model_node, "init_args") else None
        flow = density.init_args.get("flow") if hasattr(density, "init_args") else None
        for name in (_class_name(flow), getattr(self.cfg.get("data"), "init_args", {}).get("name")
                     if hasattr(self.cfg.get("data"), "init_args") else None):
            if name:
                tags.append(str(name))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        return WandbLogger(
            name=self.run_name, save_dir=str(self.run_dir), project=self.run_opts.wandb_project,
            group=self.run_opts.group or self.experiment, tags=sorted(set(tags)),
            job_type=self.subcommand, offline=(mode == "offline"),
            settings=wandb.Settings(init_timeout=30, silent=True),
        )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        config = dict(config)
        stage_logs = self.subcommand != "fit" and (self.run_dir / "config.yaml").exists()
        # CSVLogger first: it owns the run directory (trainer.log_dir)
        csv = CSVLogger(save_dir=str(self.run_dir.parent), name="",
                        version=self.run_name if not stage_logs else f"{self.run_name}/{self.subcommand}")
        loggers: list = [csv]
        wb = self._wandb_logger() if config.get("logger", True) is not False else None
        if wb is not None:
            loggers.append(wb)
        config["logger"] = loggers
        config["default_root_dir"] = str(self.run_dir)
        extra = [RunSummary(), DensityPlot2D(every_n_val_epochs=self.run_opts.plot_every_n_val)]
        has_bar = any(isinstance(c, ProgressBar) for c in callbacks + list(config.get("callbacks") or []))
        if config.get("enable_progress_bar") is not False and not has_bar:
            extra.append(TQDMProgressBar(refresh_rate=self.run_opts.progress_refresh))
        if self.subcommand == "fit":
            extra.append(ModelCheckpoint(
                dirpath=str(self.run_dir / "checkpoints"), filename="best",
                monitor=self.run_opts.monitor, mode=self.run_opts.monitor_mode,
                save_top_k=1, save_last=True, auto_insert_metric_name=False,
            ) if self.run_opts.monitor else ModelCheckpoint(
                dirpath=str(self.run_dir / "checkpoints"), save_last=True, save_top_k=0))
        trainer = super()._instantiate_trainer(config, callbacks + extra)
        # the stage logs of validate/test/predict go to a subfolder; the summary to the run
        if stage_logs:
            for cb in trainer.callbacks:
                if isinstance(cb, RunSummary):
                    cb._path = lambda _t, d=self.run_dir: d / "summary.json"  # type: ignore[method-assign]
        return trainer

    def after_fit(self) -> None:
        if self.run_opts.test_after_fit and not self.trainer.interrupted:
            ckpt = "best" if (self.run_opts.monitor and self.trainer.checkpoint_callback
                              and self.trainer.checkpoint_callback.best_model_path) else None
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=ckpt)


def _netrc_has_wandb() -> bool:
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def _config_error(exc: BaseException) -> ConfigError:
    msg = str(exc).strip()
    return ConfigError(
        f"invalid configuration: {msg}\n"
        "Check the key names and class paths; `cnf fit --config FILE --print_config` shows "
        "every valid key with its value, and `cnf fit --help` lists the options."
    )


def run(args: list[str] | None = None, **kwargs: Any) -> CNFCLI:
    """Run the CLI with ``args`` (``sys.argv[1:]`` by default) and return it. Raises
    ``cnf.errors.CNFError`` subclasses for errors a user can fix (bad config included)."""
    from jsonargparse import ArgumentError

    kw: dict[str, Any] = dict(
        model_class=None, datamodule_class=None,
        subclass_mode_model=True, subclass_mode_data=True,
        save_config_callback=_SaveConfig,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"exit_on_error": False},
        auto_configure_optimizers=False,
    )
    kw.update(kwargs)
    try:
        return CNFCLI(args=args, **kw)
    except CNFError:
        raise
    except Exception as exc:
        # a cnf error raised while jsonargparse instantiated a class arrives wrapped
        cause: BaseException | None = exc
        while cause is not None:
            if isinstance(cause, CNFError):
                raise cause from None
            cause = cause.__cause__ or cause.__context__
        if isinstance(exc, ArgumentError) or "jsonargparse" in type(exc).__module__:
            raise _config_error(exc) from exc
        raise


def main(args: list[str] | None = None) -> None:
    """Console entry point ``cnf``."""
    if "OMP_NUM_THREADS" in os.environ:
        import torch

        torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
    try:
        cli = run(args)
    except CNFError as exc:
        if os.environ.get("CNF_DEBUG"):
            raise
        print(f"cnf: error: {exc}", file=sys.stderr)
        sys.exit(2)
    run_dir = getattr(cli, "run_dir", None)
    if run_dir is not None and run_dir.exists() and cli.trainer.is_global_zero:
        print(f"\ncnf: run directory {run_dir}")
        for rel in ("summary.json", "metrics.csv", "config.yaml", "checkpoints/best.ckpt",
                    "plots/density_final.png"):
            if (run_dir / rel).exists():
                print(f"  {rel:24s} {run_dir / rel}")


if __name__ == "__main__":
    main()
