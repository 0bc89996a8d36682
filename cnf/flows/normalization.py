"""Normalization flows: ActNorm (Kingma & Dhariwal, 2018, "Glow").

ActNorm is a per-channel affine map ``z = (x + b) · exp(s)``, whose parameters are set from
the first batch it sees so that ``z`` has zero mean and unit variance per channel. The
"initialized" flag is a buffer, so it is saved in the state dict: reloading a checkpoint never
re-initializes from new data. Channels are dimension 1 (``[B, D]`` vectors or ``[B, C, ...]``
images); both directions are cheap.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnf.flows.base import Flow

__all__ = ["ActNorm"]


class ActNorm(Flow):
    """Per-channel affine flow with data-dependent initialization.

    ``forward``: ``z = (x + bias) * exp(log_scale)``, ``log|det| = (Π spatial) · Σ log_scale``.

    Example::

        >>> norm = ActNorm(3)
        >>> z, logdet = norm(torch.randn(128, 3) * 5 + 2)   # initializes on this batch
        >>> z.mean(0), z.std(0)                             # ≈ 0, ≈ 1
    """

    def __init__(self, num_features: int, eps: float = 1e-6):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.log_scale = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set bias and scale so that ``forward(x)`` is standardized per channel."""
        flat = x.transpose(0, 1).reshape(self.num_features, -1)
        mean = flat.mean(1)
        std = flat.std(1) if flat.shape[1] > 1 else torch.ones_like(mean)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def _spatial(self, x: Tensor) -> int:
        return int(x[0, 0].numel())

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        z = (x + self._view(self.bias, x)) * torch.exp(self._view(self.log_scale, x))
        logdet = self.log_scale.sum() * self._spatial(x)
        return z, logdet.expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = z * torch.exp(-self._view(self.log_scale, z)) - self._view(self.bias, z)
        logdet = -self.log_scale.sum() * self._spatial(z)
        return x, logdet.expand(z.shape[0])
