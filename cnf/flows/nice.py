"""NICE (Dinh, Krueger & Bengio, 2015, "NICE: Non-linear independent components estimation").

- :class:`AdditiveCoupling`: ``z_b = x_b + m(x_a)``, ``z_a = x_a``; volume preserving
  (``log|det| = 0``).
- :class:`DiagonalScaling`: ``z = x · exp(s)``, ``log|det| = Σ s`` — the paper's final layer,
  the only place the model changes volume.
- :class:`NICE`: alternating additive couplings followed by the scaling layer. The paper uses
  a standard logistic base (:class:`cnf.distributions.StandardLogistic`); a normal base works
  too.

Both directions of every layer are cheap (one network pass).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnf.errors import ConfigError, ShapeError
from cnf.flows.base import Chain, Flow
from cnf.flows.coupling import alternating_masks
from cnf.flows.nets import MLP

__all__ = ["AdditiveCoupling", "DiagonalScaling", "NICE"]


class AdditiveCoupling(Flow):
    """``z = x`` where ``mask == 1``; ``z_b = x_b + m(x_a[, context])`` elsewhere; ``log|det| = 0``.

    Example::

        >>> layer = AdditiveCoupling(4, mask=[1, 0, 1, 0])
        >>> z, logdet = layer(torch.randn(8, 4))   # logdet == 0
    """

    def __init__(self, dim: int, mask: Sequence[int], hidden: int = 64, depth: int = 2,
                 act: str = "relu", context_dim: int = 0):
        super().__init__()
        mask_t = torch.as_tensor(list(mask), dtype=torch.bool)
        if mask_t.numel() != dim or mask_t.all() or not mask_t.any():
            raise ConfigError(f"mask {list(mask)} must have {dim} entries with both 0s and 1s")
        self.dim = dim
        self.register_buffer("idx_a", mask_t.nonzero().flatten())
        self.register_buffer("idx_b", (~mask_t).nonzero().flatten())
        self.net = MLP(len(self.idx_a) + context_dim, len(self.idx_b), hidden, depth, act)

    def _shift(self, x: Tensor, context: Tensor | None) -> Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ShapeError(f"AdditiveCoupling was built for [batch, {self.dim}], got {list(x.shape)}")
        h = x[:, self.idx_a]
        if context is not None:
            h = torch.cat([h, context], dim=1)
        return self.net(h)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = x.index_add(1, self.idx_b, self._shift(x, context))
        return z, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = z.index_add(1, self.idx_b, self._shift(z, context), alpha=-1)
        return x, z.new_zeros(z.shape[0])


class DiagonalScaling(Flow):
    """``z = x · exp(s)`` with a learnable vector ``s``; ``log|det dz/dx| = Σ s``.

    Example::

        >>> z, logdet = DiagonalScaling(2)(torch.randn(8, 2))
    """

    def __init__(self, dim: int):
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x * self.log_scale.exp(), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z * torch.exp(-self.log_scale), -self.log_scale.sum().expand(z.shape[0])


class NICE(Chain):
    """NICE: ``num_layers`` additive couplings (alternating halves) and a diagonal scaling.

    The paper's setup is 4 couplings, 5 hidden layers of 1000 ReLUs (MNIST) and a logistic
    base; defaults here are sized for toy data.

    Example::

        >>> from cnf.distributions import Density, StandardLogistic
        >>> density = Density(NICE(2, num_layers=4), StandardLogistic(2))
    """

    def __init__(self, dim: int, num_layers: int = 4, hidden: int = 64, depth: int = 3,
                 act: str = "relu", context_dim: int = 0):
        masks = alternating_masks(dim, num_layers)
        flows: list[Flow] = [AdditiveCoupling(dim, m, hidden, depth, act, context_dim) for m in masks]
        flows.append(DiagonalScaling(dim))
        super().__init__(flows)
        self.dim = dim
