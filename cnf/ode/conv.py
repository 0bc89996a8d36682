"""Time-conditioned convolutional networks ``f(t, z)`` for image-shaped CNF states.

The layers follow ``lib/layers/diffeq_layers/basic.py`` of Grathwohl et al. (2019), "FFJORD:
Free-form continuous dynamics for scalable reversible generative models", with a ``k×k``
convolution (stride 1, "same" padding) in place of the linear map:

================ ================================================================
``ignore``         ``conv(x)``                              (no time dependence)
``concat``         ``conv([t·1, x])`` (a constant channel t; zero padding makes the
                   border see less of it, exactly as FFJORD's ``ConcatConv2d``)
``concatsquash``   ``conv(x) · σ(a t + c) + d t`` (per output channel;
                   FFJORD's ``ConcatSquashConv2d``)
================ ================================================================

:class:`ConvODENet` takes the flattened state ``[B, C·H·W]`` (what
:class:`cnf.flows.continuous.CNF` integrates) and reshapes it internally, so every CNF
feature (exact / Hutchinson traces, RNODE terms, NFE counts, adjoint) applies unchanged. ``forward_jvp`` writes forward-mode
Jacobian-vector products out per layer, so the exact trace of a ``D``-pixel state costs one
batched pass over ``D`` tangents instead of ``D`` backward passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cnf.errors import ConfigError, ShapeError
from cnf.nn import activation, activation_jvp, has_jvp

__all__ = ["ConvODENet", "CONV_LAYER_TYPES"]


def _flat(v: Tensor) -> tuple[Tensor, tuple[int, int]]:
    """``[K, B, C, H, W] -> [K·B, C, H, W]`` (and the leading sizes to undo it)."""
    return v.reshape(-1, *v.shape[2:]), (v.shape[0], v.shape[1])


class _IgnoreConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.conv(x)

    def tangent(self, t: Tensor, v: Tensor) -> Tensor:
        flat, (k, b) = _flat(v)
        out = F.conv2d(flat, self.conv.weight, None, padding=self.conv.padding)
        return out.reshape(k, b, *out.shape[1:])


class _ConcatConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in + 1, c_out, kernel, padding=kernel // 2)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        tt = (torch.ones_like(x[:, :1]) * t[..., None, None])
        return self.conv(torch.cat([tt, x], dim=1))

    def tangent(self, t: Tensor, v: Tensor) -> Tensor:
        # the t channel is constant in z: only the weights acting on x carry tangents
        flat, (k, b) = _flat(v)
        out = F.conv2d(flat, self.conv.weight[:, 1:], None, padding=self.conv.padding)
        return out.reshape(k, b, *out.shape[1:])


class _ConcatSquashConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
        self.hyper_gate = nn.Linear(1, c_out)
        self.hyper_bias = nn.Linear(1, c_out, bias=False)

    def _gate(self, t: Tensor) -> Tensor:
        return torch.sigmoid(self.hyper_gate.weight[:, 0] * t + self.hyper_gate.bias)[..., None, None]

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.conv(x) * self._gate(t) + (self.hyper_bias.weight[:, 0] * t)[..., None, None]

    def tangent(self, t: Tensor, v: Tensor) -> Tensor:
        flat, (k, b) = _flat(v)
        out = F.conv2d(flat, self.conv.weight, None, padding=self.conv.padding) * self._gate(t)
        return out.reshape(k, b, *out.shape[1:])


CONV_LAYER_TYPES: dict[str, type[nn.Module]] = {
    "ignore": _IgnoreConv,
    "concat": _ConcatConv,
    "concatsquash": _ConcatSquashConv,
}


class ConvODENet(nn.Module):
    """A time-conditioned conv net ``f(t, z)`` on states of image shape ``(C, H, W)``:
    ``C -> hidden[0] -> ... -> C`` channels, ``kernel×kernel`` convolutions with "same"
    padding, the activation between layers (not after the last). FFJORD's image ODE net is
    ``hidden=(64, 64, 64)``, 3×3 kernels, softplus, ``concat`` layers (its README command).

    ``forward`` takes and returns the flattened state ``[B, C·H·W]``.

    Example::

        >>> net = ConvODENet((1, 4, 4), hidden=(8, 8), layer_type="concatsquash")
        >>> net(torch.tensor(0.1), torch.randn(5, 16)).shape
        torch.Size([5, 16])
    """

    def __init__(
        self,
        shape: Sequence[int],
        hidden: Sequence[int] = (64, 64, 64),
        layer_type: str = "concat",
        act: str = "softplus",
        kernel: int = 3,
    ):
        super().__init__()
        if layer_type not in CONV_LAYER_TYPES:
            raise ConfigError(f"unknown conv layer_type {layer_type!r}; choose one of "
                              f"{sorted(CONV_LAYER_TYPES)}")
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"ConvODENet needs an image shape (C, H, W), got {list(shape)}")
        if kernel < 1 or kernel % 2 == 0:
            raise ConfigError(f"kernel must be odd (so 'same' padding keeps H, W), got {kernel}")
        if any(int(h) < 1 for h in hidden):
            raise ConfigError(f"hidden channel counts must be positive, got {list(hidden)}")
        c = shape[0]
        widths = [c, *(int(h) for h in hidden), c]
        self.layers = nn.ModuleList(
            CONV_LAYER_TYPES[layer_type](a, b, kernel) for a, b in zip(widths[:-1], widths[1:])
        )
        self.acts = nn.ModuleList(activation(act) for _ in range(len(widths) - 2))
        self.shape = shape
        self.dim = shape[0] * shape[1] * shape[2]
        self.layer_type = layer_type

    def _image(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ShapeError(f"ConvODENet{self.shape} expects flattened states "
                             f"[batch, {self.dim}], got {list(z.shape)}")
        return z.reshape(z.shape[0], *self.shape)

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h = self._image(z)
        if t.dim() > 0:  # per-sample times (flow matching): [B] or [B, 1] -> [B, 1]
            t = t.reshape(-1, 1)
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.acts):
                h = self.acts[i](h)
        return h.reshape(z.shape[0], self.dim)

    @property
    def supports_jvp(self) -> bool:
        """Whether :meth:`forward_jvp` is available (activations with a closed-form
        derivative: tanh, softplus, swish, elu, relu)."""
        return all(has_jvp(a) for a in self.acts)

    def forward_jvp(self, t: Tensor, z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """``f(t, z)`` (``[B, D]``) and ``(∂f/∂z) vₖ`` (``[K, B, D]``) for tangents ``v`` of
        shape ``[K, B, D]``, in one batched forward pass."""
        h = self._image(z)
        k = v.shape[0]
        # tangents may broadcast over the batch (the exact trace passes the basis as [D, 1, D])
        v = v.expand(k, z.shape[0], self.dim).reshape(k, z.shape[0], *self.shape)
        for i, layer in enumerate(self.layers):
            h, v = layer(t, h), layer.tangent(t, v)
            if i < len(self.acts):
                h, v = activation_jvp(self.acts[i], h, v)
        return h.reshape(z.shape[0], self.dim), v.reshape(k, z.shape[0], self.dim)
