"""Affine coupling for images conditioned on an *image-shaped* context (Dinh et al., 2017,
"Density estimation using Real NVP", §3.3): the conditional flow q(u | x) of variational
dequantization (Flow++) needs the context ``[B, C_ctx, H, W]`` pixel by pixel, which
:class:`cnf.flows.coupling.ImageAffineCoupling` (vector context broadcast over pixels) does not
offer. For unconditional image flows use ``ImageAffineCoupling``, ``RealNVPImage`` and ``Glow``.

``ConvAffineCoupling`` splits an image ``x [B, C, H, W]`` by a checkerboard mask (spatial) or
by channel halves; the kept part ``x_a`` and the context condition a CNN that outputs a
log-scale ``s`` and a shift ``t`` for the rest::

    z_b = x_b · exp(s(x_a, ctx)) + t(x_a, ctx),      log|det dz/dx| = Σ s

Both directions cost one CNN pass. ``s = c · tanh(ŝ / c)`` with ``c = scale_bound``; the last
conv starts at zero, so every coupling starts as the identity.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cnf.errors import ConfigError, ShapeError
from cnf.flows.base import Flow
from cnf.flows.nets import activation

__all__ = ["ConvAffineCoupling", "checkerboard"]


def checkerboard(h: int, w: int, parity: int = 0, device=None, dtype=None) -> Tensor:
    """``[1, 1, H, W]`` mask with 1 where ``(i + j + parity)`` is even."""
    i = torch.arange(h, device=device).view(-1, 1)
    j = torch.arange(w, device=device).view(1, -1)
    return ((i + j + parity) % 2 == 0).to(dtype or torch.get_default_dtype()).view(1, 1, h, w)


class _ConvNet(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, hidden: int, act: str):
        last = nn.Conv2d(hidden, c_out, 3, padding=1)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        super().__init__(nn.Conv2d(c_in, hidden, 3, padding=1), activation(act),
                         nn.Conv2d(hidden, hidden, 1), activation(act), last)


class ConvAffineCoupling(Flow):
    """Affine coupling on images with a CNN conditioner; cheap in both directions.

    Args:
        channels: C of the input ``[B, C, H, W]``.
        mask: ``"checkerboard"`` (spatial alternation) or ``"channel"`` (halves of the channels).
        parity: which half conditions (0 or 1); alternate it between layers.
        hidden: CNN width.
        context_channels: channels of an optional image-shaped context.
        scale_bound: bound ``c`` of the log-scale, ``s = c · tanh(ŝ / c)``.

    Example::

        >>> layer = ConvAffineCoupling(3, mask="checkerboard", hidden=16, context_channels=4)
        >>> z, logdet = layer(torch.randn(2, 3, 8, 8), context=torch.randn(2, 4, 8, 8))
    """

    def __init__(self, channels: int, mask: str = "checkerboard", parity: int = 0,
                 hidden: int = 64, context_channels: int = 0, scale_bound: float = 3.0,
                 act: str = "relu"):
        super().__init__()
        if mask not in ("checkerboard", "channel"):
            raise ConfigError(f"mask must be 'checkerboard' or 'channel', got {mask!r}")
        if mask == "channel" and channels < 2:
            raise ConfigError("a channel coupling needs at least 2 channels; use a checkerboard "
                              "mask on single-channel images")
        self.channels, self.mask, self.parity = channels, mask, int(parity) % 2
        self.context_channels = context_channels
        self.scale_bound = float(scale_bound)
        if mask == "checkerboard":
            c_in, c_out = channels, channels
        else:  # C // 2 channels condition the other C - C // 2
            c_in, c_out = channels // 2, channels - channels // 2
        self.net = _ConvNet(c_in + context_channels, 2 * c_out, hidden, act)

    def _params(self, x_a: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.context_channels:
            if context is None or context.shape[-2:] != x_a.shape[-2:]:
                raise ShapeError(f"this coupling needs an image context [B, "
                                 f"{self.context_channels}, {x_a.shape[-2]}, {x_a.shape[-1]}]")
            x_a = torch.cat([x_a, context], dim=1)
        shift, raw = self.net(x_a).chunk(2, dim=1)
        return shift, self.scale_bound * torch.tanh(raw / self.scale_bound)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(a, b)``: the conditioning ``C // 2`` channels (first or last by parity), the rest."""
        k = self.channels // 2
        if self.parity == 0:
            return x[:, :k], x[:, k:]
        return x[:, self.channels - k:], x[:, : self.channels - k]

    def _join(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([a, b] if self.parity == 0 else [b, a], dim=1)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ShapeError(f"ConvAffineCoupling({self.channels}) expects [B, {self.channels}, "
                             f"H, W], got {list(x.shape)}")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        if self.mask == "checkerboard":
            m = checkerboard(x.shape[2], x.shape[3], self.parity, x.device, x.dtype)
            shift, s = self._params(x * m, context)
            s, shift = s * (1 - m), shift * (1 - m)
            return x * torch.exp(s) + shift, s.flatten(1).sum(1)
        a, b = self._split(x)
        shift, s = self._params(a, context)
        return self._join(a, b * torch.exp(s) + shift), s.flatten(1).sum(1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        if self.mask == "checkerboard":
            m = checkerboard(z.shape[2], z.shape[3], self.parity, z.device, z.dtype)
            shift, s = self._params(z * m, context)
            s, shift = s * (1 - m), shift * (1 - m)
            return (z - shift) * torch.exp(-s), -s.flatten(1).sum(1)
        a, b = self._split(z)
        shift, s = self._params(a, context)
        return self._join(a, (b - shift) * torch.exp(-s)), -s.flatten(1).sum(1)
