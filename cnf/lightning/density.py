"""Density estimation by maximum likelihood, for any ``cnf.distributions.Density``."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
from lightning.pytorch.cli import LRSchedulerCallable as SchedulerFactory
from lightning.pytorch.cli import OptimizerCallable as OptimizerFactory
from torch import Tensor

from cnf.distributions import Density
from cnf.flows.base import Flow, exact_logdet
from cnf.lightning.base import OptimizationMixin
from cnf.lightning.base import default_adam as _adam

__all__ = ["DensityEstimation"]


class DensityEstimation(OptimizationMixin, L.LightningModule):
    """Train ``density`` on mean negative log-likelihood (nats per sample).

    Batches are ``x``, ``(x,)`` or ``(x, context)`` (conditional: ``log p(x | context)``).
    Logs ``train/loss``, ``train/nll``, ``val/nll``, ``test/nll``, ``time/train_step_s``,
    ``val/nll_original_units`` / ``test/...`` when the data module standardizes (its
    ``log_prob_offset``: the NLL of the data in the file's units),
    every loss term a flow reports through ``Flow.extra_losses()`` (as ``train/<name>``) and
    every counter it reports through ``Flow.stats()`` (e.g. ``train/nfe_forward``,
    ``val/nfe_forward``).

    Args:
        density: the model, e.g. ``Density(RealNVP(2), StandardNormal(2))``.
        optimizer: a callable ``params -> Optimizer`` (from config: ``class_path:
            torch.optim.Adam`` with ``init_args``).
        lr_scheduler: optional callable ``optimizer -> scheduler``; stepped every step.
        exact_eval: evaluate val/test log-likelihoods with exact log-determinants
            (exact traces / Jacobians) when the flow has a stochastic estimator.
    """

    def __init__(
        self,
        density: Density,
        optimizer: OptimizerFactory = _adam,
        lr_scheduler: SchedulerFactory | None = None,
        exact_eval: bool = True,
    ):
        super().__init__()
        self.density = density
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.exact_eval = exact_eval
        self._automatic: bool | None = None  # see automatic_optimization
        self._step_started: float | None = None
        self._sources: dict[str, list[Flow]] = {}  # sub-flows with stats / extra_losses
        self.save_hyperparameters(ignore=["density", "optimizer", "lr_scheduler"])

    # -- helpers -------------------------------------------------------------------------
    @staticmethod
    def batch_data(batch: Any) -> Tensor:
        return batch[0] if isinstance(batch, (list, tuple)) else batch

    @staticmethod
    def batch_context(batch: Any) -> Tensor | None:
        """The context of a batch ``(x, context)``; ``None`` for ``x`` or ``(x,)``."""
        return batch[1] if isinstance(batch, (list, tuple)) and len(batch) > 1 else None

    def _log_prob_offset(self) -> float:
        """What the data module adds to get log-likelihoods in the data's original units
        (undoing its standardization); 0.0 when it does not say."""
        try:
            dm = self.trainer.datamodule
        except RuntimeError:  # not attached to a Trainer (called directly)
            return 0.0
        return float(getattr(dm, "log_prob_offset", 0.0) or 0.0)

    def _gather(self, method: str) -> dict[str, Any]:
        """``gather(self.density, method)`` over the sub-flows that implement ``method``,
        found once per fit instead of walking every module at every step."""
        sources = self._sources.get(method)
        if sources is None:
            sources = [m for m in self.density.modules()
                       if isinstance(m, Flow) and getattr(type(m), method) is not getattr(Flow, method)]
            self._sources[method] = sources
        total: dict[str, Any] = {}
        for m in sources:
            for key, value in getattr(m, method)().items():
                total[key] = total[key] + value if key in total else value
        return total

    def _log_stats(self, stage: str, **kw: Any) -> None:
        for key, value in self._gather("stats").items():
            self.log(f"{stage}/{key}", float(value), **kw)

    # -- training ------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._sources = {}

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self.batch_data(batch)
        nll = -self.density.log_prob(x, self.batch_context(batch)).mean()
        extra = self._gather("extra_losses")
        loss = nll + sum(extra.values()) if extra else nll
        # checked with the gradients before the optimizer step: one host sync per step
        self.guard_loss(loss, nll=nll)
        # metrics only on the steps the loggers write (every trainer.log_every_n_steps):
        # the same logged values, without Lightning's per-call cost on the other steps.
        # Under DDP every rank logs these keys: the mean over ranks is logged.
        if self.metrics_logged_this_step():
            self.log("train/loss", loss.detach(), prog_bar=True, sync_dist=True)
            self.log("train/nll", nll.detach(), sync_dist=True)
            for name, value in extra.items():
                self.log(f"train/{name}", value.detach(), sync_dist=True)
        if not self.automatic_optimization:
            self._optimizer_step(loss)
        return loss

    # -- the lean optimization step ------------------------------------------------------
    # Lightning's automatic optimization wraps every step in a closure and a dozen hook
    # calls; on a small model that is most of the loop's overhead
    # (experiments/bench/bench_overhead.py). When nothing needs it (no gradient clipping or
    # accumulation configured on the trainer, and the training step is this class's own),
    # the step is taken here instead: zero_grad, backward, optimizer step, scheduler step,
    # as Lightning would, in the same order. The non-finite guard still runs inside the
    # optimizer step (``on_before_optimizer_step``), before any update.
    @property
    def automatic_optimization(self) -> bool:
        """``False`` (the lean step above) unless set explicitly, or unless the trainer clips
        or accumulates gradients, or a subclass has its own ``training_step``."""
        if self._automatic is not None:
            return self._automatic
        if type(self).training_step is not DensityEstimation.training_step:
            return True
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached: as Lightning's default
            return True
        return bool(trainer.gradient_clip_val) or trainer.accumulate_grad_batches != 1

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        self._automatic = bool(value)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning counts optimizer steps in one of two progress records, by optimization
        # mode; a checkpoint written in the other mode (e.g. before the lean step existed, or
        # with gradient clipping on) holds the count in the other one. Carry it over, so a
        # resume continues at the checkpoint's step whatever the mode.
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
        auto = fit_loop.get("epoch_loop.automatic_optimization.optim_progress", {})
        auto = auto.get("optimizer", {}).get("step")
        manual = fit_loop.get("epoch_loop.manual_optimization.optim_step_progress")
        if not isinstance(auto, dict) or not isinstance(manual, dict):
            return
        source, target = (manual, auto) if self.automatic_optimization else (auto, manual)
        for part in ("total", "current"):
            for key in ("ready", "completed"):
                if part in source and part in target and key in source[part]:
                    target[part][key] = max(target[part].get(key, 0), source[part][key])

    def _optimizer_step(self, loss: Tensor) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not self.metrics_logged_this_step(after_optimizer_step=True):
            return
        # counters such as nfe_backward are complete only after the backward pass
        self._log_stats("train", sync_dist=True)  # NFE etc.: mean over DDP ranks
        if self._step_started is not None:
            self.log("time/train_step_s", time.perf_counter() - self._step_started)

    # -- evaluation ----------------------------------------------------------------------
    def _eval_log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.exact_eval:
            with exact_logdet(self.density):
                return self.density.log_prob(x, context)
        return self.density.log_prob(x, context)

    def _eval_step(self, batch: Any, stage: str) -> Tensor:
        x = self.batch_data(batch)
        log_prob = self._eval_log_prob(x, self.batch_context(batch))
        nll = -log_prob.mean()
        kw = {"sync_dist": True, "batch_size": x.shape[0]}
        self.log(f"{stage}/nll", nll, prog_bar=stage == "val", **kw)
        offset = self._log_prob_offset()
        if offset:  # a standardizing data module: also the NLL of the unstandardized data
            self.log(f"{stage}/nll_original_units", nll - offset, **kw)
        dim = math.prod(x.shape[1:])
        self.log(f"{stage}/nll_per_dim", nll / dim, **kw)
        self._log_stats(stage, **kw)
        return nll

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Per-example log-likelihood (nats, the model's units: add the data module's
        ``log_prob_offset`` for the data's original units): the anomaly score of each input."""
        return self._eval_log_prob(self.batch_data(batch), self.batch_context(batch))
