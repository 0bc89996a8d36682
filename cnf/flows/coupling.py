"""Coupling flows for vectors: RealNVP's affine coupling (Dinh et al., 2017).

A binary ``mask`` splits ``x`` into a conditioning part ``x_a = x[mask]`` kept as is and a
transformed part ``x_b``::

    z_b = x_b * exp(s(x_a)) + t(x_a),     log|det dz/dx| = Σ s(x_a)

Both directions cost one network pass. The log-scale is bounded, ``s = c · tanh(ŝ / c)``
with ``c = scale_bound``, which keeps early training stable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cnf.errors import ConfigError
from cnf.flows.base import Chain, Flow
from cnf.flows.nets import MLP

__all__ = ["AffineCoupling", "RealNVP", "alternating_masks"]


def alternating_masks(dim: int, n: int) -> list[list[int]]:
    """``n`` masks over ``dim`` features, alternating between even and odd positions, so
    every feature is transformed by every other layer (works for odd ``dim``)."""
    if dim < 2:
        raise ConfigError(f"coupling flows need dim >= 2 (got dim={dim}); use an elementwise flow")
    even = [1 if i % 2 == 0 else 0 for i in range(dim)]
    odd = [1 - m for m in even]
    return [even if k % 2 == 0 else odd for k in range(n)]


class AffineCoupling(Flow):
    """Affine coupling layer: features where ``mask == 1`` condition the affine map of the
    others. Cheap in both directions.

    Example::

        >>> layer = AffineCoupling(3, mask=[1, 0, 1], hidden=32)
        >>> z, logdet = layer(torch.randn(4, 3))
    """

    def __init__(
        self,
        dim: int,
        mask: Sequence[int],
        hidden: int = 64,
        depth: int = 2,
        act: str = "relu",
        scale_bound: float = 3.0,
        context_dim: int = 0,
    ):
        super().__init__()
        mask_t = torch.as_tensor(list(mask), dtype=torch.bool)
        if mask_t.numel() != dim or mask_t.all() or not mask_t.any():
            raise ConfigError(
                f"mask {list(mask)} must have {dim} entries with both 0s and 1s"
            )
        self.register_buffer("mask", mask_t)
        self.dim = dim
        self.scale_bound = float(scale_bound)
        n_cond = int(mask_t.sum())
        self.n_out = dim - n_cond
        self.net = MLP(n_cond + context_dim, 2 * self.n_out, hidden, depth, act)

    def _params(self, x_a: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x_a if context is None else torch.cat([x_a, context], dim=1)
        shift, raw = self.net(h).chunk(2, dim=1)
        log_scale = self.scale_bound * torch.tanh(raw / self.scale_bound)
        return shift, log_scale

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, self.mask], x[:, ~self.mask]
        shift, log_scale = self._params(x_a, context)
        z = torch.empty_like(x)
        z[:, self.mask] = x_a
        z[:, ~self.mask] = x_b * torch.exp(log_scale) + shift
        return z, log_scale.sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z_a, z_b = z[:, self.mask], z[:, ~self.mask]
        shift, log_scale = self._params(z_a, context)
        x = torch.empty_like(z)
        x[:, self.mask] = z_a
        x[:, ~self.mask] = (z_b - shift) * torch.exp(-log_scale)
        return x, -log_scale.sum(dim=1)


class RealNVP(Chain):
    """RealNVP for vectors: ``num_layers`` affine couplings with alternating masks.

    Args:
        dim: data dimension D (>= 2).
        num_layers: number of coupling layers.
        hidden, depth, act: conditioner MLP width, hidden layers and activation.
        scale_bound: bound on each log-scale (tanh soft clamp).
        context_dim: width of an optional conditioning vector.

    Example::

        >>> from cnf.distributions import Density, StandardNormal
        >>> density = Density(RealNVP(2, num_layers=8), StandardNormal(2))
    """

    def __init__(
        self,
        dim: int,
        num_layers: int = 8,
        hidden: int = 64,
        depth: int = 2,
        act: str = "relu",
        scale_bound: float = 3.0,
        context_dim: int = 0,
    ):
        masks = alternating_masks(dim, num_layers)
        super().__init__(
            [AffineCoupling(dim, m, hidden, depth, act, scale_bound, context_dim) for m in masks]
        )
        self.dim = dim
