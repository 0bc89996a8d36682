"""The ``cnf`` command: Lightning CLI subcommands ``fit | validate | test | predict``, plus
``compare`` (run an experiment suite, :mod:`cnf.compare`) and ``report`` (comparison report
from finished runs, :mod:`cnf.report`).

    cnf fit --config configs/experiment/toy_realnvp.yaml --trainer.max_steps 1000
    cnf fit --config configs/experiment/toy_realnvp.yaml --print_config
    cnf compare experiments/toy.yaml --max-steps 500
    cnf report runs/toy --out reports/toy

Every run writes to ``runs/<experiment>/<run name>/``: ``config.yaml`` (resolved),
``checkpoints/{best,last}.ckpt``, ``metrics.csv``, ``summary.json``, ``plots/`` and, unless
W&B is disabled, ``wandb/``. The ``run`` group of options names and places the run::

    --run.experiment NAME   (default: the stem of the last --config file)
    --run.name NAME         (default: $CNF_RUN_NAME, else a timestamp; validate/test/predict
                             with --ckpt_path inside a run directory write into that run)
    --run.wandb offline|online|disabled   (WANDB_MODE=disabled in the environment wins)
    --run.progress auto|bar|lines|none    (auto: a bar on a terminal, else compact lines)

Multi-process runs (``--trainer.strategy ddp --trainer.devices N``) name the run once: the
first process exports ``CNF_RUN_NAME`` before Lightning starts the others. Under torchrun or
SLURM, where every process starts on its own, the name comes from ``TORCHELASTIC_RUN_ID`` or
``SLURM_JOB_ID`` (or set ``--run.name`` / ``CNF_RUN_NAME`` on every process).

Errors a user can cause end with ``cnf: error: <what to change>`` and exit status 2; set
``CNF_DEBUG=1`` for the full traceback.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, WandbLogger

from cnf import configs
from cnf.errors import CNFError, ConfigError
from cnf.lightning.callbacks import DensityPlot2D, RunSummary
from cnf.lightning.progress import ElapsedTime, LineProgressBar

__all__ = ["CNFCLI", "RunOptions", "run", "main", "default_run_name", "SUBCOMMANDS"]

class _DropAdvertising(logging.Filter):
    """Lightning logs a 'try litlogger' tip on every run; keep logs about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertising())
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
        progress: ``bar`` (a TQDM bar), ``lines`` (one line every ``progress_every`` steps:
            loss, NFE, validation metric, ETA; for logs and CI), ``none``, or ``auto``: a bar
            when stdout is a terminal, else lines.
        progress_refresh: progress-bar refresh interval in steps (keeps CI logs short).
        progress_every: steps between progress lines (0: about 20 lines per run, and at
            least one every 30 s).
        compile: ``torch.compile`` the flow's forward (``flow.compile()``) before fit. On
            one CPU thread it paid for spline flows (NSF 1.7x per step after ~80 s of
            compiling), not for RealNVP, and not for CNFs (refused);
            experiments/bench/bench_precision.py. Mixed precision is
            ``--trainer.precision bf16-mixed``.
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
    progress: Literal["auto", "bar", "lines", "none"] = "auto"
    progress_refresh: int = 50
    progress_every: int = 0
    compile: bool = False


