"""Lightning CLI subcommands of the ``cnf`` command: ``fit | validate | test | predict``.
The command's dispatcher is :mod:`cnf.__main__` (it also runs ``compare``, ``report`` and
``evaluate`` without importing this module).

    cnf fit --config configs/experiment/toy_realnvp.yaml --trainer.max_steps 1000
    cnf fit --config configs/experiment/toy_realnvp.yaml --print_config
    cnf compare experiments/toy.yaml --max-steps 500
    cnf report runs/toy --out reports/toy

Every run writes to ``runs/<experiment>/<run name>/`` (layout: :mod:`cnf.rundir`):
``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt``, ``metrics.csv``,
``summary.json`` (written at start with status ``running``), ``plots/`` and, unless W&B is
disabled, ``wandb/``. A run directory is written once: ``fit`` into a non-empty one is
refused unless it is a resume, and a lock file stops two writers::

    cnf fit --resume runs/toy_realnvp/<run> [--trainer.max_steps 4000 ...]
    cnf test --ckpt_path runs/toy_realnvp/<run>/checkpoints/best.ckpt   # -> <run>/evals/<name>/
    cnf predict --ckpt_path runs/toy_realnvp/<run>/checkpoints/best.ckpt  # -> <run>/predictions/

Ctrl-C (SIGINT) or SIGTERM during fit saves ``last.ckpt`` at the current step, marks the run
``interrupted`` and prints the resume command. ``test`` / ``validate`` / ``predict`` need a
checkpoint (``--untrained`` to evaluate an untrained model on purpose) and load it
weights-only (``--weights_only false`` trusts a checkpoint that needs unpickling).

The ``run`` group of options names and places the run::

    --run.experiment NAME   (default: the stem of the last --config file)
    --run.name NAME         (default: $CNF_RUN_NAME, else a timestamp)
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
import secrets
import shutil
import signal
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger

from cnf import configs
from cnf.errors import CNFError, ConfigError
from cnf.lightning.callbacks import (
    DensityPlot2D,
    GracefulStop,
    NullProfiler,
    RunCSVLogger,
    RunSummary,
    checkpoint_note,
)
from cnf.lightning.predictions import PredictionWriter
from cnf.lightning.progress import ElapsedTime, LineProgressBar
from cnf.rundir import INTERRUPTED, RunDir, run_dir_of_checkpoint

__all__ = ["CNFCLI", "RunOptions", "run", "main", "default_run_name"]

class _DropAdvertising(logging.Filter):
    """Lightning logs a 'try litlogger' tip on every run; keep logs about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdvertising())
warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
warnings.filterwarnings("ignore", message=".*`isinstance.treespec, LeafSpec.`.*")
# cnf passes its preprocessed argv (``--resume``, ``--untrained``) to LightningCLI
warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
# a resumed run's checkpoints/ is expected to hold checkpoints; a new run's is always empty
warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")


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
        checkpoint_every_minutes: also save ``last.ckpt`` every that many minutes of training
            (0: only at validations), so a killed run loses at most that much.
        eval_name: folder name of a ``test`` / ``validate`` evaluation under
            ``<run>/evals/`` (default: ``<stage>-<data>-<checkpoint>``; never overwritten:
            ``-2``, ``-3``... are added), or stem of a ``predict`` output file.
        untrained: let ``test`` / ``validate`` / ``predict`` run without a checkpoint (the
            evaluation is labelled untrained). Also spelled ``--untrained``.
        predictions_format: ``csv`` or ``parquet`` (needs pyarrow) for ``cnf predict``.
        resume: set by ``cnf fit --resume RUN_DIR``; not for direct use.
        origin: the run a saved ``config.yaml`` came from (provenance; written by cnf).
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
    checkpoint_every_minutes: float = 10.0
    eval_name: str | None = None
    untrained: bool = False
    predictions_format: Literal["csv", "parquet"] = "csv"
    resume: bool = False
    origin: str | None = None
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
    """Save the resolved config through :mod:`cnf.rundir` (never over an existing one) and
    log all of it to W&B. The saved config has no run name and no checkpoint, so running it
    again makes a new run; ``run.origin`` records the run it came from."""

    def __init__(self, parser, config, *, target: Path | None = None,
                 edits: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(parser, config, **kwargs)
        self.target = target
        self.edits = edits or {}

    def setup(self, trainer, pl_module, stage) -> None:
        if self.already_saved or not trainer.is_global_zero:
            return
        if self.target is not None:
            cfg = self.config.clone()
            for key, value in self.edits.items():
                cfg[key] = value
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.target.write_text(self.parser.dump(cfg, skip_none=False))
        self.save_config(trainer, pl_module, stage)
        self.already_saved = True

    def save_config(self, trainer, pl_module, stage) -> None:
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(resolved, allow_val_change=True)


def _is_secondary_process(env: dict[str, str] | None = None) -> bool:
    """A DDP process other than the one that owns the run directory (its lock)."""
    env = os.environ if env is None else env
    return any(int(env.get(k) or 0) > 0 for k in ("LOCAL_RANK", "RANK", "NODE_RANK"))


def _first_missing(path: Path) -> Path | None:
    """The topmost folder of ``path`` that does not exist yet (``None``: it all exists)."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _data_name(cfg: Any) -> str:
    data = cfg.get("data")
    init = getattr(data, "init_args", None)
    name = init.get("name") if init is not None and hasattr(init, "get") else None
    if name:
        return str(name)
    cp = getattr(data, "class_path", None)
    return str(cp).rsplit(".", 1)[-1] if cp else "data"


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
        from cnf.data.files import fill_model_dims

        fill_model_dims(cfg)  # a user file sets the flow's dim / context_dim (cnf.data.files)
        opts = cfg.run
        configs = [str(c) for c in (cfg.get("config") or [])]
        self.experiment = opts.experiment or (Path(configs[-1]).stem if configs else "default")
        self.run_opts = opts
        self.cfg = cfg
        self.eval_dir: RunDir | None = None
        self.predictions_path: Path | None = None
        self._created: list[Path | None] = []  # folders this process made (removed if nothing ran)
        self._locked: RunDir | None = None
        if self.subcommand is not None and cfg.get("weights_only") is None:
            cfg.weights_only = True  # a checkpoint cannot run code unless trusted explicitly
        if self.subcommand == "fit":
            self._prepare_fit(cfg, opts)
        elif self.subcommand is None:  # run(args, run=False): a script builds the objects
            self._prepare_build(opts)
        else:
            self._prepare_evaluation(cfg, opts)
        self.run_dir = self.run.path

    def _prepare_fit(self, cfg: Any, opts: Any) -> None:
        self.run_name = opts.name or default_run_name()
        self.run = RunDir(Path(opts.root) / self.experiment / self.run_name)
        edits = {"run.name": None, "run.resume": False, "run.experiment": self.experiment,
                 "run.origin": str(self.run.path), "ckpt_path": None}
        target = self.run.config
        if opts.resume:
            n = len(self.run.segments) + 1
            target = self.run.path / f"config.segment{n}.yaml"
        self.save_config_kwargs = {"target": target, "edits": edits}
        self.run_extra: dict[str, Any] = {"kind": "training", "experiment": self.experiment,
                                          "run": self.run_name}
        if opts.origin and Path(opts.origin).resolve() != self.run.path.resolve():
            self.run_extra["config_from"] = str(opts.origin)
        if _is_secondary_process():
            return
        if not opts.resume:
            info = self.run.lock_info()
            if info is not None and info.alive is not False:
                self.run.lock()  # raises RunLockedError naming the holder
            if not self.run.is_empty:
                state = self.run.state or "no summary"
                raise ConfigError(
                    f"run directory {self.run.path} already holds a run (status: {state}); a "
                    f"run directory is written once. Continue it with `cnf fit --resume "
                    f"{self.run.path}`, or start a new run with another --run.name (or none: "
                    f"a timestamp)")
            self._created.append(_first_missing(self.run.path))
        note = self.run.lock()
        self._locked = self.run
        if note:
            print(f"cnf: {note}", file=sys.stderr)

    def _prepare_build(self, opts: Any) -> None:
        """``run(args, run=False)``: a script (a benchmark, ``experiments/gpu_check.py``) builds
        the model, data and trainer of a config. Nothing runs, so no run directory is claimed,
        locked or written; the paths only name where a fit would go."""
        self.run_name = opts.name or default_run_name()
        self.run = RunDir(Path(opts.root) / self.experiment / self.run_name)
        self.run_extra = {"kind": "build", "experiment": self.experiment, "run": self.run_name}
        self.save_config_kwargs = {"target": None}

    def _prepare_evaluation(self, cfg: Any, opts: Any) -> None:
        stage = self.subcommand
        ckpt = cfg.get("ckpt_path")
        owner = run_dir_of_checkpoint(ckpt) if ckpt else None
        if ckpt is None and opts.name and not opts.untrained:
            named = RunDir(Path(opts.root) / self.experiment / opts.name)
            if not named.is_run:
                raise ConfigError(f"there is no run {named.path}; pass --ckpt_path, or the "
                                  f"--run.name of a run under {named.path.parent}")
            ckpt = named.best_or_last_checkpoint()
            if ckpt is None:
                raise ConfigError(
                    f"run {named.path} has no checkpoint ({checkpoint_note(named)}); pass "
                    f"--ckpt_path, or --untrained to {stage} an untrained model")
            cfg.ckpt_path, owner = str(ckpt), named
        if ckpt is None and not opts.untrained:
            raise ConfigError(
                f"cnf {stage} needs a trained model: pass --ckpt_path "
                f"runs/<experiment>/<run>/checkpoints/best.ckpt (or last.ckpt); to {stage} an "
                f"untrained model on purpose, add --untrained (the result is labelled so)")
        if ckpt is not None and not Path(str(ckpt)).exists():
            raise ConfigError(f"checkpoint {ckpt} does not exist")
        if owner is not None:
            self.run, self.experiment = owner, owner.path.parent.name
        else:  # an untrained model or a checkpoint from elsewhere: kept beside the runs
            self.run = RunDir(Path(opts.root) / self.experiment)
        self.run_name = self.run.path.name
        data = _data_name(cfg)
        label = Path(str(ckpt)).stem if ckpt else "untrained"
        name = opts.eval_name or f"{stage}-{data}-{label}"
        self.run_extra = {"kind": "evaluation", "stage": stage, "data": data,
                          "checkpoint": str(ckpt) if ckpt else None,
                          "untrained": ckpt is None,
                          "of_run": str(owner.path) if owner is not None else None}
        if stage == "predict":
            self.save_config_kwargs = {"target": None}
            if not _is_secondary_process():
                self.predictions_path = self.run.new_prediction_path(
                    name, ".parquet" if opts.predictions_format == "parquet" else ".csv")
            return
        if _is_secondary_process():
            self.eval_dir = self.run.eval_dir(name)
        else:
            top = _first_missing(self.run.evals / name)
            self.eval_dir = self.run.new_eval_dir(name)
            self._created.append(top if top != self.run.evals / name else self.eval_dir.path)
        self.run_extra["name"] = self.eval_dir.path.name
        self.save_config_kwargs = {"target": self.eval_dir.config, "edits": {}}

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
        # one W&B run per cnf run: a resume continues the same id
        run_id = self.run.read_summary().get("wandb_id") or secrets.token_hex(4)
        self.run_extra["wandb_id"] = run_id
        return WandbLogger(
            name=self.run_name, save_dir=str(self.run_dir), project=self.run_opts.wandb_project,
            group=self.run_opts.group or self.experiment, tags=sorted(set(tags)),
            job_type=self.subcommand, offline=(mode == "offline"), id=run_id, resume="allow",
            settings=wandb.Settings(init_timeout=30, silent=True),
        )

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list) -> Any:
        config = dict(config)
        extra: list = []
        if self.subcommand == "predict":
            config["logger"] = False
            config["default_root_dir"] = str(self.run.path)
            extra.append(PredictionWriter(self.predictions_path, extra=self.run_extra))
        else:
            target = self.run if self.subcommand in ("fit", None) else self.eval_dir
            loggers: list = [RunCSVLogger(target)]  # first: it owns the folder (log_dir)
            wb = (self._wandb_logger() if self.subcommand == "fit"
                  and config.get("logger", True) is not False else None)
            if wb is not None:
                loggers.append(wb)
            config["logger"] = loggers
            config["default_root_dir"] = str(target.path)
            self.stop = GracefulStop(self.run, self.run_opts.checkpoint_every_minutes)
            extra += [DensityPlot2D(every_n_val_epochs=self.run_opts.plot_every_n_val),
                      RunSummary(target, extra=self.run_extra, stop=self.stop), ElapsedTime()]
        if self.subcommand == "fit":
            extra.append(self.stop)
            extra.append(ModelCheckpoint(
                dirpath=str(self.run.checkpoints), filename="best",
                monitor=self.run_opts.monitor, mode=self.run_opts.monitor_mode,
                save_top_k=1, save_last=True, auto_insert_metric_name=False,
            ) if self.run_opts.monitor else ModelCheckpoint(
                dirpath=str(self.run.checkpoints), save_last=True, save_top_k=0))
        if config.get("profiler") is None:  # Lightning's default, without its per-hook cost
            config["profiler"] = NullProfiler()
        config["callbacks"], config["enable_progress_bar"], bar = self._progress(
            list(config.get("callbacks") or []), callbacks, config.get("enable_progress_bar"))
        extra += bar
        try:
            return super()._instantiate_trainer(config, callbacks + extra)
        except CNFError:
            raise
        except (ValueError, TypeError, RuntimeError, ImportError) as exc:
            # Lightning rejects a trainer argument (negative steps, devices, accelerator...)
            raise ConfigError(f"invalid trainer setting: {type(exc).__name__}: {exc}\n"
                              "Check the --trainer.* options (`cnf fit --help`).") from exc

    # -- lifecycle: nothing half-made is left behind, the lock is released ----------------
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except BaseException:
            self._abandon(started=False)
            raise

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException as exc:
            if subcommand == "fit" and isinstance(exc, CNFError) and exc.args:
                exc.args = (f"{exc.args[0]}\n{checkpoint_note(self.run)}",) + exc.args[1:]
            # a trainer setting Lightning rejects at the start is an argument error too
            self._abandon(started=type(exc).__name__ != "MisconfigurationException")
            raise
        self._release()

    def _release(self) -> None:
        if self._locked is not None:
            self._locked.unlock()
            self._locked = None

    def _abandon(self, started: bool) -> None:
        """After an error: remove the folders this process made when nothing was recorded
        in them (an argument error must not leave an empty run), and release the lock."""
        for path in self._created:
            if path is None or not path.exists():
                continue
            recorded = any(path.rglob(n) for n in (RunDir(path).summary_path.name,
                                                   RunDir(path).checkpoints.name))
            if not started or not recorded:
                shutil.rmtree(path, ignore_errors=True)
        self._release()

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

    @property
    def interrupted_by(self) -> int | None:
        """The signal that stopped fit early (SIGINT, SIGTERM), else ``None``."""
        stop = getattr(self, "stop", None)
        return stop.signal if stop is not None else None

    def after_fit(self) -> None:
        if self.interrupted_by is not None:
            return
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


def _option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """Take ``name VALUE`` or ``name=VALUE`` out of ``argv``."""
    rest, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == name:
            if i + 1 >= len(argv):
                raise ConfigError(f"{name} needs a value")
            value = argv[i + 1]
            i += 2
            continue
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def _expand_resume(run_path: str, rest: list[str]) -> list[str]:
    """``fit --resume RUN ...`` -> the run's saved config, name, and ``last.ckpt``."""
    run = RunDir(run_path)
    if not run.config.exists():
        raise ConfigError(f"--resume {run_path}: not a run directory (no {run.config.name}); "
                          "pass runs/<experiment>/<run>")
    last = run.checkpoint("last")
    if not last.exists():
        raise ConfigError(
            f"--resume {run_path}: {checkpoint_note(run)} There is nothing to resume; start "
            f"the run again with `cnf fit --config {run.config}`")
    return ["fit", "--config", str(run.config), "--run.root", str(run.path.parent.parent),
            "--run.experiment", run.path.parent.name, "--run.name", run.path.name,
            "--run.resume", "true", "--ckpt_path", str(last)] + rest


def _check_yaml_files(argv: list[str]) -> None:
    """A YAML syntax error in a ``--config`` file, reported with the file's path (jsonargparse
    reports it as ``<unicode string>``)."""
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--config=") else None)
        if path is None or not Path(path).is_file():
            continue
        try:
            with open(path) as f:
                yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}; fix that file") from None


