"""Time-conditioned networks ``f(t, z)`` for vector data, with FFJORD's layer types.

Each layer maps ``(t, x) -> y`` (``t`` a scalar tensor, or one time per sample ``[B, 1]``
as flow matching draws them; ``x`` of shape ``[B, in]``); the
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

from cnf.errors import ConfigError, ShapeError
from cnf.nn import activation, activation_jvp, has_jvp

__all__ = ["ODENet", "LAYER_TYPES"]


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
        if t.dim() > 0:  # one time per sample [B, 1]: one generated layer per sample
            params = self.hypernet(t.reshape(-1, 1))
            n = self.dim_in * self.dim_out
            w = params[:, :n].reshape(-1, self.dim_out, self.dim_in)
            return torch.einsum("boi,bi->bo", w, x) + params[:, n:]
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
    concatsquash, tanh; 9,225 parameters at ``dim=2``). ``context_dim > 0`` makes it a
    conditional field ``f(t, z, c)``: the context ``c`` is concatenated to the input of the
    first layer.

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
        context_dim: int = 0,
    ):
        super().__init__()
        if layer_type not in LAYER_TYPES:
            raise ConfigError(
                f"unknown layer_type {layer_type!r}; choose one of {sorted(LAYER_TYPES)}"
            )
        if dim < 1 or any(int(h) < 1 for h in hidden):
            raise ConfigError(f"ODENet needs dim >= 1 and positive widths, got {dim}, {list(hidden)}")
        if context_dim < 0:
            raise ConfigError(f"context_dim must be >= 0, got {context_dim}")
        widths = [dim + context_dim, *(int(h) for h in hidden), dim]
        self.layers = nn.ModuleList(
            LAYER_TYPES[layer_type](a, b) for a, b in zip(widths[:-1], widths[1:])
        )
        self.acts = nn.ModuleList(activation(act) for _ in range(len(widths) - 2))
        self.dim = dim
        self.context_dim = context_dim
        self.layer_type = layer_type

    def _input(self, z: Tensor, context: Tensor | None) -> Tensor:
        if self.context_dim == 0:
            return z
        if context is None or context.shape != (z.shape[0], self.context_dim):
            got = None if context is None else list(context.shape)
            raise ShapeError(f"ODENet(context_dim={self.context_dim}) needs a context "
                             f"[{z.shape[0]}, {self.context_dim}], got {got}")
        return torch.cat([z, context.to(z.dtype)], dim=1)

    def forward(self, t: Tensor, z: Tensor, context: Tensor | None = None) -> Tensor:
        """``f(t, z)`` (``f(t, z, c)`` with a context ``[B, context_dim]``) of shape ``[B, D]``;
        ``t`` is a scalar or one time per sample (``[B]``)."""
        h = self._input(z, context)
        if t.dim() > 0:  # per-sample times (flow matching): [B] or [B, 1] -> [B, 1]
            t = t.reshape(-1, 1)
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.acts):
                h = self.acts[i](h)
        return h

    @property
    def supports_jvp(self) -> bool:
        """Whether :meth:`forward_jvp` is available (every activation has a closed-form
        derivative here)."""
        return all(has_jvp(a) for a in self.acts)

    def forward_jvp(self, t: Tensor, z: Tensor, v: Tensor,
                    context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``f(t, z)`` and the Jacobian-vector products ``(∂f/∂z) vₖ`` for tangents ``v``
        of shape ``[K, B, D]``, in one forward pass (forward-mode differentiation written
        out per layer). With ``v`` the D basis vectors this is the whole Jacobian, so the
        exact trace costs no backward passes. The context is constant: its tangent is 0."""
        h = self._input(z, context)
        if self.context_dim:
            v = torch.cat([v, v.new_zeros(*v.shape[:-1], self.context_dim)], dim=-1)
        for i, layer in enumerate(self.layers):
            h, v = layer.jvp(t, h, v)
            if i < len(self.acts):
                h, v = activation_jvp(self.acts[i], h, v)
        return h, v
