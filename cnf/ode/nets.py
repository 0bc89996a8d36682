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


def _act_jvp(act: nn.Module, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(a(u), a'(u) · v)`` for the activations ODENet supports, or ``None``."""
    if isinstance(act, nn.Tanh):
        y = torch.tanh(u)
        return y, v * (1 - y * y)
    if isinstance(act, nn.Softplus) and act.beta == 1 and act.threshold == 20:
        return nn.functional.softplus(u), v * torch.sigmoid(u)
    if isinstance(act, nn.SiLU):
        s = torch.sigmoid(u)
        return u * s, v * (s * (1 + u * (1 - s)))
    if isinstance(act, nn.ELU) and act.alpha == 1.0:
        y = nn.functional.elu(u)
        return y, v * torch.where(u > 0, torch.ones_like(u), y + 1)
    if isinstance(act, nn.ReLU):
        return torch.relu(u), v * (u > 0).to(u.dtype)
    raise NotImplementedError(type(act).__name__)


_JVP_ACTS = (nn.Tanh, nn.Softplus, nn.SiLU, nn.ELU, nn.ReLU)


class _Ignore(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.linear(x)

    def jvp(self, t: Tensor, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.linear(x), v @ self.linear.weight.T


class _Concat(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in + 1, dim_out)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        # W [t, x] + b  ==  W_x x + (b + w_t t): no concatenation of a [B, 1] column needed
        w = self.linear.weight
        return nn.functional.linear(x, w[:, 1:], self.linear.bias + w[:, 0] * t)

    def jvp(self, t: Tensor, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        w = self.linear.weight
        return self.forward(t, x), v @ w[:, 1:].T


class _Squash(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(1, dim_out)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.hyper_gate.weight[:, 0] * t + self.hyper_gate.bias)
        return self.linear(x) * gate

    def jvp(self, t: Tensor, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        gate = torch.sigmoid(self.hyper_gate.weight[:, 0] * t + self.hyper_gate.bias)
        return self.linear(x) * gate, (v @ self.linear.weight.T) * gate


class _ConcatSquash(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.hyper_gate = nn.Linear(1, dim_out)
        self.hyper_bias = nn.Linear(1, dim_out, bias=False)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.hyper_gate.weight[:, 0] * t + self.hyper_gate.bias)
        return self.linear(x) * gate + self.hyper_bias.weight[:, 0] * t

    def jvp(self, t: Tensor, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        gate = torch.sigmoid(self.hyper_gate.weight[:, 0] * t + self.hyper_gate.bias)
        y = self.linear(x) * gate + self.hyper_bias.weight[:, 0] * t
        return y, (v @ self.linear.weight.T) * gate


class _Blend(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.layer0 = nn.Linear(dim_in, dim_out)
        self.layer1 = nn.Linear(dim_in, dim_out)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        y0 = self.layer0(x)
        return y0 + (self.layer1(x) - y0) * t

    def jvp(self, t: Tensor, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        w0 = self.layer0.weight
        w = w0 + (self.layer1.weight - w0) * t
        return self.forward(t, x), v @ w.T


class _Hyper(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, hypernet_dim: int = 8):
        super().__init__()
        self.dim_in, self.dim_out = dim_in, dim_out
        self.hypernet = nn.Sequential(
            nn.Linear(1, hypernet_dim), nn.Tanh(), nn.Linear(hypernet_dim, dim_in * dim_out + dim_out)
        )

    def _params(self, t: Tensor) -> tuple[Tensor, Tensor]:
        params = self.hypernet(t.reshape(1, 1)).reshape(-1)
        w = params[: self.dim_in * self.dim_out].reshape(self.dim_out, self.dim_in)
        return w, params[self.dim_in * self.dim_out:]

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        w, b = self._params(t)
        return nn.functional.linear(x, w, b)

    def jvp(self, t: Tensor, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        w, b = self._params(t)
        return nn.functional.linear(x, w, b), v @ w.T


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

    @property
    def supports_jvp(self) -> bool:
        """Whether :meth:`forward_jvp` is available (every activation has a closed-form
        derivative here)."""
        return all(isinstance(a, _JVP_ACTS) for a in self.acts) and not any(
            isinstance(a, nn.Softplus) and (a.beta != 1 or a.threshold != 20) for a in self.acts)

    def forward_jvp(self, t: Tensor, z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """``f(t, z)`` and the Jacobian-vector products ``(∂f/∂z) vₖ`` for tangents ``v``
        of shape ``[K, B, D]``, in one forward pass (forward-mode differentiation written
        out per layer). With ``v`` the D basis vectors this is the whole Jacobian, so the
        exact trace costs no backward passes."""
        h = z
        for i, layer in enumerate(self.layers):
            h, v = layer.jvp(t, h, v)
            if i < len(self.acts):
                h, v = _act_jvp(self.acts[i], h, v)
        return h, v
