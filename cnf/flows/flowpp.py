"""Flow++ couplings (Ho et al., 2019): a logistic-mixture CDF as the elementwise map.

A binary mask splits ``x`` into a conditioning part ``x_a`` kept as is and a transformed
part ``x_b``. A conditioner maps ``x_a`` to, for every entry of ``x_b``, ``K`` mixture logits
``π``, means ``μ``, log-scales ``log s`` and an affine pair ``(a, b)``::

    F(x) = Σ_k π_k σ((x − μ_k) / s_k)                      (mixture of logistics CDF, in (0, 1))
    y    = exp(a) · σ⁻¹(F(x_b)) + b
    log|dy/dx| = a + log f(x) − log F(x) − log(1 − F(x)),   f = F'

All three terms are computed from ``logsigmoid`` and ``logsumexp`` of the components, so the
map and its gradients stay finite far into the tails (``|x| = 1e4`` in float32; there
``σ⁻¹(F(x)) ≈ (x − μ)/s`` grows linearly instead of saturating).

**Cost**: ``forward`` (data → latent, the density direction) is one conditioner pass.
``inverse`` (sampling) solves ``σ⁻¹(F(x)) = (y − b) e^{−a}`` by bisection: since σ is
increasing, ``σ⁻¹(F(x))`` lies between ``min_k`` and ``max_k`` of ``(x − μ_k)/s_k``, which gives
an exact bracket ``[min_k(μ_k + s_k t), max_k(μ_k + s_k t)]`` for the solution; bisection
halves it until it is narrower than ``inverse_tol`` (absolute, in ``x``) or adjacent
floating-point numbers are reached, at most ``max_iter`` times (then
:class:`~cnf.errors.InverseError`). The default bracket tolerance is ``1e-12`` for float64 and
``1e-6`` for float32 inputs. Measured on 20,000 random 5-component mixtures
(``tests/flows/test_flowpp.py``): float64 roots are within ``2.5e-13`` of the true ``x``;
float32 roots are within ``1.2e-5`` of the float64 root of the same equation (``5.7e-6 ·
(1 + |x|)``) — there the rounding of ``σ⁻¹(F)`` in float32, not the bisection, sets the error,
and the tests assert ``3e-5 · (1 + |x|)``.

The conditioners are cnf's MLP (vectors) and Glow-style ConvNet (images); Flow++'s gated
attention conditioners are not reproduced. Flow++ clamps the component log-scales below at
``-7``; here they are soft-bounded to ``(-7, 7)`` by ``7 tanh(· / 7)`` (the upper bound keeps
the bisection bracket finite for inputs far outside the training data), and ``a`` by
``scale_bound · tanh(â / scale_bound)``. The mixture means
start spread over ``[-1, 1]`` (fixed offsets) so the ``K`` components are not symmetric at
initialization.

Example::

    >>> layer = MixtureLogisticCoupling(3, mask=[1, 0, 1], components=4, hidden=16)
    >>> z, logdet = layer(torch.randn(5, 3))
    >>> x, _ = layer.inverse(z)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from cnf.errors import ConfigError, InverseError, ShapeError
from cnf.flows.base import Chain, Flow, sum_except_batch
from cnf.flows.coupling import ImageMaskedCoupling, alternating_masks
from cnf.flows.multiscale import realnvp_multiscale
from cnf.flows.nets import MLP, ConvNet
from cnf.flows.normalization import ActNorm

__all__ = [
    "mixture_log_cdf", "mixture_logit_inverse", "MixtureLogisticCoupling", "FlowPP",
    "ImageMixtureLogisticCoupling", "FlowPPImage",
]

_LOG_SCALE_BOUND = 7.0


def _default_tol(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-6


def mixture_log_cdf(x: Tensor, logits: Tensor, means: Tensor,
                    log_scales: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(log F(x), log(1 − F(x)), log f(x))`` of a mixture of ``K`` logistics.

    ``x`` has shape ``[...]``; ``logits``, ``means``, ``log_scales`` have shape ``[..., K]``.
    """
    u = (x.unsqueeze(-1) - means) * torch.exp(-log_scales)
    log_pi = torch.log_softmax(logits, dim=-1)
    ls_pos, ls_neg = F.logsigmoid(u), F.logsigmoid(-u)
    log_cdf = torch.logsumexp(log_pi + ls_pos, dim=-1)
    log_sf = torch.logsumexp(log_pi + ls_neg, dim=-1)
    log_pdf = torch.logsumexp(log_pi + ls_pos + ls_neg - log_scales, dim=-1)
    return log_cdf, log_sf, log_pdf


