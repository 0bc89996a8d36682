"""Radial flow (Rezende & Mohamed, 2015, "Variational inference with normalizing flows").

The map is defined in the generative direction (latent ``z`` -> data ``x``), a contraction or
expansion around a centre ``z0``::

    x = z + β h(r) (z - z0),   r = ‖z - z0‖,   h(r) = 1 / (α + r)
    log|det dx/dz| = (D - 1) log(1 + β h(r)) + log(1 + β α h(r)²)

with ``α = softplus(α̂) > 0`` and ``β = -α + softplus(β̂) > -α``: the invertibility condition
``β ≥ -α`` holds for every parameter value by construction.

**Cheap direction: ``inverse`` (latent -> data, sampling).** ``forward`` (data -> latent)
needs the radius: ``x - z0`` is parallel to ``z - z0`` and ``ρ = ‖x - z0‖ = r (1 + β/(α + r))``,
so ``r`` is the positive root of ``r² + (α + β - ρ) r - αρ = 0``. We solve that quadratic in
closed form (the cancellation-free branch of the formula for each sign of ``α + β - ρ``)
rather than by iteration: the error is round-off only (measured 1.3e-15 relative in float64 in
``tests/flows/test_radial.py``) and it is differentiable as written.

With ``amortized=True`` (van den Berg et al., 2018) the layer holds no parameters: the
context is each sample's raw ``(z0, α̂, β̂)``, ``[B, D + 2]`` (``param_dim``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnf.errors import ConfigError, ShapeError
from cnf.flows.base import Chain, Flow, amortized_params

__all__ = ["Radial", "RadialFlow"]


class Radial(Flow):
    """One radial layer on ``[B, D]`` (see the module docstring).

    Args:
        dim: D.
        context_dim: if > 0, ``(z0, α̂, β̂)`` are amortized: a linear layer maps the context
            ``[B, context_dim]`` to per-sample offsets of the shared parameters.
        amortized: no parameters of its own; ``context`` ``[B, param_dim = D + 2]`` holds
            each sample's raw ``(z0, α̂, β̂)`` (excludes ``context_dim``).

    Example::

        >>> flow = Radial(2)
        >>> x, logdet = flow.inverse(torch.randn(8, 2))   # sampling direction
        >>> z, _ = flow(x)                               # closed-form radius
    """

    def __init__(self, dim: int, context_dim: int = 0, init_scale: float = 0.1,
                 amortized: bool = False):
        super().__init__()
        if dim < 1:
            raise ConfigError(f"Radial needs dim >= 1, got {dim}")
        if amortized and context_dim:
            raise ConfigError("Radial: amortized=True takes every parameter from the context; "
                              "leave context_dim at 0")
        self.dim, self.context_dim = dim, context_dim
        self.amortized, self.param_dim = amortized, dim + 2
        self.amortize = None
        if amortized:
            return
        self.z0 = nn.Parameter(init_scale * torch.randn(dim))
        self.alpha_raw = nn.Parameter(torch.zeros(1))
        self.beta_raw = nn.Parameter(torch.zeros(1))
        self.amortize = nn.Linear(context_dim, dim + 2) if context_dim > 0 else None
        if self.amortize is not None:
            nn.init.zeros_(self.amortize.weight)
            nn.init.zeros_(self.amortize.bias)

    def _params(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ShapeError(f"Radial was built for inputs [batch, {self.dim}], got {list(x.shape)}")
        if self.amortized:
            z0, a, b = amortized_params(self, x, context).split([self.dim, 1, 1], dim=1)
        else:
            z0, a, b = self.z0[None], self.alpha_raw[None], self.beta_raw[None]
        if self.amortize is not None:
            if context is None:
                raise ShapeError(f"this Radial layer is amortized (context_dim={self.context_dim}): "
                                 f"pass context of shape [batch, {self.context_dim}]")
            dz, da, db = self.amortize(context).split([self.dim, 1, 1], dim=1)
            z0, a, b = z0 + dz, a + da, b + db
        alpha = F.softplus(a)
        beta = -alpha + F.softplus(b)
        return z0, alpha, beta

    def _logdet(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        h = 1 / (alpha + r)
        ld = (self.dim - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h * h)
        return ld.squeeze(1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Analytic generative map and ``log|det dx/dz|``."""
        z0, alpha, beta = self._params(z, context)
        diff = z - z0
        r = diff.norm(dim=1, keepdim=True)
        x = z + beta / (alpha + r) * diff
        return x, self._logdet(r, alpha, beta)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Closed-form inverse of the radial map (radius from a quadratic); ``log|det dz/dx|``."""
        z0, alpha, beta = self._params(x, context)
        diff = x - z0
        rho = diff.norm(dim=1, keepdim=True)
        bq = alpha + beta - rho
        sq = torch.sqrt(bq * bq + 4 * alpha * rho)
        pos = bq > 0
        # r = 2αρ / (B + √·) for B > 0 and (√· - B) / 2 otherwise: no cancellation either way;
        # the unused branch gets a safe denominator so its gradient stays finite
        r = torch.where(pos, 2 * alpha * rho / torch.where(pos, bq + sq, torch.ones_like(sq)),
                        0.5 * (sq - bq))
        z = z0 + diff / (1 + beta / (alpha + r))
        return z, -self._logdet(r, alpha, beta)


class RadialFlow(Chain):
    """``num_layers`` radial layers; sampling (``inverse``) and density (``forward``) are
    both closed form.

    Example::

        >>> from cnf.distributions import Density, StandardNormal
        >>> q = Density(RadialFlow(2, num_layers=16), StandardNormal(2))
    """

    def __init__(self, dim: int, num_layers: int = 16, context_dim: int = 0):
        super().__init__([Radial(dim, context_dim) for _ in range(num_layers)])
        self.dim = dim