def default_run_name(env: dict[str, str] | None = None) -> str:
    """The run name when ``--run.name`` is not given; identical on every process of a run.

    ``CNF_RUN_NAME`` when set by the user, or by the parent process that started this one
    (Lightning's DDP launcher re-runs the command line with the parent's environment);
    under torchrun / SLURM with several processes, ``torchrun-<TORCHELASTIC_RUN_ID>`` or
    ``slurm-<SLURM_JOB_ID>[.<SLURM_STEP_ID>]``; otherwise a new timestamp, exported as
    ``CNF_RUN_NAME`` for the processes Lightning is about to start.

    Raises:
        ConfigError: several independently started processes and no shared id to agree on.
    """
    env = os.environ if env is None else env
    name, owner = env.get("CNF_RUN_NAME"), env.get("CNF_RUN_NAME_OWNER")
    if name and (owner is None or owner == str(os.getppid())):
        return name
    world = int(env.get("WORLD_SIZE") or 1)
    slurm_tasks = int(env.get("SLURM_NTASKS") or 1)
    if world > 1 or slurm_tasks > 1:
        rid = env.get("TORCHELASTIC_RUN_ID")
        if rid and rid != "none":
            return f"torchrun-{rid}"
        if env.get("SLURM_JOB_ID"):
            step = env.get("SLURM_STEP_ID")
            return f"slurm-{env['SLURM_JOB_ID']}" + (f".{step}" if step else "")
        raise ConfigError(
            f"this is one of {max(world, slurm_tasks)} processes started independently, and "
            "they must agree on the run directory: pass the same --run.name NAME (or "
            "CNF_RUN_NAME=NAME) to every process, or start torchrun with --rdzv-id")
    name = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")[:-3]
    if env is os.environ:
        os.environ["CNF_RUN_NAME"] = name
        os.environ["CNF_RUN_NAME_OWNER"] = str(os.getpid())
    return name


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
            self.run_name = default_run_name()
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
        extra = [RunSummary(), DensityPlot2D(every_n_val_epochs=self.run_opts.plot_every_n_val),
                 ElapsedTime()]
        config["callbacks"], config["enable_progress_bar"], bar = self._progress(
            list(config.get("callbacks") or []), callbacks, config.get("enable_progress_bar"))
        extra += bar
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

    def _progress(self, configured: list, given: list, enabled: bool | None
                  ) -> tuple[list, bool | None, list]:
        """Apply ``run.progress``: a TQDM bar (the configured one, else one refreshing every
        ``progress_refresh`` steps), compact lines, or nothing. Returns the configured
        callbacks to keep, ``enable_progress_bar`` and the progress callbacks to add."""
        mode = self.run_opts.progress
        if mode == "auto":
            mode = "bar" if sys.stdout.isatty() else "lines"
        if enabled is False:
            return configured, enabled, []
        rest = [cb for cb in configured if not isinstance(cb, ProgressBar)]
        if mode == "bar":
            has_bar = any(isinstance(c, ProgressBar) for c in given + configured)
            return configured, enabled, ([] if has_bar else
                                         [TQDMProgressBar(refresh_rate=self.run_opts.progress_refresh)])
        if mode == "none":
            return rest, False, []
        return rest, enabled, [LineProgressBar(every_n_steps=self.run_opts.progress_every or None)]

    def before_fit(self) -> None:
        if self.run_opts.compile:
            flow = getattr(getattr(self.model, "density", None), "flow", None)
            if not isinstance(flow, torch.nn.Module):
                raise ConfigError("run.compile needs a model with a `density.flow` module; "
                                  "drop --run.compile for this model")
            from cnf.flows.continuous import CNF

            if any(isinstance(m, CNF) for m in flow.modules()):
                raise ConfigError(
                    "run.compile does not support continuous flows: torch.compile failed on "
                    "the adaptive solver and made fixed-step RK4 training 2x slower "
                    "(experiments/bench/bench_precision.py); drop --run.compile")
            flow.compile()

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
    from cnf.ode.solve import legacy_solver_hint  # CNF solver keys became one object

    hint = legacy_solver_hint(msg)
    msg = f"{msg}\n{hint}" if hint else msg
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
        # experiment files may `extends:` another and override single keys (cnf.configs)
        parser_kwargs={"exit_on_error": False, "parser_mode": configs.register()},
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


# subcommands of our own, dispatched before LightningCLI: name -> (module, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("cnf.compare", "run an experiment suite, then write its report"),
    "report": ("cnf.report", "write a comparison report from finished runs"),
    "evaluate": ("cnf.evaluate", "sample, interpolate, anomaly scores, inpaint, exact NLL of a run"),
}


def _dispatch(name: str, argv: list[str]) -> None:
    import importlib

    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        status = module.main(argv)
    except KeyboardInterrupt:
        sys.exit(130)
    except CNFError as exc:
        if os.environ.get("CNF_DEBUG"):
            raise
        print(f"cnf {name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(status if isinstance(status, int) else 0)


def main(args: list[str] | None = None) -> None:
    """Console entry point ``cnf``."""
    argv = list(sys.argv[1:] if args is None else args)
    if argv and argv[0] in SUBCOMMANDS:
        _dispatch(argv[0], argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print("cnf subcommands of our own (see `cnf <name> --help`):")
        for name, (_, text) in SUBCOMMANDS.items():
            print(f"  {name:10s} {text}")
        print()
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
