"""What every cnf LightningModule shares: optimizers from config, a guard that stops a run
before a non-finite loss or gradient reaches the weights, and the test of whether this step's
metrics reach the loggers.

The guard costs one reduction and one host synchronisation per optimizer step, however many
parameters the model has: the training loss (every loss since the last optimizer step, under
gradient accumulation) and a total of the gradients (their sum on CPU, their norm elsewhere)
are checked together just before the optimizer step. Only when that check fails are the parameters examined one by one, to name
them in the error (and to rule out a finite gradient whose norm merely overflowed).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from cnf.errors import NonFiniteError

__all__ = ["OptimizationMixin"]

_PLAIN = (str, bool, int, float)


class OptimizationMixin:
    """Mixed into a ``LightningModule`` that sets ``self.optimizer_factory`` (``params ->
    Optimizer``) and ``self.scheduler_factory`` (``optimizer -> scheduler`` or ``None``, stepped
    every step).

    A module calls :meth:`guard_loss` with its training loss in ``training_step``; the check
    runs in ``on_before_optimizer_step``, so no update is ever applied after a non-finite
    loss or with a non-finite gradient.
    """

    optimizer_factory: Any
    scheduler_factory: Any

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets a plain attribute on the module around every hook it calls (about
        # 40 times a step); ``nn.Module.__setattr__`` spends ~2.5 us each on checks that
        # only matter for tensors and modules. A plain value (None, str, bool, int, float)
        # under a name that is not a parameter, buffer or submodule is stored exactly as
        # ``nn.Module`` would store it; everything else goes through ``nn.Module``.
        if value is None or type(value) in _PLAIN:
            d = self.__dict__
            try:
                registered = name in d["_parameters"] or name in d["_buffers"] or name in d["_modules"]
            except KeyError:  # before nn.Module.__init__
                registered = False
            if not registered:
                object.__setattr__(self, name, value)
                return
        super().__setattr__(name, value)  # type: ignore[misc]

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- logging cadence -------------------------------------------------------------------
    def metrics_logged_this_step(self, after_optimizer_step: bool = False) -> bool:
        """Whether Lightning writes this step's ``on_step`` metrics to the loggers (every
        ``trainer.log_every_n_steps`` steps, and when the trainer is about to stop), or this
        is the last step (``trainer.max_steps``), whose values the run summary keeps.

        Logging a training metric on the other steps changes no logged value: the loggers
        never see it, only ``callback_metrics`` (and the progress bar) would hold it until the
        next logged step. Call from ``training_step`` (default) or, with
        ``after_optimizer_step=True``, from ``on_train_batch_end``.
        """
        trainer = self.trainer  # type: ignore[attr-defined]
        step = self.global_step + (0 if after_optimizer_step else 1)  # type: ignore[attr-defined]
        every = trainer.log_every_n_steps
        last = trainer.max_steps is not None and 0 < trainer.max_steps <= step
        return bool(every and step % every == 0) or trainer.should_stop or last

    # -- non-finite guard ------------------------------------------------------------------
    def nonfinite_hint(self) -> str:
        """A model-specific remedy appended to the non-finite loss / gradient errors (e.g.
        ``"; or ..."``); empty by default."""
        return ""

    def guard_loss(self, loss: Tensor, **parts: Tensor) -> None:
        """Record this step's training loss (and named parts, for the error message); it is
        checked with the gradients before the optimizer step, without a host sync here."""
        finite = torch.isfinite(loss.detach())
        pending = getattr(self, "_loss_finite", None)
        self._loss_finite = finite if pending is None else pending & finite
        self._last_loss = (loss.detach(), {k: v.detach() for k, v in parts.items()})

    def _raise_loss(self) -> None:
        loss, parts = self._last_loss
        detail = ", ".join(f"{k}={float(v)}" for k, v in parts.items())
        raise NonFiniteError(
            f"the training loss became {float(loss)} at step {self.global_step} "  # type: ignore[attr-defined]
            + (f"({detail})" if detail else "") + "; lower the learning rate "
            "(model.optimizer.init_args.lr), clip gradients (trainer.gradient_clip_val), or "
            f"tighten the ODE tolerances{self.nonfinite_hint()}. The weights were not updated."
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # the optimizer's own parameter list: exactly what the step would update, without
        # walking the module tree every step
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]
                 if p.grad is not None]
        loss_ok = getattr(self, "_loss_finite", None)
        self._loss_finite = None
        checks = []
        if loss_ok is not None:
            checks.append(loss_ok)
        if grads:
            checks.append(torch.isfinite(_gradient_total(grads)))
        if not checks or bool(torch.stack(checks).all()):  # the one host sync per step
            return
        if loss_ok is not None and not bool(loss_ok):
            self._raise_loss()
        bad = [n for n, p in self.named_parameters()  # type: ignore[attr-defined]
               if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            raise NonFiniteError(
                f"non-finite gradients at step {self.global_step} in {bad[:5]}; lower the "  # type: ignore[attr-defined]
                f"learning rate (model.optimizer.init_args.lr) or clip gradients "
                f"(trainer.gradient_clip_val){self.nonfinite_hint()}. The weights were not "
                f"updated."
            )


def _gradient_total(grads: list[Tensor]) -> Tensor:
    """A number that is finite when every gradient element is (a non-finite element makes
    it inf or nan; finite values may overflow it, which the caller then re-checks one by
    one). On CPU the sum of per-tensor sums (half the cost of the total norm, which on CPU
    takes one norm kernel per tensor after grouping them); elsewhere the total norm (one
    fused kernel per device and dtype)."""
    if all(g.is_cpu for g in grads):
        return torch.stack([g.sum() for g in grads]).sum()
    return torch.nn.utils.get_total_norm(grads, error_if_nonfinite=False)


def default_adam(params: Any) -> torch.optim.Optimizer:
    """The default optimizer of the training modules: Adam at lr 1e-3."""
    return torch.optim.Adam(params, lr=1e-3)
