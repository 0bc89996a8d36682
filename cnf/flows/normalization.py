"""Normalization flows: ActNorm (Kingma & Dhariwal, 2018, "Glow") and FFJORD's moving
batch norm (Grathwohl et al., 2019).

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

__all__ = ["ActNorm", "MovingBatchNorm"]


class ActNorm(Flow):
    """Per-channel affine flow with data-dependent initialization.

    ``forward``: ``z = (x + bias) * exp(log_scale)``, ``log|det| = (Π spatial) · Σ log_scale``.

    Example::

        >>> norm = ActNorm(3)
        >>> z, logdet = norm(torch.randn(128, 3) * 5 + 2)   # initializes on this batch
        >>> bool(z.mean(0).abs().max() < 1e-5), bool((z.std(0) - 1).abs().max() < 1e-5)
        (True, True)
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


class MovingBatchNorm(Flow):
    """FFJORD's ``MovingBatchNorm1d`` for vectors ``[B, D]``: normalize with running
    statistics, then an affine map::

        z = (x - m) / sqrt(v + eps) · exp(w) + b,    log|det| = Σ (w - ½ log(v + eps))

    ``m, v`` are the running mean and variance, updated from every training batch as
    ``m ← m - decay (m - mean(x))``. With ``bn_lag = 0`` (FFJORD's default) training uses
    the running statistics *before* the update, so samples stay independent; with
    ``bn_lag > 0`` it uses a debiased lagged mix of batch and running statistics (and
    gradients flow through the batch statistics; as in FFJORD, the debiasing divides by
    ``1 - bn_lagᵏ⁺¹`` although the running variance starts at 1, not 0, so early variances
    are overestimated). ``inverse`` always uses the running
    statistics, so ``forward`` and ``inverse`` are exact inverses in eval mode (or with
    ``bn_lag = 0`` between updates). Both directions are cheap.

    Example::

        >>> bn = MovingBatchNorm(2)
        >>> z, logdet = bn(torch.randn(100, 2) * 3)   # updates the running statistics
    """

    def __init__(self, num_features: int, eps: float = 1e-4, decay: float = 0.1,
                 bn_lag: float = 0.0):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.decay = decay
        self.bn_lag = bn_lag
        self.weight = nn.Parameter(torch.zeros(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("step", torch.zeros(()))

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    def _spatial(self, x: Tensor) -> int:
        return int(x[0, 0].numel())

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean = self.running_mean.clone()
        var = self.running_var.clone()
        if self.training:
            flat = x.transpose(0, 1).reshape(self.num_features, -1)
            batch_mean, batch_var = flat.mean(1), flat.var(1)
            if self.bn_lag > 0:
                debias = 1.0 - self.bn_lag ** (self.step + 1)
                mean = (batch_mean - (1 - self.bn_lag) * (batch_mean - mean)) / debias
                var = (batch_var - (1 - self.bn_lag) * (batch_var - var)) / debias
            with torch.no_grad():
                self.running_mean -= self.decay * (self.running_mean - batch_mean.detach())
                self.running_var -= self.decay * (self.running_var - batch_var.detach())
                self.step += 1
        log_scale = self.weight - 0.5 * torch.log(var + self.eps)
        z = (x - self._view(mean, x)) * torch.exp(self._view(log_scale, x)) + self._view(self.bias, x)
        return z, (log_scale.sum() * self._spatial(x)).expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        log_scale = self.weight - 0.5 * torch.log(self.running_var + self.eps)
        x = (z - self._view(self.bias, z)) * torch.exp(-self._view(log_scale, z))
        x = x + self._view(self.running_mean, z)
        return x, (-log_scale.sum() * self._spatial(z)).expand(z.shape[0])
