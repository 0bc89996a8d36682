"""Callbacks: density plots for 2D models, the run record (``summary.json``, segments,
interrupts, timed ``last.ckpt``) and the CSV logger that appends across resumed segments."""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import os
import platform
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.profilers import PassThroughProfiler

from cnf.flows.base import exact_logdet
from cnf.lightning.progress import finite_float
from cnf.rundir import FAILED, FINISHED, INTERRUPTED, RUNNING, RunDir

__all__ = ["PeriodicPlot", "DensityPlot2D", "RunSummary", "GracefulStop", "RunCSVLogger",
           "NullProfiler", "peak_memory_mb", "run_dir", "checkpoint_note"]


def run_dir(trainer: L.Trainer) -> Path:
    """The run directory: the first logger's ``log_dir``, else ``default_root_dir``.

    Not ``trainer.log_dir``: that property broadcasts from rank 0, a collective that hangs
    DDP when only rank 0 asks (as rank-0-only writers do).
    """
    logger = trainer.loggers[0] if trainer.loggers else None
    log_dir = getattr(logger, "log_dir", None) if logger is not None else None
    return Path(log_dir or trainer.default_root_dir)


def peak_memory_mb(device: torch.device | None = None) -> dict[str, float]:
    """Peak resident memory of this process (MB) and, on CUDA, peak allocated GPU memory."""
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / 1024**2
    out = {"peak_rss_mb": round(rss_kb * scale, 1)}
    if device is not None and device.type == "cuda":
        out["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


class NullProfiler(PassThroughProfiler):
    """Lightning's default "no profiler" without its cost: the trainer enters
    ``profiler.profile(name)`` around every hook and loop stage (about 100 times a step), and
    the default's generator-based context manager costs ~2 us each on CPU (~0.2 ms a step,
    3-4 % of a small flow's step); this one hands out one reusable no-op context (~0.3 us).
    ``cnf fit`` uses it unless ``--trainer.profiler`` names a real profiler."""

    _null = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.nullcontext:  # type: ignore[override]
        return self._null


class PeriodicPlot(L.Callback):
    """Calls ``self.plot(trainer, pl_module, filename)`` at the end of fit
    (``<final_name>.png``) and, when ``every_n_val_epochs > 0``, every that many validations
    (``<step_prefix><global step>.png``). Subclasses implement ``plot``."""

    final_name = "plot"
    step_prefix = "plot_step"

    def __init__(self, every_n_val_epochs: int = 0):
        super().__init__()
        self.every_n_val_epochs = every_n_val_epochs
        self._val_count = 0
        self.last_path: Path | None = None

    def plot(self, trainer: L.Trainer, pl_module: L.LightningModule, filename: str) -> Path | None:
        raise NotImplementedError

    def save(self, fig: Any, trainer: L.Trainer, filename: str) -> Path:
        """Write ``fig`` to ``<run dir>/plots/<filename>`` and close it. Uses :func:`run_dir`,
        never ``trainer.log_dir`` (a collective: called on rank 0 alone it hangs DDP)."""
        import matplotlib.pyplot as plt

        fig.tight_layout()
        out_dir = run_dir(trainer) / "plots"
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / filename
        fig.savefig(path, dpi=90)
        plt.close(fig)
        self.last_path = path
        for logger in trainer.loggers:  # the W&B run gets the figure too
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"plots/{path.stem}", images=[str(path)],
                                 step=trainer.global_step)
        return path

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_val_epochs <= 0:
            return
        self._val_count += 1
        if self._val_count % self.every_n_val_epochs == 0:
            self.plot(trainer, pl_module, f"{self.step_prefix}{trainer.global_step}.png")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.plot(trainer, pl_module, f"{self.final_name}.png")


