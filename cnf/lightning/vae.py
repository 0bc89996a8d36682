"""Training a VAE with a flow posterior (:class:`cnf.vae.FlowVAE`) on binarized images.

Logged (nats per example): ``train/loss`` (recon + β·KL during KL warm-up), ``train/neg_elbo``,
``train/recon``, ``train/kl``, ``train/beta``, ``time/train_step_s``; at validation and test
``{val,test}/neg_elbo``, ``/recon``, ``/kl`` (averaged over ``eval_samples`` posterior samples
per example) and the importance-weighted NLL ``test/nll_iw`` with ``iw_samples`` samples
(``val/nll_iw`` with ``val_iw_samples`` when > 0).
"""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable as SchedulerFactory
from lightning.pytorch.cli import OptimizerCallable as OptimizerFactory
from torch import Tensor

from cnf.errors import ConfigError, NonFiniteError
from cnf.lightning.base import OptimizationMixin
from cnf.lightning.base import default_adam as _adam
from cnf.vae import FlowVAE

__all__ = ["VAE"]


class VAE(OptimizationMixin, L.LightningModule):
    """Maximize the ELBO of ``vae`` (see the module docstring for the metrics).

    Args:
        vae: the model, e.g. ``FlowVAE(64, 8, posterior="sylvester_orthogonal")``.
        optimizer, lr_scheduler: as in :class:`cnf.lightning.DensityEstimation`.
        kl_warmup_steps: β rises linearly from 0 to 1 over this many steps (0: β = 1), the
            warm-up of the Sylvester-flows protocol (there over 100 epochs).
        eval_samples: posterior samples per example for the val/test ELBO.
        iw_samples: importance samples per example for ``test/nll_iw`` (0: skip).
        val_iw_samples: the same for ``val/nll_iw`` (0: skip).

    Example::

        >>> module = VAE(FlowVAE(64, 8, posterior="planar"), kl_warmup_steps=1000)
    """

    def __init__(self, vae: FlowVAE, optimizer: OptimizerFactory = _adam,
                 lr_scheduler: SchedulerFactory | None = None, kl_warmup_steps: int = 0,
                 eval_samples: int = 10, iw_samples: int = 1000, val_iw_samples: int = 0):
        super().__init__()
        if kl_warmup_steps < 0 or eval_samples < 1 or iw_samples < 0 or val_iw_samples < 0:
            raise ConfigError("kl_warmup_steps, iw_samples, val_iw_samples must be >= 0 and "
                              "eval_samples >= 1")
        self.vae = vae
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        self.kl_warmup_steps, self.eval_samples = kl_warmup_steps, eval_samples
        self.iw_samples, self.val_iw_samples = iw_samples, val_iw_samples
        self._step_started: float | None = None
        self.save_hyperparameters(ignore=["vae", "optimizer", "lr_scheduler"])

    @staticmethod
    def batch_data(batch: Any) -> Tensor:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return x.reshape(x.shape[0], -1)

    def beta(self, step: int | None = None) -> float:
        if self.kl_warmup_steps == 0:
            return 1.0
        t = self.global_step if step is None else step
        return min(1.0, t / self.kl_warmup_steps)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = self.batch_data(batch)
        recon, kl = self.vae.elbo_terms(x)
        beta = self.beta()
        recon, kl = recon.mean(), kl.mean()
        loss = recon + beta * kl
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"the VAE loss became {float(loss)} at step {self.global_step} (recon "
                f"{float(recon)}, kl {float(kl)}); lower the learning rate, clip gradients "
                f"(trainer.gradient_clip_val) or use fewer flow layers")
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/neg_elbo", (recon + kl).detach())
        self.log("train/recon", recon.detach())
        self.log("train/kl", kl.detach())
        self.log("train/beta", beta)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._step_started is not None:
            self.log("time/train_step_s", time.perf_counter() - self._step_started)

    def _eval_step(self, batch: Any, stage: str, iw: int) -> None:
        x = self.batch_data(batch)
        grad = self.vae.flow is not None and _needs_grad(self.vae.flow)
        with torch.set_grad_enabled(grad):
            recon, kl = self.vae.elbo_terms(x, self.eval_samples)
            kw = {"batch_size": x.shape[0], "sync_dist": True}
            self.log(f"{stage}/neg_elbo", (recon + kl).mean().detach(),
                     prog_bar=stage == "val", **kw)
            self.log(f"{stage}/recon", recon.mean().detach(), **kw)
            self.log(f"{stage}/kl", kl.mean().detach(), **kw)
            if iw > 0:
                # bound the rows per pass: B·chunk latents at a time
                chunk = max(1, (2_000 if grad else 20_000) // x.shape[0])
                nll = self.vae.importance_nll(x, iw, chunk=chunk)
                self.log(f"{stage}/nll_iw", nll.mean().detach(), **kw)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_iw_samples)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.iw_samples)




def _needs_grad(flow: torch.nn.Module) -> bool:
    """Whether evaluating ``flow`` needs autograd: CNF blocks whose divergence is computed by
    backward passes (``divergence_impl='autograd'``, or ``'auto'`` with a net without
    forward-mode products). Forward-mode (jvp) traces run under ``no_grad``, which keeps
    evaluation memory flat (an autograd graph through every solver step of k·B importance
    samples ran out of 23 GB at k = 100, B = 300)."""
    for m in flow.modules():
        if type(m).__name__ == "CNF":
            impl = getattr(m, "divergence_impl", "autograd")
            if impl == "autograd" or (impl == "auto" and not getattr(m.net, "supports_jvp", False)):
                return True
    return False