def preprocess_args(argv: list[str]) -> list[str]:
    """cnf's own spellings on top of LightningCLI's: ``fit --resume RUN_DIR`` and
    ``--untrained``; YAML syntax errors of ``--config`` files name the file."""
    argv = list(argv)
    if argv and argv[0] == "fit" and any(a == "--resume" or a.startswith("--resume=") for a in argv):
        value, rest = _option(argv[1:], "--resume")
        argv = _expand_resume(value, rest)
    if argv and argv[0] in ("validate", "test", "predict") and "--untrained" in argv:
        argv = [a for a in argv if a != "--untrained"] + ["--run.untrained", "true"]
    _check_yaml_files(argv)
    return argv


def _translate(exc: BaseException) -> CNFError | None:
    """A cnf error for a known Lightning / jsonargparse / torch.load failure."""
    import pickle

    from jsonargparse import ArgumentError

    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, CNFError):
            return cause
        if isinstance(cause, pickle.UnpicklingError) and "weights_only" in str(cause).lower() + "weights only":
            first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
            from cnf.errors import UntrustedCheckpointError

            return UntrustedCheckpointError(
                "refused to load the checkpoint: it holds pickled Python objects, and unpickling "
                f"can run arbitrary code ({first[:200]}). Load it only if you trust where it "
                "came from, with --weights_only false")
        if type(cause).__name__ == "MisconfigurationException":
            return ConfigError(f"invalid trainer setting: {cause}")
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, ArgumentError) or "jsonargparse" in type(exc).__module__:
        return _config_error(exc)
    return None


