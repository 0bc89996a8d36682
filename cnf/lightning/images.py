"""Density estimation on discrete images: ``DensityEstimation`` plus bits/dim and sample grids.

``ImageDensityEstimation`` trains a :class:`cnf.dequantization.DequantizedDensity` on
integer-level images (``cnf.data.images.ImageDataModule``). On top of the metrics of
``DensityEstimation`` (``*/nll`` is the dequantization bound on the discrete NLL, in nats per
image) it logs ``train/bpd``, ``val/bpd`` and ``test/bpd`` (bits per dimension on the data's
levels) and writes sample grids to ``<run dir>/plots/samples_final.png`` (one row per
temperature).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from cnf.dequantization import DequantizedDensity
from cnf.errors import ConfigError
from cnf.flows.base import gather
from cnf.lightning.base import default_adam
from cnf.lightning.callbacks import run_dir
from cnf.lightning.density import DensityEstimation, OptimizerFactory, SchedulerFactory

__all__ = ["ImageDensityEstimation", "ImageSamples", "save_image_grid"]


def save_image_grid(images: Tensor, levels: int, path: str | Path, nrow: int = 8,
                    title: str | None = None, row_labels: list[str] | None = None) -> Path:
    """Save integer-level images ``[N, C, H, W]`` as a PNG grid with ``nrow`` images per row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = images.detach().float().cpu() / max(levels - 1, 1)
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = torch.ones(c, rows * (h + 1), nrow * (w + 1))
    for k in range(n):
        r, q = divmod(k, nrow)
        grid[:, r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = images[k]
    fig, ax = plt.subplots(figsize=(nrow * 0.6 + 1, rows * 0.6 + 0.6))
    img = grid[0] if c == 1 else grid.permute(1, 2, 0)
    ax.imshow(img.clamp(0, 1).numpy(), cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.set_xticks([])
    if row_labels:
        ax.set_yticks([r * (h + 1) + h / 2 for r in range(len(row_labels))], row_labels)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class ImageDensityEstimation(DensityEstimation):
    """Maximum likelihood on discrete images, logging bits/dim.

    Args:
        density: a ``DequantizedDensity`` whose ``levels`` match the data module's.
        optimizer, lr_scheduler, exact_eval: as in ``DensityEstimation``.
        temperatures: sample-grid rows written at the end of fit (empty: no grid).
        samples_per_row: images per grid row.
    """

    def __init__(
        self,
        density: DequantizedDensity,
        optimizer: OptimizerFactory = default_adam,
        lr_scheduler: SchedulerFactory | None = None,
        exact_eval: bool = True,
        temperatures: list[float] | None = None,
        samples_per_row: int = 10,
    ):
        if not isinstance(density, DequantizedDensity):
            raise ConfigError(
                "ImageDensityEstimation needs a cnf.dequantization.DequantizedDensity "
                f"(got {type(density).__name__}); wrap the flow in it to set the levels, the "
                "dequantization and the logit preprocessing")
        super().__init__(density, optimizer, lr_scheduler, exact_eval)
        self.temperatures = [1.0, 0.8, 0.6] if temperatures is None else list(temperatures)
        self.samples_per_row = samples_per_row

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        levels = getattr(dm, "levels", None)
        if levels is not None and levels != self.density.levels:
            raise ConfigError(
                f"the data has {levels} levels but the model's DequantizedDensity has "
                f"levels={self.density.levels}; set model.density.init_args.levels: {levels}")

    def _bpd(self, nll: Tensor) -> Tensor:
        return nll / (self.density.dim * math.log(2.0))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = super().training_step(batch, batch_idx)
        extra = gather(self.density, "extra_losses")
        nll = loss - sum(extra.values()) if extra else loss
        self.log("train/bpd", self._bpd(nll.detach()), prog_bar=True)
        return loss

    def _eval_step(self, batch: Any, stage: str) -> Tensor:
        nll = super()._eval_step(batch, stage)
        x = self.batch_data(batch)
        self.log(f"{stage}/bpd", self._bpd(nll), prog_bar=stage == "val", sync_dist=True,
                 batch_size=x.shape[0])
        return nll

    def configure_callbacks(self) -> list[L.Callback]:
        return [ImageSamples(self.temperatures, self.samples_per_row)] if self.temperatures else []


class ImageSamples(L.Callback):
    """At the end of fit, write ``plots/samples_final.png``: one row of samples per temperature."""

    def __init__(self, temperatures: list[float], per_row: int = 10):
        super().__init__()
        self.temperatures = temperatures
        self.per_row = per_row
        self.last_path: Path | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        density = pl_module.density
        was_training = pl_module.training
        pl_module.eval()
        torch.manual_seed(0)
        # no torch.no_grad(): CNF log-dets need autograd even in sampling; detach instead
        rows = [density.sample(self.per_row, temperature=t).detach().cpu()
                for t in self.temperatures]
        if was_training:
            pl_module.train()
        out = run_dir(trainer) / "plots" / "samples_final.png"
        self.last_path = save_image_grid(
            torch.cat(rows), density.levels, out, nrow=self.per_row,
            row_labels=[f"T={t:g}" for t in self.temperatures],
            title=f"{type(density.flow).__name__} samples, step {trainer.global_step}")
