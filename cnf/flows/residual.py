"""Invertible residual flows: i-ResNet (Behrmann et al., ICML 2019, arXiv 1811.00995) and
Residual Flows (Chen et al., NeurIPS 2019, arXiv 1906.02735).

A block is ``F(x) = x + g(x)`` with ``Lip(g) ≤ L < 1``, enforced by spectrally normalized
layers (:mod:`cnf.flows.lipschitz`) and 1-Lipschitz activations, so ``L = Π c_i``. Then

- ``forward`` (data -> latent) is cheap: one pass of ``g`` plus the log-det estimator
  (:mod:`cnf.flows.logdet`: ``exact``, ``series`` or ``roulette``);
- ``inverse`` is the fixed-point iteration ``x ← y - g(x)`` from ``x₀ = y``, a contraction
  with rate ``L``; it stops when the a-posteriori bound ``L/(1-L)·‖x_k - x_{k-1}‖₂`` is below
  ``tol`` for every sample (or the step reaches rounding level), warns or raises
  :class:`cnf.errors.InverseError` at ``max_iter``, and reports its iteration count in
  :meth:`ResidualBlock.stats`. Its gradient is implicit: ``∂x/∂y = (I + J)⁻¹``, applied by a
  second fixed-point iteration in backward, so sampling is differentiable too.

In ``exact`` mode (``cnf.flows.base.exact_logdet``) every block computes ``log|det(I+J)|``
from the full Jacobian; evaluation and the contract harness use it.

Models: :class:`IResNet` and :class:`ResidualFlow` for vectors, :class:`ConvResidualFlow` for
images (multi-scale: squeeze / factor-out).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnf.errors import ConfigError, InverseError
from cnf.flows.base import Chain, Flow
from cnf.flows.lipschitz import (
    SpectralConv2d,
    SpectralLinear,
    lipschitz_activation,
    spectral_layers,
)
from cnf.flows.logdet import ExactLogDet, LogDetEstimator, make_estimator
from cnf.flows.multiscale import multiscale
from cnf.flows.normalization import ActNorm

__all__ = [
    "ResidualBlock", "lipschitz_mlp", "lipschitz_cnn", "IResNet", "ResidualFlow",
    "ConvResidualFlow",
]

_DEFAULT_TOL = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 1e-3,
                torch.bfloat16: 1e-2}


def lipschitz_mlp(dim: int, hidden: int = 64, depth: int = 2, coeff: float = 0.97,
                  act: str = "lipswish", **power_kw) -> nn.Sequential:
    """``g`` for vectors: ``depth`` hidden layers of width ``hidden``, each linear map
    spectrally normalized to ``coeff``, activations 1-Lipschitz; ``Lip(g) ≤ coeff^(depth+1)``."""
    layers: list[nn.Module] = []
    width = dim
    for _ in range(depth):
        layers += [SpectralLinear(width, hidden, coeff, **power_kw), lipschitz_activation(act)]
        width = hidden
    layers.append(SpectralLinear(width, dim, coeff, **power_kw))
    return nn.Sequential(*layers)


def lipschitz_cnn(channels: int, input_size: tuple[int, int], hidden: int = 64,
                  coeff: float = 0.97, act: str = "lipswish", kernel_size: int = 3,
                  **power_kw) -> nn.Sequential:
    """``g`` for images, the i-ResNet / Residual Flows bottleneck: ``k×k conv -> act ->
    1×1 conv -> act -> k×k conv``, each convolution normalized on its operator at
    ``input_size``."""
    h = input_size
    return nn.Sequential(
        SpectralConv2d(channels, hidden, kernel_size, h, coeff, **power_kw),
        lipschitz_activation(act),
        SpectralConv2d(hidden, hidden, 1, h, coeff, **power_kw),
        lipschitz_activation(act),
        SpectralConv2d(hidden, channels, kernel_size, h, coeff, **power_kw),
    )


class _ImplicitGrad:
    """Backward hook turning the gradient of ``x = y - g(x*)`` into the implicit one: the
    incoming ``a`` becomes ``u`` solving ``u = a - Jᵀu`` (i.e. ``u = (I + J)⁻ᵀ a``)."""

    def __init__(self, block: ResidualBlock, gx: Tensor, x0: Tensor):
        self.block, self.gx, self.x0 = block, gx, x0

    def __call__(self, a: Tensor) -> Tensor:
        u = a
        for _ in range(self.block.max_iter):
            (ju,) = torch.autograd.grad(self.gx, self.x0, u, retain_graph=True)
            u_new = a - ju
            step = (u_new - u).reshape(u.shape[0], -1).norm(dim=1)
            u = u_new
            scale = u.reshape(u.shape[0], -1).norm(dim=1) + 1.0
            if bool((self.block._bound_factor() * step <= self.block._tol(u) * scale).all()):
                break
        return u


class ResidualBlock(Flow):
    """``F(x) = x + g(x)`` with ``Lip(g) < 1``; see the module doc.

    Args:
        net: ``g``. Its spectrally normalized layers give the Lipschitz bound ``L`` used by
            the inverse's stopping rule (``lipschitz`` overrides it).
        estimator: a :class:`~cnf.flows.logdet.LogDetEstimator` or its name (``"exact"``,
            ``"series"``, ``"roulette"``); ``estimator_kw`` go to it.
        tol: inverse tolerance on ``‖x - F⁻¹(y)‖₂`` per sample (default by dtype: 1e-12 in
            float64, 1e-6 in float32).
        max_iter: fixed-point iteration cap; ``on_cap`` ``"warn"`` or ``"raise"`` there.

    Attributes:
        exact: compute the log-det exactly (set by ``exact_logdet``).

    Example::

        >>> block = ResidualBlock(lipschitz_mlp(2, 32, coeff=0.9), estimator="roulette")
        >>> z, logdet = block(torch.randn(16, 2))        # unbiased log-det estimate
        >>> x, _ = block.inverse(z)                       # fixed point, ≤ tol
        >>> block.stats()["inverse_iters"] < 100
        True
    """

    def __init__(self, net: nn.Module, estimator: str | LogDetEstimator = "roulette",
                 tol: float | None = None, max_iter: int = 500, on_cap: str = "warn",
                 lipschitz: float | None = None, **estimator_kw):
        super().__init__()
        self.net = net
        self.estimator = (make_estimator(estimator, **estimator_kw)
                          if isinstance(estimator, str) else estimator)
        self._exact_estimator = ExactLogDet()
        self.exact = False
        if on_cap not in ("warn", "raise"):
            raise ConfigError(f"on_cap must be 'warn' or 'raise', got {on_cap!r}")
        self.tol, self.max_iter, self.on_cap = tol, int(max_iter), on_cap
        self._lipschitz = lipschitz
        bound = self.lipschitz_bound()
        if not bound < 1:
            raise ConfigError(f"the Lipschitz bound of g is {bound:.4g} >= 1, so the block is "
                              f"not invertible; use spectral-norm coefficients < 1")
        self._stats: dict[str, float] = {}

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return not self.exact and self.estimator.stochastic

    def lipschitz_bound(self) -> float:
        """``L ≥ Lip(g)``: the product of the spectral-norm coefficients of ``g``'s layers
        (activations are 1-Lipschitz), unless given at construction."""
        if self._lipschitz is not None:
            return float(self._lipschitz)
        layers = list(spectral_layers(self.net))
        if not layers:
            raise ConfigError("g has no spectrally normalized layer; pass lipschitz=L < 1 "
                              "if it is contractive by construction")
        return math.prod(m.coeff for m in layers)

    def _bound_factor(self) -> float:
        lip = self.lipschitz_bound()
        return lip / (1.0 - lip)

    def _tol(self, ref: Tensor) -> float:
        return self.tol if self.tol is not None else _DEFAULT_TOL.get(ref.dtype, 1e-6)

    def _logdet(self, x: Tensor) -> tuple[Tensor, Tensor]:
        est = self._exact_estimator if self.exact else self.estimator
        gx, logdet = est(self.net, x)
        self._stats.update(est.stats)
        return gx, logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._stats = {}
        gx, logdet = self._logdet(x)
        return x + gx, logdet

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    @torch.no_grad()
    def _fixed_point(self, y: Tensor) -> tuple[Tensor, int]:
        factor, tol = self._bound_factor(), self._tol(y)
        eps = torch.finfo(y.dtype).eps
        x = y
        b = y.shape[0]
        best = torch.full((b,), math.inf, dtype=y.dtype, device=y.device)
        stalled = torch.zeros(b, dtype=torch.long, device=y.device)
        for it in range(1, self.max_iter + 1):
            x_new = y - self.net(x)
            step = (x_new - x).reshape(b, -1).norm(dim=1)
            x = x_new
            bound_ok = factor * step <= tol
            # rounding floor: near the precision of x the steps stop shrinking; after 3 steps
            # without a new minimum no iterate can be better, so stop there
            small = step <= 64 * eps * (y.reshape(b, -1).norm(dim=1) + 1.0)
            improved = step < best
            best = torch.where(improved, step, best)
            stalled = torch.where(improved | ~small, torch.zeros_like(stalled), stalled + 1)
            if bool((bound_ok | (stalled >= 3)).all()):
                return x, it
        err = float((factor * step).max())
        msg = (f"fixed-point inverse of a residual block stopped at max_iter={self.max_iter} "
               f"with error bound {err:.3g} > tol={tol:g}; raise max_iter, loosen tol, or "
               f"lower the spectral-norm coefficient (contraction rate L={self.lipschitz_bound():.4g})")
        if self.on_cap == "raise":
            raise InverseError(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return x, self.max_iter

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._stats = {}
        x_star, iters = self._fixed_point(z)
        if torch.is_grad_enabled() and (z.requires_grad or any(
                p.requires_grad for p in self.net.parameters())):
            # x = z - g(x*) has the fixed point's value; the hook makes its gradient implicit
            x0 = x_star.detach().requires_grad_(True)
            gx = self.net(x0)
            x = z - gx
            x.register_hook(_ImplicitGrad(self, gx, x0))
        else:
            x = x_star
        _, logdet = self._logdet(x)
        self._stats["inverse_iters"] = float(iters)
        return x, -logdet


def _check_coeff(coeff: float) -> None:
    if not 0 < coeff < 1:
        raise ConfigError(f"coeff must be in (0, 1) for invertible residual blocks, got {coeff}")


class _VectorResidual(Chain):
    def __init__(self, dim: int, num_blocks: int, hidden: int, depth: int, coeff: float,
                 act: str, actnorm: bool, estimator: str, estimator_kw: dict,
                 tol: float | None, max_iter: int):
        _check_coeff(coeff)
        if dim < 1 or num_blocks < 1:
            raise ConfigError(f"need dim >= 1 and num_blocks >= 1, got {dim}, {num_blocks}")
        flows: list[Flow] = []
        for _ in range(num_blocks):
            if actnorm:
                flows.append(ActNorm(dim))
            flows.append(ResidualBlock(lipschitz_mlp(dim, hidden, depth, coeff, act),
                                       estimator, tol=tol, max_iter=max_iter, **estimator_kw))
        if actnorm:
            flows.append(ActNorm(dim))
        super().__init__(flows)
        self.dim = dim


class IResNet(_VectorResidual):
    """i-ResNet for vectors (Behrmann et al., 2019): ``num_blocks`` residual blocks with
    ELU MLPs spectrally normalized to ``coeff``, ActNorm between blocks, and the truncated
    power-series log-det (``n_terms``, Hutchinson probes) in training. Forward (density) is
    cheap; inverse (sampling) is a fixed-point iteration per block.

    Example::

        >>> from cnf.distributions import Density, StandardNormal
        >>> density = Density(IResNet(2, num_blocks=4), StandardNormal(2))
        >>> loss = -density.log_prob(torch.randn(64, 2)).mean()
    """

    def __init__(self, dim: int, num_blocks: int = 4, hidden: int = 64, depth: int = 2,
                 coeff: float = 0.9, act: str = "elu", actnorm: bool = True,
                 estimator: str = "series", n_terms: int = 5, probe: str = "rademacher",
                 n_probes: int = 1, tol: float | None = None, max_iter: int = 500):
        super().__init__(dim, num_blocks, hidden, depth, coeff, act, actnorm, estimator,
                         {"n_terms": n_terms, "probe": probe, "n_probes": n_probes},
                         tol, max_iter)


class ResidualFlow(_VectorResidual):
    """Residual Flow for vectors (Chen et al., 2019): residual blocks with LipSwish MLPs
    normalized to ``coeff``, ActNorm between blocks, the unbiased Russian-roulette log-det
    (``dist`` geometric/poisson, ``n_exact_terms`` always computed) and the memory-saving
    Neumann gradient. Forward (density) is cheap; inverse is a fixed-point iteration.

    Example::

        >>> from cnf.distributions import Density, StandardNormal
        >>> density = Density(ResidualFlow(2, num_blocks=4), StandardNormal(2))
        >>> loss = -density.log_prob(torch.randn(64, 2)).mean()
    """

    def __init__(self, dim: int, num_blocks: int = 4, hidden: int = 64, depth: int = 2,
                 coeff: float = 0.97, act: str = "lipswish", actnorm: bool = True,
                 estimator: str = "roulette", dist: str = "geometric", p: float = 0.5,
                 lam: float = 2.0, n_exact_terms: int = 2, neumann_grad: bool = True,
                 probe: str = "rademacher", n_probes: int = 1, n_terms: int = 5,
                 tol: float | None = None, max_iter: int = 500):
        super().__init__(dim, num_blocks, hidden, depth, coeff, act, actnorm, estimator,
                         {"dist": dist, "p": p, "lam": lam, "n_exact_terms": n_exact_terms,
                          "neumann_grad": neumann_grad, "probe": probe, "n_probes": n_probes,
                          "n_terms": n_terms},
                         tol, max_iter)


class ConvResidualFlow(Flow):
    """Multi-scale convolutional Residual Flow / i-ResNet for images ``[C, H, W]``.

    Level ``i`` (``i = 0 … num_scales-1``) works on ``[C·2^i, H/2^i, W/2^i]`` (squeeze, then
    half of the channels factored out, :func:`cnf.flows.multiscale.multiscale`) and is
    ``blocks_per_scale × (ActNorm, ResidualBlock(conv g))``. ``z`` has the shape of ``x``; use a
    ``StandardNormal((C, H, W))`` base. Defaults follow Residual Flows (LipSwish, roulette,
    Neumann gradient); ``act="elu", estimator="series"`` gives the i-ResNet variant. Works on
    8×8 digits on a CPU; for MNIST/CIFAR-10 use ``hidden`` 256–512 and more blocks on a GPU.
    Exact mode costs one vector-Jacobian product per input dimension of each block (64 at
    8×8, 3,072 for CIFAR-10): for large images evaluate with the estimator
    (``exact_eval: false``), with more probes for a lower variance.

    Example::

        >>> flow = ConvResidualFlow((1, 8, 8), num_scales=2, blocks_per_scale=2, hidden=16)
        >>> z, logdet = flow(torch.randn(4, 1, 8, 8))
    """

    def __init__(self, input_shape: Sequence[int], num_scales: int = 2,
                 blocks_per_scale: int = 4, hidden: int = 64, coeff: float = 0.98,
                 act: str = "lipswish", kernel_size: int = 3, estimator: str = "roulette",
                 dist: str = "geometric", p: float = 0.5, lam: float = 2.0,
                 n_exact_terms: int = 2, neumann_grad: bool = True, probe: str = "rademacher",
                 n_probes: int = 1, n_terms: int = 5, tol: float | None = None,
                 max_iter: int = 500):
        super().__init__()
        _check_coeff(coeff)
        c, h, w = (int(s) for s in input_shape)
        if num_scales < 1 or blocks_per_scale < 1:
            raise ConfigError("num_scales and blocks_per_scale must be >= 1")
        f = 2 ** (num_scales - 1)
        if h % f or w % f:
            raise ConfigError(f"{num_scales} scales need H and W divisible by {f}, got {h}x{w}")
        est_kw = {"dist": dist, "p": p, "lam": lam, "n_exact_terms": n_exact_terms,
                  "neumann_grad": neumann_grad, "probe": probe, "n_probes": n_probes,
                  "n_terms": n_terms}
        levels: list[Flow] = []
        for i in range(num_scales):
            ci, hi, wi = c * 2 ** i, h // 2 ** i, w // 2 ** i
            flows: list[Flow] = []
            for _ in range(blocks_per_scale):
                flows.append(ActNorm(ci))
                net = lipschitz_cnn(ci, (hi, wi), hidden, coeff, act, kernel_size)
                flows.append(ResidualBlock(net, estimator, tol=tol, max_iter=max_iter, **est_kw))
            levels.append(Chain(flows))
        self.input_shape = (c, h, w)
        self.flow = multiscale(levels)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.flow(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.flow.inverse(z, context)