def run(args: list[str] | None = None, **kwargs: Any) -> CNFCLI:
    """Run the CLI with ``args`` (``sys.argv[1:]`` by default) and return it. Raises
    ``cnf.errors.CNFError`` subclasses for errors a user can fix (bad config included)."""
    argv = preprocess_args(list(sys.argv[1:] if args is None else args))
    kw: dict[str, Any] = dict(
        model_class=None, datamodule_class=None,
        subclass_mode_model=True, subclass_mode_data=True,
        save_config_callback=_SaveConfig,
        # experiment files may `extends:` another and override single keys (cnf.configs)
        parser_kwargs={"exit_on_error": False, "parser_mode": configs.register()},
        auto_configure_optimizers=False,
    )
    kw.update(kwargs)
    try:
        return CNFCLI(args=argv, **kw)
    except CNFError:
        raise
    except Exception as exc:
        err = _translate(exc)
        if err is not None:
            raise err from None
        raise


def main(args: list[str] | None = None) -> None:
    """The Lightning subcommands ``fit | validate | test | predict`` (``args``: from
    ``sys.argv[1:]`` when None). The ``cnf`` command itself is :mod:`cnf.__main__`, which
    dispatches ``compare``/``report``/``evaluate`` and hands everything else to this."""
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
    if run_dir is None or not cli.trainer.is_global_zero:
        return
    record = RunDir(run_dir)
    print(f"\ncnf: run directory {run_dir}")
    shown = [("summary.json", record.summary_path), ("metrics.csv", record.metrics),
             ("config.yaml", record.config), ("checkpoints/best.ckpt", record.checkpoint("best")),
             ("checkpoints/last.ckpt", record.checkpoint("last"))]
    if cli.subcommand != "fit":
        out = cli.eval_dir.path if cli.eval_dir is not None else cli.predictions_path
        shown = [(f"{cli.subcommand} output", out)] if out is not None else []
    for rel, path in shown:
        if path is not None and Path(path).exists():
            print(f"  {rel:24s} {path}")
    signum = cli.interrupted_by
    if signum is not None:
        print(f"cnf: {signal.Signals(signum).name}: run {INTERRUPTED} at step "
              f"{cli.trainer.global_step}, last.ckpt saved. Resume it with:\n"
              f"  cnf fit --resume {run_dir}", file=sys.stderr)
        sys.exit(128 + int(signum))

