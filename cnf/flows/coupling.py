"""Coupling flows for vectors: RealNVP's affine coupling (Dinh et al., 2017).

A binary ``mask`` splits ``x`` into a conditioning part ``x_a = x[mask]`` kept as is and a
transformed part ``x_b``::

    z_b = x_b * exp(s(x_a)) + t(x_a),     log|det dz/dx| = Σ s(x_a)

Both directions cost one network pass. The log-scale is bounded, ``s = c · tanh(ŝ / c)``
with ``c = scale_bound``, which keeps early training stable.

For images (``[B, C, H, W]``), :class:`ImageAffineCoupling` uses a convolutional conditioner
and either a spatial checkerboard mask or a channel split, and :class:`RealNVPImage` builds
the multi-scale architecture of the paper (checkerboard couplings, squeeze, channel couplings,
factor out half; :func:`cnf.flows.multiscale.multiscale`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cnf.errors import ConfigError, ShapeError
from cnf.flows.base import Chain, Flow, sum_except_batch
from cnf.flows.multiscale import realnvp_multiscale
from cnf.flows.nets import MLP, ConvNet

__all__ = ["ImageMaskedCoupling", "AffineCoupling", "RealNVP", "alternating_masks", "ImageAffineCoupling", "RealNVPImage"]


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
        self.context_dim = int(context_dim)
        self.net = MLP(n_cond + context_dim, 2 * self.n_out, hidden, depth, act)

    def _params(self, x_a: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.context_dim and (context is None or context.shape[-1] != self.context_dim):
            got = "none" if context is None else f"shape {list(context.shape)}"
            raise ShapeError(f"this coupling is conditional (context_dim={self.context_dim}): "
                             f"pass context of shape [batch, {self.context_dim}], got {got}")
        if not self.context_dim and context is not None:
            raise ShapeError(f"this coupling was built without context (context_dim=0) but got "
                             f"context of shape {list(context.shape)}; build it with "
                             f"context_dim={context.shape[-1]}")
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
        self.context_dim = int(context_dim)


class ImageMaskedCoupling(Flow):
    """What the image couplings share: the split of ``[B, C, H, W]`` into a conditioning part
    and a transformed part, by a ``checkerboard`` over pixels (``parity`` 0 or 1) or by
    ``channel`` halves, and the input check. Subclasses call :meth:`init_split` and give the
    conditioner its input channels from it."""

    def init_split(self, channels: int, mask: str, parity: int) -> int:
        """Validate and record the split; returns the conditioner's input channels (and sets
        ``n_out``, the transformed channels)."""
        if mask not in ("checkerboard", "channel"):
            raise ConfigError(f"mask must be 'checkerboard' or 'channel', got {mask!r}")
        if mask == "channel" and channels < 2:
            raise ConfigError(f"a channel coupling needs >= 2 channels (got {channels}); use "
                              f"mask='checkerboard' or squeeze first")
        self.channels, self.mask_type, self.parity = channels, mask, int(parity) % 2
        if mask == "checkerboard":
            self.n_out = channels
            return channels
        half = channels // 2
        self.n_cond = half if self.parity == 0 else channels - half
        self.n_out = channels - self.n_cond
        return self.n_cond

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ShapeError(f"{type(self).__name__} was built for [batch, {self.channels}, H, "
                             f"W] inputs, got {list(x.shape)}")
        if self.mask_type == "checkerboard" and x.shape[2] * x.shape[3] < 2:
            raise ShapeError(f"a checkerboard coupling needs at least 2 pixels, got "
                             f"{x.shape[2]}x{x.shape[3]}; use a channel coupling or fewer scales")

    def checkerboard(self, x: Tensor) -> Tensor:
        """The pixels kept (conditioning) by the checkerboard: a bool ``[1, 1, H, W]``."""
        h, w = x.shape[2], x.shape[3]
        ij = torch.arange(h, device=x.device)[:, None] + torch.arange(w, device=x.device)[None, :]
        return ((ij + self.parity) % 2 == 0)[None, None]


class ImageAffineCoupling(ImageMaskedCoupling):
    """Affine coupling for images ``[B, C, H, W]`` with a convolutional conditioner.

    ``mask="checkerboard"``: pixels with ``(i + j + parity)`` even condition the others
    (every channel); ``mask="channel"``: one half of the channels (the first when ``parity``
    is 0) conditions the other half. With ``m`` the mask and ``(ŝ, t) = net(m ⊙ x)``::

        z = m ⊙ x + (1 - m) ⊙ (x · exp(s) + t),      log|det dz/dx| = Σ (1 - m) ⊙ s

    ``scale="tanh"`` bounds ``s = c · tanh(ŝ / c)`` (RealNVP); ``scale="sigmoid"`` uses
    Glow's ``exp(s) = sigmoid(ŝ + 2)``. Both directions cost one network pass. An optional
    context ``[B, context_dim]`` is broadcast over the pixels as extra input channels.

    Example::

        >>> layer = ImageAffineCoupling(3, mask="checkerboard", hidden=32)
        >>> z, logdet = layer(torch.randn(8, 3, 8, 8))
    """

    def __init__(
        self,
        channels: int,
        mask: str = "checkerboard",
        parity: int = 0,
        hidden: int = 64,
        depth: int = 2,
        act: str = "relu",
        scale: str = "tanh",
        scale_bound: float = 3.0,
        context_dim: int = 0,
    ):
        super().__init__()
        if scale not in ("tanh", "sigmoid"):
            raise ConfigError(f"scale must be 'tanh' or 'sigmoid', got {scale!r}")
        n_in = self.init_split(channels, mask, parity)
        self.scale, self.scale_bound, self.context_dim = scale, float(scale_bound), context_dim
        self.net = ConvNet(n_in + context_dim, 2 * self.n_out, hidden, depth, act)

    def _net(self, h: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if context is not None:
            c = context[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
            h = torch.cat([h, c], dim=1)
        shift, raw = self.net(h).chunk(2, dim=1)
        if self.scale == "tanh":
            log_scale = self.scale_bound * torch.tanh(raw / self.scale_bound)
        else:
            log_scale = torch.nn.functional.logsigmoid(raw + 2.0)
        return shift, log_scale

    def _transform(self, x: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        self._check(x)
        if self.mask_type == "checkerboard":
            m = self.checkerboard(x).to(x.dtype)
            shift, log_scale = self._net(x * m, context)
            log_scale = log_scale * (1 - m)
            shift = shift * (1 - m)
            if not inverse:
                return x * log_scale.exp() + shift, sum_except_batch(log_scale)
            return (x - shift) * torch.exp(-log_scale), -sum_except_batch(log_scale)
        if self.parity == 0:
            x_a, x_b = x[:, : self.n_cond], x[:, self.n_cond:]
        else:
            x_b, x_a = x[:, : self.n_out], x[:, self.n_out:]
        shift, log_scale = self._net(x_a, context)
        if not inverse:
            y_b, ld = x_b * log_scale.exp() + shift, sum_except_batch(log_scale)
        else:
            y_b, ld = (x_b - shift) * torch.exp(-log_scale), -sum_except_batch(log_scale)
        y = torch.cat([x_a, y_b] if self.parity == 0 else [y_b, x_a], dim=1)
        return y, ld

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(x, context, inverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(z, context, inverse=True)


class RealNVPImage(Chain):
    """RealNVP's multi-scale architecture for images ``[C, H, W]`` (Dinh et al., 2017, §3.6).

    Each scale but the last: 3 checkerboard couplings, squeeze, 3 channel couplings (the
    squeeze is undone inside the level), then half of the channels are factored out and the
    rest go on at half the resolution (``multiscale``). The last scale: 4 checkerboard
    couplings. ``z`` has the shape of ``x``; both directions are one pass.

    Args:
        shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2^(scales-1)`` (the last scale
            needs at least 2 pixels).
        scales: number of scales.
        hidden, depth: conditioner width and depth.

    Example::

        >>> from cnf.distributions import Density, StandardNormal
        >>> density = Density(RealNVPImage((1, 8, 8), scales=2, hidden=32), StandardNormal((1, 8, 8)))
    """

    def __init__(self, shape: tuple[int, int, int], scales: int = 2, hidden: int = 64,
                 depth: int = 2, act: str = "relu", scale_bound: float = 3.0,
                 context_dim: int = 0):
        def step(ch: int, mask: str, parity: int) -> list[Flow]:
            return [ImageAffineCoupling(ch, mask, parity, hidden, depth, act, "tanh",
                                        scale_bound, context_dim)]

        super().__init__([realnvp_multiscale(shape, scales, step, "RealNVPImage")])
        c, h, w = (int(v) for v in shape)
        self.shape = (c, h, w)

