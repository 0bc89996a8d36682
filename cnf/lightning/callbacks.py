"""Callbacks: density plots for 2D models and the run summary (``summary.json``)."""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from cnf.flows.base import exact_logdet

__all__ = ["PeriodicPlot", "DensityPlot2D", "RunSummary", "peak_memory_mb", "run_dir"]


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


def _as_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


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
        nll = _as_float(trainer.callback_metrics.get("val/nll"))
        fig.suptitle(f"{type(density.flow).__name__} — step {step}"
                     + (f", val/nll {nll:.3f}" if nll is not None else ""))
        return self.save(fig, trainer, filename)


class RunSummary(L.Callback):
    """Write ``<run dir>/summary.json``: final metrics, wall time, seconds per step, parameter
    count, peak memory, best checkpoint and status. Updated after fit, validate and test; on
    an exception it records ``status: failed`` and the error, keeping everything else."""

    def __init__(self, extra: dict[str, Any] | None = None):
        super().__init__()
        self.extra = extra or {}
        self._t0: dict[str, float] = {}

    def _path(self, trainer: L.Trainer) -> Path:
        return run_dir(trainer) / "summary.json"

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str,
                status: str, error: str | None = None) -> None:
        if not trainer.is_global_zero:
            return
        path = self._path(trainer)
        summary: dict[str, Any] = {}
        if path.exists():
            try:
                summary = json.loads(path.read_text())
            except json.JSONDecodeError:
                summary = {}
        metrics = summary.setdefault("metrics", {})
        for key, value in trainer.callback_metrics.items():
            f = _as_float(value)
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
            summary["wall_time_s"] = round(wall, 3)
            summary["steps"] = trainer.global_step
            summary["epochs"] = trainer.current_epoch
            summary["s_per_step"] = round(wall / max(trainer.global_step, 1), 5)
            ckpt = trainer.checkpoint_callback
            if ckpt is not None and getattr(ckpt, "best_model_path", ""):
                summary["best_checkpoint"] = ckpt.best_model_path
                best = _as_float(getattr(ckpt, "best_model_score", None))
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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
        tmp.replace(path)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._t0[stage] = time.perf_counter()

    def on_fit_end(self, trainer, pl_module):
        self._update(trainer, pl_module, "fit", "finished")

    def on_validation_end(self, trainer, pl_module):
        if trainer.state.fn == "validate":
            self._update(trainer, pl_module, "validate", "finished")

    def on_test_end(self, trainer, pl_module):
        self._update(trainer, pl_module, "test", "finished")

    def on_exception(self, trainer, pl_module, exception):
        stage = str(trainer.state.fn.value) if trainer.state.fn else "fit"
        self._update(trainer, pl_module, stage, "failed", f"{type(exception).__name__}: {exception}")