class DensityPlot2D(PeriodicPlot):
    """Save a PNG of the data, the learned density and samples of a 2D model.

    Written to ``<run dir>/plots/density_final.png`` at the end of fit and, when
    ``every_n_val_epochs > 0``, to ``density_step<N>.png`` every that many validations.
    Models whose data is not 2D are skipped silently.
    """

    final_name = "density_final"
    step_prefix = "density_step"

    def __init__(self, every_n_val_epochs: int = 0, grid_size: int = 100, n_samples: int = 5000,
                 extent: float | None = None):
        super().__init__(every_n_val_epochs)
        self.grid_size = grid_size
        self.n_samples = n_samples
        self.extent = extent

    def _data(self, trainer: L.Trainer) -> torch.Tensor | None:
        dm = trainer.datamodule
        for attr in ("val_set", "test_set", "train_set"):
            x = getattr(dm, attr, None)
            if isinstance(x, torch.Tensor):
                return x
        return None

    def plot(self, trainer: L.Trainer, pl_module: L.LightningModule, filename: str) -> Path | None:
        if not trainer.is_global_zero:
            return None
        density = getattr(pl_module, "density", None)
        data = self._data(trainer)
        if density is None or data is None or tuple(density.event_shape) != (2,):
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        was_training = pl_module.training
        pl_module.eval()
        device = pl_module.device
        data = data[:20_000].cpu()
        lim = self.extent or float(data.abs().max()) * 1.1
        g = torch.linspace(-lim, lim, self.grid_size)
        xx, yy = torch.meshgrid(g, g, indexing="xy")
        grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1).to(device)
        # no autograd recording (as in validation): a CNF trained with direct backprop would
        # otherwise keep the whole solver graph of each chunk (1.5 GB for 10k points, rk4)
        with exact_logdet(density), torch.no_grad():
            logp = torch.cat([density.log_prob(chunk).detach() for chunk in grid.split(2500)])
        with torch.no_grad():
            samples = density.sample(self.n_samples).detach().cpu()
        if was_training:
            pl_module.train()
        dens = logp.exp().reshape(self.grid_size, self.grid_size).cpu().numpy()

        fig, axes = plt.subplots(1, 3, figsize=(12, 4))
        rng = [[-lim, lim], [-lim, lim]]
        axes[0].hist2d(data[:, 0].numpy(), data[:, 1].numpy(), bins=self.grid_size, range=rng,
                       cmap="viridis")
        axes[0].set_title("data")
        axes[1].imshow(dens, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
        axes[1].set_title("learned density")
        s = samples[torch.isfinite(samples).all(1)].numpy()
        axes[2].hist2d(s[:, 0], s[:, 1], bins=self.grid_size, range=rng, cmap="viridis")
        axes[2].set_title("samples")
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
        step = trainer.global_step
        nll = finite_float(trainer.callback_metrics.get("val/nll"))
        fig.suptitle(f"{type(density.flow).__name__} — step {step}"
                     + (f", val/nll {nll:.3f}" if nll is not None else ""))
        return self.save(fig, trainer, filename)


class RunCSVLogger(CSVLogger):
    """``metrics.csv`` directly in the run directory, appended to and never deleted.

    Lightning's ``CSVLogger`` removes an existing ``metrics.csv`` (and warns "logs directory
    exists ... will be deleted") when the folder is not empty, which lost every row before a
    resumed checkpoint. This one keeps the file, adopts its header, and
    :meth:`drop_redone_rows` drops rows written after the checkpoint a resume starts from.
    """

    def __init__(self, run: RunDir | str | Path):
        self.run = run if isinstance(run, RunDir) else RunDir(run)
        super().__init__(save_dir=str(self.run.path.parent), name="", version=self.run.path.name)

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(self.log_dir)
        return self._experiment

    def drop_redone_rows(self, step: int) -> int:
        """Before a segment resumed at global step ``step``: drop the training and validation
        rows logged at ``step`` or later (written after the checkpoint; the new segment logs
        them again). Rows of a test are kept. Returns how many rows were dropped."""
        self.save()
        path = self.run.metrics
        if not path.exists():
            return 0
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = list(reader.fieldnames or []), list(reader)

        def redone(row: dict[str, str]) -> bool:
            try:
                at = int(float(row.get("step") or -1))
            except ValueError:
                return False
            return at >= step and not any(v for k, v in row.items() if k.startswith("test/"))

        keep = [r for r in rows if not redone(r)]
        if len(keep) == len(rows):
            return 0
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(keep)
        tmp.replace(path)
        return len(rows) - len(keep)


class _AppendingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        # adopt an existing file's columns instead of deleting it
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)
            if header != self.metrics_keys:
                self._rewrite_with_new_header(self.metrics_keys)


def checkpoint_note(run: RunDir) -> str:
    """What is on disk about checkpoints of ``run``, for error messages."""
    ckpts = sorted(run.checkpoints.glob("*.ckpt")) if run.checkpoints.is_dir() else []
    if not ckpts:
        return "No checkpoint was written yet."
    last = run.checkpoint("last")
    if last.exists():
        try:
            step = torch.load(last, map_location="cpu", weights_only=True).get("global_step")
        except Exception:  # noqa: BLE001 - a message helper must not fail
            step = None
        at = f" (step {step})" if step is not None else ""
        return (f"The last checkpoint{at} is {last}; continue with `cnf fit --resume "
                f"{run.path}` after changing what the message says.")
    return "Checkpoints kept: " + ", ".join(str(c) for c in ckpts) + "."


