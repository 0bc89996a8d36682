"""Elementwise flows: each output coordinate depends on its own input coordinate only.

The Jacobian is diagonal, so ``log|det| = Σ_i log|f'(x_i)|`` and both directions are cheap
(closed form). Event shapes are arbitrary (``[B, D]`` vectors or ``[B, C, H, W]`` images),
except for the learnable flows whose parameters have the event's shape (``shape`` argument).

- :class:`ElementwiseAffine`: ``z = x · exp(s) + t`` with learnable ``s, t``.
- :class:`LeakyReLU`: ``z = x`` for ``x ≥ 0`` and ``a·x`` otherwise (fixed ``a > 0``).
- :class:`PiecewiseLinear`: a learnable monotone piecewise-linear map on ``[-B, B]`` with
  ``K`` bins, the identity outside (Müller et al., 2019, "Neural importance sampling").
- :class:`Logit` / :class:`Sigmoid`: ``z = logit(λ + (1 - 2λ) x)`` for data in ``(0, 1)``
  (Dinh et al., 2017, RealNVP's preprocessing) and its inverse.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnf.errors import ConfigError
from cnf.flows.base import Flow, as_tensor_shape, sum_except_batch

__all__ = ["ElementwiseAffine", "LeakyReLU", "PiecewiseLinear", "Logit", "Sigmoid"]


class ElementwiseAffine(Flow):
    """Learnable per-entry affine map ``z = x · exp(log_scale) + shift``; both directions
    cheap; ``log|det dz/dx| = Σ log_scale``.

    Args:
        shape: event shape (``D`` or ``(C, H, W)``); one scale and shift per entry.

    Example::

        >>> flow = ElementwiseAffine(3)
        >>> z, logdet = flow(torch.randn(8, 3))
    """

    def __init__(self, shape: int | Sequence[int]):
        super().__init__()
        self.shape = as_tensor_shape(shape)
        self.log_scale = nn.Parameter(torch.zeros(self.shape))
        self.shift = nn.Parameter(torch.zeros(self.shape))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = x * self.log_scale.exp() + self.shift
        return z, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = (z - self.shift) * torch.exp(-self.log_scale)
        return x, -self.log_scale.sum().expand(z.shape[0])


class LeakyReLU(Flow):
    """``z = x`` for ``x ≥ 0``, ``z = a·x`` for ``x < 0`` with a fixed slope ``a > 0``; both
    directions cheap; ``log|det| = (number of negative entries) · log a``.

    Example::

        >>> z, logdet = LeakyReLU(0.1)(torch.randn(8, 2))
    """

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        if not negative_slope > 0:
            raise ConfigError(f"LeakyReLU needs negative_slope > 0 to be invertible, got {negative_slope}")
        self.negative_slope = float(negative_slope)

    def _map(self, x: Tensor, slope: float) -> tuple[Tensor, Tensor]:
        neg = x < 0
        y = torch.where(neg, x * slope, x)
        logdet = sum_except_batch(neg.to(x.dtype)) * math.log(slope)
        return y, logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._map(x, self.negative_slope)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._map(z, 1.0 / self.negative_slope)


class PiecewiseLinear(Flow):
    """A learnable monotone piecewise-linear map on ``[-bound, bound]`` per entry, the
    identity outside. Bin widths ``w_k`` and heights ``h_k`` are softmax-normalized so that
    both sum to ``2·bound`` (the map is continuous at ±bound); inside bin ``k``::

        z = y_k + (x - x_k) · h_k / w_k,     log|dz/dx| = log h_k - log w_k

    Both directions are cheap (a bin search and a linear map). Widths and heights are at
    least ``min_bin`` (relative), so slopes are bounded.

    Example::

        >>> flow = PiecewiseLinear(2, bins=8, bound=3.0)
        >>> z, logdet = flow(torch.randn(8, 2))
    """

    def __init__(self, shape: int | Sequence[int], bins: int = 8, bound: float = 3.0,
                 min_bin: float = 1e-3):
        super().__init__()
        if bins < 1 or bound <= 0 or not 0 < min_bin * bins < 1:
            raise ConfigError(f"PiecewiseLinear needs bins >= 1, bound > 0 and min_bin·bins < 1 "
                              f"(got bins={bins}, bound={bound}, min_bin={min_bin})")
        self.shape = as_tensor_shape(shape)
        self.bins, self.bound, self.min_bin = int(bins), float(bound), float(min_bin)
        self.raw_widths = nn.Parameter(torch.zeros(*self.shape, bins))
        self.raw_heights = nn.Parameter(torch.zeros(*self.shape, bins))

    def _knots(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        size = self.min_bin + (1 - self.min_bin * self.bins) * F.softmax(raw, dim=-1)
        knots = F.pad(torch.cumsum(size, dim=-1), (1, 0))
        knots = 2 * self.bound * knots - self.bound
        return knots, 2 * self.bound * size

    def _map(self, x: Tensor, src_raw: Tensor, dst_raw: Tensor) -> tuple[Tensor, Tensor]:
        src_knots, src_size = self._knots(src_raw)
        dst_knots, dst_size = self._knots(dst_raw)
        inside = (x > -self.bound) & (x < self.bound)
        xc = x.clamp(-self.bound, self.bound)
        shape = x.shape
        inner = src_knots[..., 1:-1].expand(*shape, self.bins - 1)
        k = (xc.unsqueeze(-1) >= inner).sum(-1, keepdim=True)

        def pick(t: Tensor) -> Tensor:
            return t.expand(*shape, t.shape[-1]).gather(-1, k).squeeze(-1)

        slope = pick(dst_size) / pick(src_size)
        y = pick(dst_knots) + (xc - pick(src_knots)) * slope
        y = torch.where(inside, y, x)
        logdet = torch.where(inside, slope.log(), torch.zeros_like(slope))
        return y, sum_except_batch(logdet)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._map(x, self.raw_widths, self.raw_heights)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._map(z, self.raw_heights, self.raw_widths)


class Logit(Flow):
    """``z = logit(λ + (1 - 2λ)·x)`` for data ``x ∈ (0, 1)`` (RealNVP's preprocessing; ``λ``
    keeps the logit away from ±∞ at pixel values 0 and 1). Both directions cheap::

        log|dz/dx| = log(1 - 2λ) - log(p) - log(1 - p),   p = λ + (1 - 2λ) x

    Example::

        >>> z, logdet = Logit(alpha=0.05)(torch.rand(8, 1, 4, 4))
    """

    def __init__(self, alpha: float = 0.0):
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ConfigError(f"Logit needs 0 <= alpha < 0.5, got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * x
        z = torch.log(p) - torch.log1p(-p)
        logdet = math.log1p(-2 * self.alpha) - torch.log(p) - torch.log1p(-p)
        return z, sum_except_batch(logdet)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        p = torch.sigmoid(z)
        x = (p - self.alpha) / (1 - 2 * self.alpha)
        # log σ'(z) = -softplus(-z) - softplus(z), stable for large |z|
        logdet = -F.softplus(-z) - F.softplus(z) - math.log1p(-2 * self.alpha)
        return x, sum_except_batch(logdet)


class Sigmoid(Flow):
    """``z = σ(x)``: the inverse of :class:`Logit` (with ``λ = 0``), mapping reals into
    ``(0, 1)``; both directions cheap; ``log|dz/dx| = -softplus(-x) - softplus(x)``.

    Example::

        >>> z, logdet = Sigmoid()(torch.randn(8, 2))
    """

    def __init__(self):
        super().__init__()
        self._logit = Logit(0.0)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._logit.inverse(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._logit.forward(z)
