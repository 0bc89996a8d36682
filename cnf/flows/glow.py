"""Glow (Kingma & Dhariwal, 2018, "Glow: Generative flow with invertible 1×1 convolutions").

One step of flow is ActNorm -> invertible 1×1 convolution -> affine coupling:

- :class:`cnf.flows.normalization.ActNorm`: per-channel affine map with data-dependent,
  persisted initialization.
- :class:`InvertibleConv1x1`: ``z[:, :, i, j] = W x[:, :, i, j]`` with the LU
  parameterization ``W = P L U`` (:class:`cnf.flows.linear.LULinear`);
  ``log|det| = H · W · Σ log|diag U|``.
- :class:`cnf.flows.coupling.ImageAffineCoupling` with a channel split and Glow's
  ``sigmoid(ŝ + 2)`` scale.

:class:`Glow` stacks ``steps`` steps per scale in the multi-scale architecture (squeeze,
steps, factor out half, ...). For vectors (``shape`` an int) it stacks ActNorm, LU linear and
:class:`cnf.flows.coupling.AffineCoupling` layers. Every part is cheap in both directions.
Temperature sampling is ``Density.sample(n, temperature=T)``: the base is scaled by ``T``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from cnf.errors import ConfigError, ShapeError
from cnf.flows.base import Chain, Flow, Inverse
from cnf.flows.coupling import AffineCoupling, ImageAffineCoupling, alternating_masks
from cnf.flows.linear import LULinear
from cnf.flows.multiscale import Squeeze, multiscale
from cnf.flows.normalization import ActNorm

__all__ = ["InvertibleConv1x1", "Glow", "glow_step"]


class InvertibleConv1x1(LULinear):
    """Invertible 1×1 convolution over the channels of ``[B, C, H, W]`` (LU parameterized,
    no bias: ActNorm precedes it). Both directions cheap.

    Example::

        >>> conv = InvertibleConv1x1(4)
        >>> z, logdet = conv(torch.randn(2, 4, 8, 8))
    """

    def __init__(self, channels: int, seed: int = 0):
        super().__init__(channels, bias=False, seed=seed)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.dim:
            raise ShapeError(f"InvertibleConv1x1 was built for [batch, {self.dim}, H, W] inputs, "
                             f"got {list(x.shape)}")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        return F.conv2d(x, self.weight()[:, :, None, None]), self._logdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        return F.conv2d(z, self.inverse_weight()[:, :, None, None]), -self._logdet(z)


def glow_step(channels: int, hidden: int = 64, depth: int = 2, act: str = "relu",
              parity: int = 0, seed: int = 0, context_dim: int = 0) -> Chain:
    """One Glow step on ``channels``: ActNorm, 1×1 convolution, channel affine coupling."""
    return Chain([
        ActNorm(channels),
        InvertibleConv1x1(channels, seed=seed),
        ImageAffineCoupling(channels, "channel", parity, hidden, depth, act, scale="sigmoid",
                            context_dim=context_dim),
    ])


class Glow(Chain):
    """Glow. For images ``shape = (C, H, W)``: squeeze, then ``scales`` levels of ``steps``
    Glow steps, each level but the last followed by a squeeze and factoring out half of the
    channels (``z`` keeps the shape of ``x``). For vectors ``shape = D``: ``steps`` steps of
    ActNorm, LU linear, affine coupling.

    Args:
        shape: ``(C, H, W)`` with ``H, W`` divisible by ``2^scales``, or ``D``.
        scales: number of levels (images).
        steps: steps of flow per level.
        hidden, depth: conditioner width and depth.

    Example::

        >>> from cnf.distributions import Density, StandardNormal
        >>> d = Density(Glow((1, 8, 8), scales=2, steps=4, hidden=32), StandardNormal((1, 8, 8)))
        >>> x = d.sample(16, temperature=0.7)
    """

    def __init__(self, shape: int | Sequence[int], scales: int = 2, steps: int = 4,
                 hidden: int = 64, depth: int = 2, act: str = "relu", context_dim: int = 0):
        if steps < 1:
            raise ConfigError(f"Glow needs steps >= 1, got {steps}")
        if isinstance(shape, int) or len(shape) == 1:
            dim = int(shape) if isinstance(shape, int) else int(shape[0])
            flows: list[Flow] = []
            for k, mask in enumerate(alternating_masks(dim, steps)):
                flows += [ActNorm(dim), LULinear(dim, seed=k),
                          AffineCoupling(dim, mask, hidden, depth, act, context_dim=context_dim)]
            super().__init__(flows)
            self.shape = (dim,)
            return
        c, h, w = (int(v) for v in shape)
        f = 2 ** scales
        if scales < 1 or h % f or w % f:
            raise ConfigError(f"Glow with {scales} scales needs H and W divisible by {f} "
                              f"(got {h}x{w}); use fewer scales")
        levels: list[Flow] = []
        for i in range(scales):
            ch = 4 * c * 2 ** i
            levels.append(Chain([glow_step(ch, hidden, depth, act, parity=k % 2, seed=k,
                                           context_dim=context_dim) for k in range(steps)]))
        super().__init__([Squeeze(), multiscale(levels), Inverse(Squeeze())])
        self.shape = (c, h, w)