class GracefulStop(L.Callback):
    """SIGINT / SIGTERM during training: finish the current step, save ``last.ckpt`` at that
    step, stop, and leave ``signal`` set (the run is then *interrupted*, not failed). A second
    signal aborts at once. Also saves ``last.ckpt`` every ``every_minutes`` of training, so a
    ``kill -9`` loses at most that much. Single-process runs only handle signals (under DDP,
    Lightning's own handling stays).

    Args:
        run: the run directory (``last.ckpt`` goes to its ``checkpoints/``).
        every_minutes: interval of the timed ``last.ckpt`` (0: off).
    """

    def __init__(self, run: RunDir, every_minutes: float = 10.0):
        super().__init__()
        self.run = run
        self.every_minutes = every_minutes
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}
        self._last_save = 0.0

    def _handler(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # second signal: abort now
            self._restore()
            raise KeyboardInterrupt
        self.signal = signum
        print(f"\ncnf: {signal.Signals(signum).name} received: saving last.ckpt at the end of "
              "this step, then stopping (send it again to abort at once)", file=sys.stderr,
              flush=True)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            try:
                signal.signal(sig, handler)
            except (ValueError, TypeError):
                pass
        self._previous = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save = time.monotonic()
        if trainer.world_size != 1 or not _main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def save_last(self, trainer: L.Trainer) -> Path:
        """Write ``last.ckpt`` at the current step (through a temporary file and a rename)."""
        path = self.run.checkpoint("last")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            tmp.replace(path)
        self._last_save = time.monotonic()
        return path

    # Checkpoints are written where Lightning's step counters agree (between steps, or
    # after the loop ended): one written inside on_train_batch_end resumes with the logging
    # step one behind, and rows get logged twice.
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        if (self.every_minutes > 0 and self.signal is None and trainer.global_step > 0
                and time.monotonic() - self._last_save >= 60 * self.every_minutes):
            self.save_last(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.signal is not None:
            trainer.should_stop = True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.signal is not None:
            path = self.save_last(trainer)
            if trainer.is_global_zero:
                print(f"cnf: saved {path} at step {trainer.global_step}", file=sys.stderr,
                      flush=True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


class RunSummary(L.Callback):
    """The run's ``summary.json``: written at the start of fit (``status: running``, a new
    entry in ``segments``), after every validation, and at the end (``finished``, ``failed``,
    or ``interrupted`` after a signal): final metrics, wall time and seconds per step
    accumulated over resumed segments, parameter count, peak memory, best checkpoint. All
    writes are atomic. The same fields go to the W&B run's summary when W&B is on.

    Args:
        run: the run (or evaluation) directory; default: the first logger's folder.
        extra: fields added to the summary (e.g. ``kind``, ``checkpoint``).
        stop: the run's :class:`GracefulStop`, whose ``signal`` marks an interruption.
    """

    def __init__(self, run: RunDir | str | Path | None = None, extra: dict[str, Any] | None = None,
                 stop: GracefulStop | None = None):
        super().__init__()
        self.run = RunDir(run) if isinstance(run, (str, Path)) else run
        self.extra = extra or {}
        self.stop = stop
        self._t0: dict[str, float] = {}
        self._elapsed_before = 0.0  # fit seconds of earlier segments (from the checkpoint)
        self._resumed = False
        self._start_step = 0

    def _run(self, trainer: L.Trainer) -> RunDir:
        return self.run if self.run is not None else RunDir(run_dir(trainer))

    def _csv(self, trainer: L.Trainer) -> RunCSVLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, RunCSVLogger)), None)

    def fit_elapsed(self) -> float:
        """Seconds of fit so far, earlier segments included."""
        return self._elapsed_before + time.perf_counter() - self._t0.get("fit", time.perf_counter())

    # checkpoint state: the fit clock, so wall time accumulates over resumed segments
    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": float(self.fit_elapsed()) if "fit" in self._t0 else 0.0}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._elapsed_before = float(state_dict.get("elapsed_s", 0.0))
        self._resumed = True

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str,
                status: str, error: str | None = None) -> None:
        if not trainer.is_global_zero:
            return
        run = self._run(trainer)
        summary = run.read_summary()
        metrics = summary.setdefault("metrics", {})
        for key, value in trainer.callback_metrics.items():
            f = finite_float(value)
            if f is not None and not key.endswith("_step"):
                metrics[key.removesuffix("_epoch")] = f
        wall = time.perf_counter() - self._t0.get(stage, time.perf_counter())
        summary.update(self.extra)
        summary["status"] = status
        if error:
            summary["error"] = error
        else:
            summary.pop("error", None)
        summary[f"{stage}_wall_time_s"] = round(wall, 3)
        if stage == "fit":
            total = self.fit_elapsed()
            summary["wall_time_s"] = round(total, 3)
            summary["steps"] = trainer.global_step
            summary["epochs"] = trainer.current_epoch
            summary["s_per_step"] = round(total / max(trainer.global_step, 1), 5)
            segments = summary.setdefault("segments", [])
            if segments:
                segments[-1].update(end_step=trainer.global_step, status=status,
                                    start_step=self._start_step, wall_time_s=round(wall, 3))
            ckpt = trainer.checkpoint_callback
            if ckpt is not None and getattr(ckpt, "best_model_path", ""):
                summary["best_checkpoint"] = ckpt.best_model_path
                best = finite_float(getattr(ckpt, "best_model_score", None))
                if best is not None:
                    summary["best_score"] = best
                    summary["best_monitor"] = ckpt.monitor
        summary["parameters"] = sum(p.numel() for p in pl_module.parameters())
        summary["trainable_parameters"] = sum(
            p.numel() for p in pl_module.parameters() if p.requires_grad)
        mem = peak_memory_mb(pl_module.device)
        summary["peak_memory_mb"] = max(mem["peak_rss_mb"], summary.get("peak_memory_mb", 0.0))
        if "peak_gpu_mb" in mem:
            summary["peak_gpu_mb"] = mem["peak_gpu_mb"]
        density = getattr(pl_module, "density", None)
        if density is not None:
            summary["model"] = type(density.flow).__name__
            summary["logdet_estimate"] = bool(density.flow.logdet_is_estimate)
            summary["exact_eval"] = bool(getattr(pl_module, "exact_eval", True))
        dm = trainer.datamodule
        if dm is not None:
            summary["data"] = getattr(dm, "name", type(dm).__name__)
        summary["environment"] = {
            "torch": torch.__version__, "python": platform.python_version(),
            "device": str(pl_module.device), "threads": torch.get_num_threads(),
            "world_size": trainer.world_size, "host": platform.node(),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        run.write_summary(summary)
        self._to_wandb(trainer, summary)

    @staticmethod
    def _to_wandb(trainer: L.Trainer, summary: dict[str, Any]) -> None:
        fields = {k: summary[k] for k in ("status", "parameters", "trainable_parameters",
                                          "peak_memory_mb", "peak_gpu_mb", "s_per_step",
                                          "wall_time_s", "steps", "model", "data")
                  if k in summary}
        fields.update({f"final/{k}": v for k, v in summary.get("metrics", {}).items()})
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment
                if hasattr(run, "summary"):
                    run.summary.update(fields)

    # hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._t0[stage] = time.perf_counter()
        if not trainer.is_global_zero:
            return
        run = self._run(trainer)
        summary = run.read_summary()
        summary.update(self.extra)
        summary["status"] = RUNNING
        summary.pop("error", None)
        if stage == "fit":
            summary.setdefault("segments", []).append({
                "segment": len(summary.get("segments", [])) + 1,
                "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "resumed_from": str(trainer.ckpt_path) if trainer.ckpt_path else None,
                "host": socket.gethostname(), "pid": os.getpid(), "status": RUNNING,
            })
        run.write_summary(summary)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start_step = trainer.global_step
        csv_logger = self._csv(trainer)
        if self._resumed and csv_logger is not None and trainer.is_global_zero:
            # rows written after the checkpoint are redone by this segment: drop them
            csv_logger.drop_redone_rows(trainer.global_step)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        if trainer.state.fn == "validate":
            self._update(trainer, pl_module, "validate", FINISHED)
        elif trainer.state.fn == "fit":
            self._update(trainer, pl_module, "fit", RUNNING)  # a killed run keeps its progress

    def on_fit_end(self, trainer, pl_module):
        interrupted = self.stop is not None and self.stop.signal is not None
        self._update(trainer, pl_module, "fit", INTERRUPTED if interrupted else FINISHED)

    def on_test_end(self, trainer, pl_module):
        self._update(trainer, pl_module, "test", FINISHED)

    def on_exception(self, trainer, pl_module, exception):
        stage = str(trainer.state.fn.value) if trainer.state.fn else "fit"
        if isinstance(exception, KeyboardInterrupt) or type(exception).__name__ == "SIGTERMException":
            self._update(trainer, pl_module, stage, INTERRUPTED, type(exception).__name__)
        else:
            self._update(trainer, pl_module, stage, FAILED,
                         f"{type(exception).__name__}: {exception}")
