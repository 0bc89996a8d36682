"""Image reshaping flows for multi-scale architectures (RealNVP, Glow, FFJORD, i-ResNet).

- ``Squeeze``: ``[B, C, H, W] -> [B, 4C, H/2, W/2]``, each 2×2 patch becomes 4 channels
  (a permutation: log-det 0).
- ``FactorOut(inner)``: keep the first ``C - k`` channels as they are (they are "factored out"
  to the base distribution) and transform the last ``k`` with ``inner``.
- ``multiscale(levels)``: ``[level_1, Squeeze, FactorOut([level_2, Squeeze, FactorOut(...)]),
  Unsqueeze]`` — the RealNVP multi-scale architecture, written so that ``z`` has the same shape
  as ``x`` and the flow contract holds unchanged (the base distribution is over that shape).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from cnf.errors import ConfigError, ShapeError
from cnf.flows.base import Chain, Flow, Inverse

__all__ = ["Squeeze", "FactorOut", "multiscale", "realnvp_multiscale"]


class Squeeze(Flow):
    """Space-to-depth by ``factor`` (default 2): ``[B, C, H, W] -> [B, C·f², H/f, W/f]``.
    A permutation of entries, so ``log|det| = 0``; both directions are cheap."""

    def __init__(self, factor: int = 2):
        super().__init__()
        self.factor = factor

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        f = self.factor
        if h % f or w % f:
            raise ShapeError(f"Squeeze by {f} needs H and W divisible by {f}, got {h}x{w}; "
                             f"pad or crop the images or use fewer scales")
        x = x.reshape(b, c, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c * f * f, h // f, w // f), x.new_zeros(b)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = z.shape
        f = self.factor
        z = z.reshape(b, c // (f * f), f, f, h, w).permute(0, 1, 4, 2, 5, 3)
        return z.reshape(b, c // (f * f), h * f, w * f), z.new_zeros(b)


class FactorOut(Flow):
    """Pass the first ``C - split`` channels through unchanged (factored out to the base
    distribution) and apply ``inner`` to the last ``split`` channels (default: half)."""

    def __init__(self, inner: Flow, split: int | None = None):
        super().__init__()
        self.inner = inner
        self.split = split

    def _k(self, c: int) -> int:
        return self.split if self.split is not None else c // 2

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        k = self._k(x.shape[1])
        out, logdet = self.inner(x[:, x.shape[1] - k:], context)
        return torch.cat([x[:, : x.shape[1] - k], out], dim=1), logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        k = self._k(z.shape[1])
        out, logdet = self.inner.inverse(z[:, z.shape[1] - k:], context)
        return torch.cat([z[:, : z.shape[1] - k], out], dim=1), logdet


def multiscale(levels: Sequence[Flow]) -> Flow:
    """Nest ``levels`` into the multi-scale architecture: level ``i+1`` sees half of the
    channels of level ``i`` after a squeeze. The output has the input's shape.

    Each level must accept the shape it receives: level 0 gets ``[C, H, W]``, level 1
    ``[2C, H/2, W/2]``, level 2 ``[4C, H/4, W/4]`` and so on.
    """
    if not levels:
        raise ValueError("multiscale needs at least one level")
    flow: Flow = levels[-1]
    for level in reversed(levels[:-1]):
        flow = Chain([level, Squeeze(), FactorOut(flow), Inverse(Squeeze())])
    return flow


def realnvp_multiscale(shape: Sequence[int], scales: int, step: Callable[[int, str, int],
                       list[Flow]], name: str) -> Flow:
    """The RealNVP image architecture (Dinh et al. 2017) around any coupling ``step(channels,
    mask, parity) -> [flows]``: at every scale but the last, three checkerboard steps, a
    squeeze, three channel steps and an unsqueeze; at the last scale four checkerboard steps;
    the scales nested by :func:`multiscale`. ``name`` is the model named in errors."""
    c, h, w = (int(v) for v in shape)
    f = 2 ** (scales - 1)
    if scales < 1 or h % f or w % f or (h // f) * (w // f) < 2:
        raise ConfigError(f"{name} with {scales} scales needs H and W divisible by {f} and at "
                          f"least 2 pixels at the last scale (got {h}x{w}); use fewer scales")
    levels: list[Flow] = []
    for i in range(scales):
        ch = c * 2 ** i
        if i < scales - 1:
            levels.append(Chain([
                *(f for p in (0, 1, 0) for f in step(ch, "checkerboard", p)),
                Squeeze(),
                *(f for p in (0, 1, 0) for f in step(4 * ch, "channel", p)),
                Inverse(Squeeze()),
            ]))
        else:
            levels.append(Chain([f for p in (0, 1, 0, 1) for f in step(ch, "checkerboard", p)]))
    return multiscale(levels)
