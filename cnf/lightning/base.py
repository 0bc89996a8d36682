"""What every cnf LightningModule shares: optimizers from config, and a guard that stops a
run before non-finite gradients reach the weights."""

from __future__ import annotations

from typing import Any

import torch

from cnf.errors import NonFiniteError

__all__ = ["OptimizationMixin"]


class OptimizationMixin:
    """Mixed into a ``LightningModule`` that sets ``self.optimizer_factory`` (``params ->
    Optimizer``) and ``self.scheduler_factory`` (``optimizer -> scheduler`` or ``None``, stepped
    every step)."""

    optimizer_factory: Any
    scheduler_factory: Any

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        bad = [n for n, p in self.named_parameters()
               if p.grad is not None and not torch.isfinite(p.grad).all()]
        if bad:
            raise NonFiniteError(
                f"non-finite gradients at step {self.global_step} in {bad[:5]}; lower the "
                f"learning rate (model.optimizer.init_args.lr) or clip gradients "
                f"(trainer.gradient_clip_val). The weights were not updated."
            )


def default_adam(params: Any) -> torch.optim.Optimizer:
    """The default optimizer of the training modules: Adam at lr 1e-3."""
    return torch.optim.Adam(params, lr=1e-3)
