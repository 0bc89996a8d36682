"""Densities of discrete images: dequantization, logit preprocessing and bits per dimension.

Pixels take ``K`` levels (``x ∈ {0..K-1}^D``). A flow models a continuous density, so
``DequantizedDensity`` scores ``x`` through

1. dequantization, ``y = (x + u) / K ∈ [0, 1)^D`` with ``u ~ q(u | x)`` on ``[0, 1)^D``:
   uniform (Theis et al., 2016) or variational, a conditional flow trained jointly (Ho et al.,
   2019, "Flow++");
2. preprocessing, ``s = logit(λ + (1 - 2λ) y)`` (Dinh et al., 2017; MAF uses λ = 1e-6 on MNIST,
   0.05 on CIFAR-10) or, with ``logit_lambda=None``, ``s = y - 1/2`` (i-ResNet / Residual
   Flows);
3. the flow and its base distribution, ``log p_S(s)``.

Every Jacobian is accounted for, so ``log_prob(x)`` is a lower bound on the discrete
log-likelihood ``log P(x)`` in nats (Jensen; exact in expectation for uniform ``q`` when the
density is constant on each bin)::

    log P(x) ≥ E_q[ log p_S(s) + log|ds/dy| − D log K − log q(u | x) ]
    log|ds/dy| = Σ_i [ log(1 − 2λ) − log p_i − log(1 − p_i) ],   p_i = λ + (1 − 2λ) y_i

and ``bits/dim = −log_prob(x) / (D ln 2)`` is on the data's own levels (17 for digits, 256 for
MNIST / CIFAR-10). Evaluation uses one sample of ``u`` per image, as the published numbers do.

Example::

    >>> from cnf.flows.coupling import RealNVPImage
    >>> from cnf.distributions import StandardNormal
    >>> d = DequantizedDensity(RealNVPImage((1, 8, 8)), StandardNormal((1, 8, 8)), levels=17)
    >>> x = torch.randint(0, 17, (4, 1, 8, 8))
    >>> bits_per_dim(d.log_prob(x), d.dim).shape
    torch.Size([4])
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cnf.distributions import BaseDistribution, Density, StandardNormal
from cnf.errors import ConfigError, DataError
from cnf.flows.base import Chain, Flow, sum_except_batch
from cnf.flows.elementwise import Logit
from cnf.flows.image_coupling import ConvAffineCoupling
from cnf.flows.normalization import ActNorm

__all__ = ["Dequantizer", "UniformDequantizer", "VariationalDequantizer",
           "DequantizedDensity", "bits_per_dim"]


def bits_per_dim(log_prob: Tensor, dim: int) -> Tensor:
    """``-log_prob / (dim · ln 2)``: nats per example to bits per dimension."""
    return -log_prob / (dim * math.log(2.0))


class _Center(Flow):
    """``s = y − 1/2`` (log-det 0): the i-ResNet / Residual Flows preprocessing."""

    def forward(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return y - 0.5, y.new_zeros(y.shape[0])

    def inverse(self, s: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return s + 0.5, s.new_zeros(s.shape[0])


class Dequantizer(nn.Module):
    """Draws ``u ∈ (0, 1)^D`` given the integer levels ``x`` and returns ``(u, log q(u | x))``."""

    def forward(self, x: Tensor, levels: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class UniformDequantizer(Dequantizer):
    """``u ~ U[0, 1)^D``, ``log q = 0``."""

    def forward(self, x: Tensor, levels: int) -> tuple[Tensor, Tensor]:
        return torch.rand_like(x), x.new_zeros(x.shape[0])


class VariationalDequantizer(Dequantizer):
    """Flow++'s variational dequantization: ``u = σ(h)``, ``h = g(ε; x)``, ``ε ~ N(0, I)``,
    with ``g`` a conditional flow of conv affine couplings whose conditioners see features of
    ``x`` (a small CNN over ``x / (K − 1) − 1/2``). Trained jointly with the model through the
    bound ``log P(x) ≥ E_q[log p(y) − D log K − log q(u | x)]``::

        log q(u | x) = log N(ε) − log|dh/dε| − Σ log σ'(h)

    Args:
        channels: image channels C.
        num_layers: conditional couplings (alternating checkerboard parity).
        hidden: CNN width of the couplings and of the feature network.
        features: channels of the feature maps of ``x`` given to every coupling.
    """

    def __init__(self, channels: int = 1, num_layers: int = 4, hidden: int = 32,
                 features: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, features, 3, padding=1))
        layers: list[Flow] = [ActNorm(channels)]
        layers += [ConvAffineCoupling(channels, "checkerboard", k % 2, hidden,
                                      context_channels=features) for k in range(num_layers)]
        self.flow = Chain(layers)
        self.base = StandardNormal(1)

    def forward(self, x: Tensor, levels: int) -> tuple[Tensor, Tensor]:
        return self.transform(torch.randn_like(x), x, levels)

    def transform(self, eps: Tensor, x: Tensor, levels: int) -> tuple[Tensor, Tensor]:
        """``(u, log q(u | x))`` for the noise ``eps`` (the reparameterized sample)."""
        ctx = self.features(x / max(levels - 1, 1) - 0.5)
        h, logdet = self.flow.inverse(eps, ctx)  # log|dh/dε|
        log_q_h = sum_except_batch(-0.5 * eps.pow(2) - 0.5 * math.log(2 * math.pi)) - logdet
        log_sig_prime = -F.softplus(-h) - F.softplus(h)  # log σ(h)(1 − σ(h))
        u = torch.sigmoid(h)
        return u, log_q_h - sum_except_batch(log_sig_prime)


class DequantizedDensity(Density):
    """A flow density over discrete images (see the module docstring for the maths).

    ``log_prob(x)`` takes integer levels ``x ∈ {0..levels-1}`` (any dtype) of shape
    ``[B, *event_shape]`` and returns the dequantization bound on ``log P(x)`` in nats ``[B]``;
    ``sample`` returns integer levels (as floats).

    Args:
        flow: the flow over the preprocessed images ``s`` (same shape as ``x``).
        base: base distribution over that shape.
        levels: number of levels K of the data (17 digits, 256 MNIST / CIFAR-10).
        dequantizer: ``UniformDequantizer()`` (default) or ``VariationalDequantizer(...)``.
        logit_lambda: λ of the logit preprocessing; ``None`` for ``s = y − 1/2``.
    """

    def __init__(self, flow: Flow, base: BaseDistribution, levels: int = 256,
                 dequantizer: Dequantizer | None = None, logit_lambda: float | None = 1e-6):
        super().__init__(flow, base)
        if levels < 2:
            raise ConfigError(f"levels must be >= 2, got {levels}")
        self.levels = int(levels)
        self.dequantizer = dequantizer if dequantizer is not None else UniformDequantizer()
        if logit_lambda is not None and not 0 < logit_lambda < 0.5:
            # λ = 0 would send a pixel dequantized to exactly 0 to logit(0) = -inf
            raise ConfigError(f"logit_lambda must be in (0, 0.5) or null (no logit), got "
                              f"{logit_lambda}; MAF used 1e-6 on MNIST and 0.05 on CIFAR-10")
        self.preprocess: Flow = Logit(logit_lambda) if logit_lambda is not None else _Center()

    @property
    def dim(self) -> int:
        return int(math.prod(self.event_shape))

    def check_levels(self, x: Tensor) -> Tensor:
        """``x`` as floats of the model's dtype; :class:`cnf.errors.DataError` unless every
        entry is an integer level in ``[0, levels - 1]``."""
        ref = next(iter(self.base.buffers()), None)
        xf = x.to(ref.dtype if ref is not None else torch.get_default_dtype())
        lo, hi = float(xf.min()), float(xf.max())
        if lo < 0 or hi > self.levels - 1 or not torch.equal(xf, xf.round()):
            raise DataError(
                f"expected integer pixel levels in [0, {self.levels - 1}], got values in "
                f"[{lo:g}, {hi:g}]; feed the raw levels (e.g. cnf.data.images.ImageDataModule) "
                f"and set the density's `levels` to the data's number of levels"
            )
        return xf

    def to_continuous(self, x: Tensor, u: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(s, log-det)`` for levels ``x`` and offsets ``u`` (default 1/2: bin centres);
        the log-det includes ``−D log K`` and the preprocessing, not ``log q``."""
        xf = self.check_levels(x)
        u = torch.full_like(xf, 0.5) if u is None else u
        s, ld = self.preprocess((xf + u) / self.levels)
        return s, ld - self.dim * math.log(self.levels)

    def to_levels(self, s: Tensor) -> Tensor:
        """Map a preprocessed image back to integer levels (as floats)."""
        y, _ = self.preprocess.inverse(s)
        return torch.floor(y * self.levels).clamp(0, self.levels - 1)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Dequantization lower bound on ``log P(x)`` (nats), ``[B]``."""
        xf = self.check_levels(x)
        self.check_input(xf)
        u, log_q = self.dequantizer(xf, self.levels)
        s, ld = self.to_continuous(xf, u)
        return self.continuous_log_prob(s, context) + ld - log_q

    def continuous_log_prob(self, s: Tensor, context: Tensor | None = None) -> Tensor:
        """``log p_S(s)`` of a preprocessed image under flow and base."""
        z, logabsdet = self.flow(s, context)
        return self.base.log_prob(z) + logabsdet

    def sample(self, n: int, temperature: float = 1.0, context: Tensor | None = None) -> Tensor:
        """``n`` images of integer levels (floats) ``[n, *event_shape]``."""
        return self.to_levels(super().sample(n, temperature, context))

    def sample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(
            "a discrete image density has no closed-form log-probability of its samples; "
            "use sample() and log_prob()")