def _mixture_logit(x: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    log_cdf, log_sf, _ = mixture_log_cdf(x, logits, means, log_scales)
    return log_cdf - log_sf


@torch.no_grad()
def mixture_logit_inverse(t: Tensor, logits: Tensor, means: Tensor, log_scales: Tensor,
                          tol: float | None = None, max_iter: int = 200) -> Tensor:
    """Solve ``σ⁻¹(F(x)) = t`` for ``x`` by bisection in the exact bracket
    ``[min_k(μ_k + s_k t), max_k(μ_k + s_k t)]``, to absolute tolerance ``tol`` (default:
    ``1e-6`` in float32, ``1e-12`` in float64) or floating-point resolution. No gradient."""
    tol = _default_tol(t.dtype) if tol is None else float(tol)
    ends = means + torch.exp(log_scales) * t.unsqueeze(-1)
    lo, hi = ends.min(dim=-1).values, ends.max(dim=-1).values
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        if bool(((hi - lo) <= tol).all()):
            return mid
        below = _mixture_logit(mid, logits, means, log_scales) < t
        lo_new, hi_new = torch.where(below, mid, lo), torch.where(below, hi, mid)
        if torch.equal(lo_new, lo) and torch.equal(hi_new, hi):
            return mid  # adjacent floating-point numbers: no further progress possible
        lo, hi = lo_new, hi_new
    width = float((hi - lo).max())
    raise InverseError(f"the Flow++ bisection inverse did not reach tolerance {tol:g} in "
                       f"{max_iter} steps (bracket width {width:g}); raise max_iter or "
                       f"inverse_tol")


class _MixtureMap:
    """The elementwise Flow++ map given its parameters ``p[..., 3K + 2]`` (no state)."""

    def __init__(self, components: int, scale_bound: float, offsets: Tensor):
        self.k, self.scale_bound, self.offsets = components, scale_bound, offsets

    def split(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        k = self.k
        logits, means, log_scales = p[..., :k], p[..., k:2 * k], p[..., 2 * k:3 * k]
        means = means + self.offsets.to(p)
        log_scales = _LOG_SCALE_BOUND * torch.tanh(log_scales / _LOG_SCALE_BOUND)
        a = self.scale_bound * torch.tanh(p[..., 3 * k] / self.scale_bound)
        return logits, means, log_scales, a, p[..., 3 * k + 1]

    def forward(self, x: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        logits, means, log_scales, a, b = self.split(p)
        log_cdf, log_sf, log_pdf = mixture_log_cdf(x, logits, means, log_scales)
        y = (log_cdf - log_sf) * torch.exp(a) + b
        return y, a + log_pdf - log_cdf - log_sf

    def inverse(self, y: Tensor, p: Tensor, tol: float | None, max_iter: int
                ) -> tuple[Tensor, Tensor]:
        logits, means, log_scales, a, b = self.split(p)
        t = (y - b) * torch.exp(-a)
        x0 = mixture_logit_inverse(t.detach(), logits.detach(), means.detach(),
                                   log_scales.detach(), tol, max_iter)
        # one Newton step from the bisection root, with autograd: the value moves by less than
        # the tolerance, and gradients w.r.t. y and the parameters are the implicit ones
        log_cdf, log_sf, log_pdf = mixture_log_cdf(x0, logits, means, log_scales)
        log_slope = log_pdf - log_cdf - log_sf
        x = x0 - (log_cdf - log_sf - t) * torch.exp(-log_slope)
        return x, -(a + log_slope)


def _offsets(components: int) -> Tensor:
    return torch.linspace(-1.0, 1.0, components) if components > 1 else torch.zeros(1)


class MixtureLogisticCoupling(Flow):
    """Flow++ coupling for vectors ``[B, D]``: entries with ``mask == 1`` condition the
    logistic-mixture-CDF map of the others (module docstring for the maths).

    Args:
        dim: D (>= 2).
        mask: D zeros and ones (both present).
        components: mixture components K.
        hidden, depth, act: conditioner MLP.
        scale_bound: soft bound on the output log-scale ``a``.
        context_dim: width of an optional conditioning vector.
        inverse_tol, max_iter: bisection tolerance (absolute, ``None``: dtype default) and cap.
    """

    def __init__(self, dim: int, mask: Sequence[int], components: int = 8, hidden: int = 64,
                 depth: int = 2, act: str = "relu", scale_bound: float = 3.0,
                 context_dim: int = 0, inverse_tol: float | None = None, max_iter: int = 200):
        super().__init__()
        mask_t = torch.as_tensor(list(mask), dtype=torch.bool)
        if mask_t.numel() != dim or mask_t.all() or not mask_t.any():
            raise ConfigError(f"mask {list(mask)} must have {dim} entries with both 0s and 1s")
        if components < 1:
            raise ConfigError(f"components must be >= 1, got {components}")
        self.register_buffer("mask", mask_t)
        self.register_buffer("offsets", _offsets(components))
        self.dim, self.components, self.context_dim = dim, components, context_dim
        self.scale_bound = float(scale_bound)
        self.inverse_tol, self.max_iter = inverse_tol, max_iter
        n_cond = int(mask_t.sum())
        self.n_out = dim - n_cond
        self.net = MLP(n_cond + context_dim, self.n_out * (3 * components + 2), hidden, depth,
                       act)

    def _map(self) -> _MixtureMap:
        return _MixtureMap(self.components, self.scale_bound, self.offsets)

    def _params(self, x_a: Tensor, context: Tensor | None) -> Tensor:
        h = x_a if context is None else torch.cat([x_a, context], dim=1)
        return self.net(h).view(x_a.shape[0], self.n_out, 3 * self.components + 2)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ShapeError(f"MixtureLogisticCoupling was built for [batch, {self.dim}] "
                             f"inputs, got {list(x.shape)}")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        x_a, x_b = x[:, self.mask], x[:, ~self.mask]
        y_b, ld = self._map().forward(x_b, self._params(x_a, context))
        z = torch.empty_like(x)
        z[:, self.mask] = x_a
        z[:, ~self.mask] = y_b
        return z, ld.sum(dim=1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        z_a, z_b = z[:, self.mask], z[:, ~self.mask]
        x_b, ld = self._map().inverse(z_b, self._params(z_a, context), self.inverse_tol,
                                      self.max_iter)
        x = torch.empty_like(z)
        x[:, self.mask] = z_a
        x[:, ~self.mask] = x_b
        return x, ld.sum(dim=1)


class FlowPP(Chain):
    """Flow++ for vectors: ``num_layers`` mixture-logistic couplings with alternating masks,
    each preceded by an :class:`~cnf.flows.normalization.ActNorm` when ``actnorm``.

    Example::

        >>> from cnf.distributions import Density, StandardNormal
        >>> density = Density(FlowPP(2, num_layers=4, components=4), StandardNormal(2))
    """

    def __init__(self, dim: int, num_layers: int = 8, components: int = 8, hidden: int = 64,
                 depth: int = 2, act: str = "relu", scale_bound: float = 3.0,
                 actnorm: bool = False, context_dim: int = 0,
                 inverse_tol: float | None = None):
        layers: list[Flow] = []
        for m in alternating_masks(dim, num_layers):
            if actnorm:
                layers.append(ActNorm(dim))
            layers.append(MixtureLogisticCoupling(dim, m, components, hidden, depth, act,
                                                  scale_bound, context_dim, inverse_tol))
        super().__init__(layers)
        self.dim = dim


class ImageMixtureLogisticCoupling(ImageMaskedCoupling):
    """Flow++ coupling for images ``[B, C, H, W]`` with a convolutional conditioner and a
    checkerboard (``mask="checkerboard"``, parity ``parity``) or channel (``mask="channel"``)
    split, as :class:`cnf.flows.coupling.ImageAffineCoupling`; the elementwise map is the
    logistic-mixture CDF of the module docstring. ``forward`` is one pass; ``inverse`` is
    bisection.

    Example::

        >>> layer = ImageMixtureLogisticCoupling(2, mask="channel", components=4, hidden=8)
        >>> z, logdet = layer(torch.randn(3, 2, 4, 4))
    """

    def __init__(self, channels: int, mask: str = "checkerboard", parity: int = 0,
                 components: int = 8, hidden: int = 64, depth: int = 2, act: str = "relu",
                 scale_bound: float = 3.0, inverse_tol: float | None = None,
                 max_iter: int = 200):
        super().__init__()
        if components < 1:
            raise ConfigError(f"components must be >= 1, got {components}")
        n_in = self.init_split(channels, mask, parity)
        self.components, self.scale_bound = components, float(scale_bound)
        self.inverse_tol, self.max_iter = inverse_tol, max_iter
        self.register_buffer("offsets", _offsets(components))
        self.net = ConvNet(n_in, self.n_out * (3 * components + 2), hidden, depth, act)

    def _map(self) -> _MixtureMap:
        return _MixtureMap(self.components, self.scale_bound, self.offsets)

    def _params(self, h: Tensor) -> Tensor:
        b, _, hh, ww = h.shape
        p = self.net(h).view(b, self.n_out, 3 * self.components + 2, hh, ww)
        return p.permute(0, 1, 3, 4, 2)  # [B, C_out, H, W, 3K + 2]

    def _transform(self, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        self._check(x)
        m = self._map()
        if self.mask_type == "checkerboard":
            keep = self.checkerboard(x)
            p = self._params(x * keep.to(x.dtype))
            if inverse:
                y, ld = m.inverse(x, p, self.inverse_tol, self.max_iter)
            else:
                y, ld = m.forward(x, p)
            y = torch.where(keep, x, y)
            return y, sum_except_batch(ld * (~keep).to(ld.dtype))
        if self.parity == 0:
            x_a, x_b = x[:, : self.n_cond], x[:, self.n_cond:]
        else:
            x_b, x_a = x[:, : self.n_out], x[:, self.n_out:]
        p = self._params(x_a)
        y_b, ld = m.inverse(x_b, p, self.inverse_tol, self.max_iter) if inverse else m.forward(x_b, p)
        y = torch.cat([x_a, y_b] if self.parity == 0 else [y_b, x_a], dim=1)
        return y, sum_except_batch(ld)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(x, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(z, inverse=True)


class FlowPPImage(Chain):
    """A multi-scale Flow++-style image flow ``[C, H, W]``: the layout of
    :class:`cnf.flows.coupling.RealNVPImage` (per scale: checkerboard couplings, squeeze,
    channel couplings, factor out half; last scale: checkerboard couplings) with every coupling
    a logistic-mixture coupling preceded by ActNorm. Pair it with
    :class:`cnf.data.dequantization.VariationalDequantizer`, as the paper does.

    Example::

        >>> from cnf.distributions import Density, StandardNormal
        >>> d = Density(FlowPPImage((1, 4, 4), scales=2, hidden=8, components=4),
        ...             StandardNormal((1, 4, 4)))
    """

    def __init__(self, shape: tuple[int, int, int], scales: int = 2, components: int = 8,
                 hidden: int = 64, depth: int = 2, act: str = "relu",
                 scale_bound: float = 3.0, inverse_tol: float | None = None):
        def step(ch: int, mask: str, parity: int) -> list[Flow]:
            return [ActNorm(ch), ImageMixtureLogisticCoupling(
                ch, mask, parity, components, hidden, depth, act, scale_bound, inverse_tol)]

        super().__init__([realnvp_multiscale(shape, scales, step, "FlowPPImage")])
        c, h, w = (int(v) for v in shape)
        self.shape = (c, h, w)
