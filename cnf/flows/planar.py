"""Planar flow (Rezende & Mohamed, 2015, "Variational inference with normalizing flows").

The map is defined in the generative direction (latent ``z`` -> data ``x``)::

    x = z + û · tanh(wᵀz + b),      log|det dx/dz| = log|1 + (wᵀû) · tanh'(wᵀz + b)|

and ``û = u + (m(wᵀu) - wᵀu) · w / ‖w‖²`` with ``m(a) = -1 + softplus(a + log(e - 1))``,
so that ``wᵀû = m(wᵀu) > -1`` for every parameter value: the map is then strictly increasing
along ``w`` and invertible (the paper's Appendix A condition), enforced by the
parameterization. The paper's ``m`` is ``-1 + softplus(a)``; the shift ``log(e - 1)`` makes
``m(0) = 0``, so a small random ``(u, w)`` starts near the identity (with the paper's ``m``,
``û`` gains ``-0.31 · w / ‖w‖²``, which is large exactly when ``w`` is small).

**Cheap direction: ``inverse`` (latent -> data, sampling)** is analytic. ``forward`` (data ->
latent, density evaluation) is numerical: writing ``z = x - û tanh(α + b)`` with
``α = wᵀz``, the scalar ``α`` solves ``α + (wᵀû) tanh(α + b) = wᵀx``, a strictly increasing
1D equation whose root lies in ``[wᵀx - |wᵀû|, wᵀx + |wᵀû|]``. It is solved by Newton's
method safeguarded by bisection to ``|residual| ≤ tol · (1 + |wᵀx| + |wᵀû|)`` — relative to
the size of the terms, which is what float arithmetic can resolve (``tol`` defaults to
1e-12 in float64, 1e-6 in float32); gradients flow through the root by the implicit function
theorem (one differentiable Newton step at the converged root). A root not reached in
``max_iter`` iterations raises :class:`cnf.errors.InverseError`.

Use it where sampling is the hot path (variational posteriors); put it in a density model
only with that cost in mind.

Parameters come in three ways: shared (the default), shared plus per-sample offsets from a
linear layer on the context (``context_dim > 0``), or **fully amortized** (``amortized=True``,
van den Berg et al., 2018): the layer holds no parameters and the context *is* the raw
``(u, w, b)`` of each sample, ``[B, 2D + 1]`` (``param_dim``), e.g. from a VAE encoder's
head; :class:`cnf.flows.amortized.AmortizedChain` splits one such vector among layers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnf.errors import ConfigError, ShapeError
from cnf.flows.base import Chain, Flow, amortized_params
from cnf.numerics import monotone_root

__all__ = ["Planar", "PlanarFlow"]


_M_SHIFT = math.log(math.e - 1)  # softplus(_M_SHIFT) = 1, so m(0) = 0


class Planar(Flow):
    """One planar layer ``x = z + û tanh(wᵀz + b)`` on ``[B, D]`` (see the module docstring).

    Args:
        dim: D.
        context_dim: if > 0, the parameters ``(u, w, b)`` are amortized: a linear layer maps
            the context ``[B, context_dim]`` to per-sample parameters, added to the shared
            ones (as in VAEs with flow posteriors, van den Berg et al., 2018).
        tol: absolute/relative tolerance of the numerical ``forward`` (None: by dtype).
        max_iter: iteration cap of the root finder.
        amortized: no parameters of its own; ``context`` ``[B, param_dim = 2D + 1]`` holds
            each sample's raw ``(u, w, b)`` (excludes ``context_dim``).

    Example::

        >>> flow = Planar(2)
        >>> x, logdet = flow.inverse(torch.randn(8, 2))   # analytic (sampling)
        >>> z, _ = flow(x)                               # numerical root finding
    """

    def __init__(self, dim: int, context_dim: int = 0, tol: float | None = None,
                 max_iter: int = 100, init_scale: float = 0.1, amortized: bool = False):
        super().__init__()
        if dim < 1:
            raise ConfigError(f"Planar needs dim >= 1, got {dim}")
        if amortized and context_dim:
            raise ConfigError("Planar: amortized=True takes every parameter from the context; "
                              "leave context_dim at 0")
        self.dim, self.context_dim = dim, context_dim
        self.tol, self.max_iter = tol, max_iter
        self.amortized, self.param_dim = amortized, 2 * dim + 1
        #: iterations used by the last numerical ``forward``
        self.last_iterations = 0
        self.amortize = None
        if amortized:
            return
        self.u = nn.Parameter(init_scale * torch.randn(dim))
        self.w = nn.Parameter(init_scale * torch.randn(dim))
        self.b = nn.Parameter(torch.zeros(1))
        self.amortize = nn.Linear(context_dim, 2 * dim + 1) if context_dim > 0 else None
        if self.amortize is not None:
            nn.init.zeros_(self.amortize.weight)
            nn.init.zeros_(self.amortize.bias)

    def _params(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Per-sample (or shared, leading dim 1) ``û [*, D], w [*, D], b [*, 1]``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ShapeError(f"Planar was built for inputs [batch, {self.dim}], got {list(x.shape)}")
        if self.amortized:
            u, w, b = amortized_params(self, x, context).split([self.dim, self.dim, 1], dim=1)
        else:
            u, w, b = self.u[None], self.w[None], self.b[None]
        if self.amortize is not None:
            if context is None:
                raise ShapeError(f"this Planar layer is amortized (context_dim={self.context_dim}): "
                                 f"pass context of shape [batch, {self.context_dim}]")
            du, dw, db = self.amortize(context).split([self.dim, self.dim, 1], dim=1)
            u, w, b = u + du, w + dw, b + db
        wu = (w * u).sum(1, keepdim=True)
        w_sq = (w * w).sum(1, keepdim=True).clamp_min(1e-12)
        u_hat = u + (F.softplus(wu + _M_SHIFT) - 1 - wu) * w / w_sq
        return u_hat, w, b

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Analytic generative map ``x = z + û tanh(wᵀz + b)`` and ``log|det dx/dz|``."""
        u_hat, w, b = self._params(z, context)
        h = torch.tanh((z * w).sum(1, keepdim=True) + b)
        x = z + u_hat * h
        c = (w * u_hat).sum(1, keepdim=True)
        logdet = torch.log1p(c * (1 - h * h)).squeeze(1)
        return x, logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Numerical inverse of the planar map (root finding along ``w``), ``log|det dz/dx|``."""
        u_hat, w, b = self._params(x, context)
        s = (x * w).sum(1, keepdim=True)
        c = (w * u_hat).sum(1, keepdim=True)
        alpha = self._solve(s.detach(), c.detach(), b.detach())
        # one Newton step with the graph attached: at the root its value is unchanged and its
        # derivative is the implicit-function-theorem one, -(∂g/∂θ) / (∂g/∂α)
        if torch.is_grad_enabled():
            h = torch.tanh(alpha + b)
            g = alpha + c * h - s
            alpha = alpha - g / (1 + c * (1 - h * h)).detach()
        h = torch.tanh(alpha + b)
        z = x - u_hat * h
        logdet = -torch.log1p(c * (1 - h * h)).squeeze(1)
        return z, logdet

    def _solve(self, s: Tensor, c: Tensor, b: Tensor) -> Tensor:
        """Root of ``g(α) = α + c·tanh(α + b) - s`` (strictly increasing for ``c > -1``), to
        ``|g| <= tol · (1 + |s| + |c|)``: relative to the terms of ``g`` — with a large ``|c|``
        (e.g. after lr-1e-2 training) the residual cannot be resolved below eps·|c|."""
        alpha, self.last_iterations = monotone_root(
            lambda a: a + c * torch.tanh(a + b) - s,
            lambda a: 1 + c * (1 - torch.tanh(a + b) ** 2),
            s - c.abs(), s + c.abs(), start=s - c * torch.tanh(s + b),
            scale=1 + s.abs() + c.abs(), tol=self.tol, max_iter=self.max_iter,
            name="Planar.forward")
        return alpha


class PlanarFlow(Chain):
    """``num_layers`` planar layers. Sampling (``inverse``) is analytic; density evaluation
    (``forward``) solves one 1D root per layer.

    Example::

        >>> from cnf.distributions import Density, StandardNormal
        >>> q = Density(PlanarFlow(2, num_layers=16), StandardNormal(2))
        >>> x, log_q = q.sample_and_log_prob(256)   # no root finding on this path
    """

    def __init__(self, dim: int, num_layers: int = 16, context_dim: int = 0,
                 tol: float | None = None, max_iter: int = 100):
        super().__init__([Planar(dim, context_dim, tol, max_iter) for _ in range(num_layers)])
        self.dim = dim
