"""Time-conditioned networks ``f(t, z)`` for vector data, with FFJORD's layer types.

Each layer maps ``(t, x) -> y`` (``t`` a scalar tensor, ``x`` of shape ``[B, in]``); the
definitions follow ``lib/layers/diffeq_layers/basic.py`` of Grathwohl et al. (2019),
"FFJORD: Free-form continuous dynamics for scalable reversible generative models":

============== ================================================================
``ignore``       ``W x + b``                              (no time dependence)
``concat``       ``W [t, x] + b``
``squash``       ``(W x + b) · σ(a t + c)``
``concatsquash`` ``(W x + b) · σ(a t + c) + d t``          (FFJORD's default)
``blend``        ``y0 + (y1 - y0) · t`` with ``y0, y1`` two linear maps of x
``hyper``        ``W(t) x + b(t)``, ``[W, b]`` from a 1→8→(in·out+out) tanh hypernetwork
============== ================================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnf.errors import ConfigError
from cnf.flows.nets import activation

__all__ = ["ODENet", "LAYER_TYPES"]


class _Ignore(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.linear(x)


class _Concat(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in + 1, dim_out)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        # W [t, x] + b  ==  W_x x + (b + w_t t): no concatenation of a [B, 1] column needed
        w = self.linear.weight
        return nn.functional.linear(x, w[:, 1:], self.linear.bias + w[:, 0] * t)


class _Squash(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(1, dim_out)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.hyper_gate.weight[:, 0] * t + self.hyper_gate.bias)
        return self.linear(x) * gate


class _ConcatSquash(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(1, dim_out)
        self.hyper_bias = nn.Linear(1, dim_out, bias=False)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.hyper_gate.weight[:, 0] * t + self.hyper_gate.bias)
        return self.linear(x) * gate + self.hyper_bias.weight[:, 0] * t


class _Blend(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.layer0 = nn.Linear(dim_in, dim_out)
        self.layer1 = nn.Linear(dim_in, dim_out)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        y0 = self.layer0(x)
        return y0 + (self.layer1(x) - y0) * t


class _Hyper(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, hypernet_dim: int = 8):
        super().__init__()
        self.dim_in, self.dim_out = dim_in, dim_out
        self.hypernet = nn.Sequential(
            nn.Linear(1, hypernet_dim), nn.Tanh(), nn.Linear(hypernet_dim, dim_in * dim_out + dim_out)
        )

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        params = self.hypernet(t.reshape(1, 1)).reshape(-1)
        w = params[: self.dim_in * self.dim_out].reshape(self.dim_out, self.dim_in)
        b = params[self.dim_in * self.dim_out:]
        return nn.functional.linear(x, w, b)


LAYER_TYPES: dict[str, type[nn.Module]] = {
    "ignore": _Ignore,
    "concat": _Concat,
    "squash": _Squash,
    "concatsquash": _ConcatSquash,
    "blend": _Blend,
    "hyper": _Hyper,
}


class ODENet(nn.Module):
    """A time-conditioned MLP ``f(t, z)``: ``dim -> hidden[0] -> ... -> dim``.

    Every layer sees ``t`` through ``layer_type`` (see the module docstring); the activation
    sits between layers, not after the last. Defaults are FFJORD's toy model (3×64
    concatsquash, tanh; 9,225 parameters at ``dim=2``).

    Example::

        >>> net = ODENet(2, hidden=(64, 64, 64), layer_type="concatsquash", act="tanh")
        >>> net(torch.tensor(0.1), torch.randn(5, 2)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64, 64),
        layer_type: str = "concatsquash",
        act: str = "tanh",
    ):
        super().__init__()
        if layer_type not in LAYER_TYPES:
            raise ConfigError(
                f"unknown layer_type {layer_type!r}; choose one of {sorted(LAYER_TYPES)}"
            )
        if dim < 1 or any(int(h) < 1 for h in hidden):
            raise ConfigError(f"ODENet needs dim >= 1 and positive widths, got {dim}, {list(hidden)}")
        widths = [dim, *(int(h) for h in hidden), dim]
        self.layers = nn.ModuleList(
            LAYER_TYPES[layer_type](a, b) for a, b in zip(widths[:-1], widths[1:])
        )
        self.acts = nn.ModuleList(activation(act) for _ in range(len(widths) - 2))
        self.dim = dim
        self.layer_type = layer_type

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.acts):
                h = self.acts[i](h)
        return h
