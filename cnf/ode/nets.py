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
    #: ``fused_params`` are this layer's own parameters, in ``parameters()`` order
    own_fused_params = True

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.linear(x)

    def jvp(self, t: Tensor, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return self.linear(x), v @ self.linear.weight.T

    def fused_params(self, t: Tensor) -> tuple[Tensor | None, ...]:
        return self.linear.weight, self.linear.bias, None, None, None


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

    def fused_params(self, t: Tensor) -> tuple[Tensor | None, ...]:
        w = self.linear.weight
        return w[:, 1:], self.linear.bias + w[:, 0] * t, None, None, None


class _Squash(nn.Module):
    #: ``fused_params`` are this layer's own parameters, in ``parameters()`` order
    own_fused_params = True

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

    def fused_params(self, t: Tensor) -> tuple[Tensor | None, ...]:
        return (self.linear.weight, self.linear.bias, self.hyper_gate.weight,
                self.hyper_gate.bias, None)


class _ConcatSquash(nn.Module):
    #: ``fused_params`` are this layer's own parameters, in ``parameters()`` order
    own_fused_params = True

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

    def fused_params(self, t: Tensor) -> tuple[Tensor | None, ...]:
        return (self.linear.weight, self.linear.bias, self.hyper_gate.weight,
                self.hyper_gate.bias, self.hyper_bias.weight)


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

    def fused_params(self, t: Tensor) -> tuple[Tensor | None, ...]:
        w0, b0 = self.layer0.weight, self.layer0.bias
        return (w0 + (self.layer1.weight - w0) * t, b0 + (self.layer1.bias - b0) * t,
                None, None, None)


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

    def fused_params(self, t: Tensor) -> tuple[Tensor | None, ...]:
        w, b = self._params(t)
        return w, b, None, None, None


# -- one autograd node for the field and its Jacobian-vector products ---------------------
#: activations the fused pass knows: value, first and second derivative of ``a(u)``
def _act_derivs(name: str, u: Tensor, second: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    if name == "tanh":
        y = torch.tanh(u)
        d1 = 1 - y * y
        return y, d1, (-2 * y * d1 if second else None)
    if name == "softplus":
        s = torch.sigmoid(u)
        return nn.functional.softplus(u), s, (s * (1 - s) if second else None)
    if name in ("swish", "silu"):
        s = torch.sigmoid(u)
        d1 = s * (1 + u * (1 - s))
        return u * s, d1, (s * (1 - s) * (2 + u * (1 - 2 * s)) if second else None)
    if name == "elu":
        y = nn.functional.elu(u)
        pos = u > 0
        d1 = torch.where(pos, torch.ones_like(u), y + 1)
        return y, d1, (torch.where(pos, torch.zeros_like(u), y + 1) if second else None)
    if name == "relu":
        d1 = (u > 0).to(u.dtype)
        return torch.relu(u), d1, (torch.zeros_like(u) if second else None)
    raise ConfigError(f"no fused forward-mode pass for the activation {name!r}")


FUSED_ACTS = ("tanh", "softplus", "swish", "silu", "elu", "relu")


def _affine_mlp_jvp(act: str, t: Tensor, h0: Tensor, v0: Tensor, params: tuple,
                    save: bool) -> tuple[Tensor, Tensor, list]:
    """The forward pass of :class:`_AffineMLPJVP` (plain tensor code, no autograd): ``f``,
    ``J vₖ`` and, with ``save``, what the backward pass needs."""
    x = torch.cat([h0.unsqueeze(0), v0], 0)
    n = len(params) // 5
    saved: list = []
    out = x
    for i in range(n):
        w, b, ga, ge, d = params[5 * i: 5 * i + 5]
        p = torch.matmul(x, w.t())
        if b is not None:
            p[0] += b
        g = torch.sigmoid(torch.addcmul(ge, ga.view(-1), t)) if ga is not None else None
        u = p * g if g is not None else p
        if d is not None:
            u[0] += d.view(-1) * t
        if i < n - 1:
            y, d1, d2 = _act_derivs(act, u[0], save)
            q = u[1:]
            nxt = torch.empty_like(u)
            nxt[0] = y
            torch.mul(q, d1, out=nxt[1:])
            if save:
                saved.append((x, p if g is not None else None, g, d1, d2, q))
            x = nxt
        else:
            if save:
                saved.append((x, p if g is not None else None, g, None, None, None))
            out = u
    return out[0], out[1:], saved


class _AffineMLPJVP(torch.autograd.Function):
    """``f`` and ``J vₖ`` of an MLP whose layers are ``y = (x Wᵀ + b) ⊙ g + c`` with
    ``g = σ(a t + e)`` and ``c = d t`` (each optional; FFJORD's ``concatsquash`` has all
    three), activation between layers, as **one autograd node**: the value and the K
    tangents ride in one ``[K+1, B, ·]`` tensor (one matrix product per layer), and the
    backward pass (what the adjoint asks for at every evaluation) is written out. For a
    layer with input rows ``X``, pre-gate products ``P = X Wᵀ (+ b on the value row)`` and
    upstream ``G``::

        ∂W = (G ⊙ g)ᵀ X,  ∂b = Σ_B (G ⊙ g)[0],  ∂X = (G ⊙ g) W,
        ∂(a t + e) = Σ (G ⊙ P) ⊙ g (1 - g),     ∂c = Σ_B G[0]

    and through the activation, for the value row ``y = a(u)`` and tangent rows
    ``v = a'(u) q``: ``∂q = a'(u) ∂v``, ``∂u = a'(u) ∂y + a''(u) Σ_k q ⊙ ∂v``. No gradient
    reaches the tangents' starting vectors (the basis or the probes). Parameters per layer:
    ``(W, b, a [out, 1], e [out], d [out, 1])``, ``None`` where a layer has none."""

    @staticmethod
    def forward(ctx, act: str, t: Tensor, h0: Tensor, v0: Tensor, *params):  # type: ignore[override]
        f, jv, saved = _affine_mlp_jvp(act, t, h0, v0, params, save=any(ctx.needs_input_grad))
        ctx.saved, ctx.params, ctx.t = saved, params, t
        return f, jv

    @staticmethod
    def backward(ctx, gf, gjv):  # type: ignore[override]
        need = ctx.needs_input_grad
        gt, gh0, grads = _affine_mlp_vjp(ctx.saved, ctx.params, ctx.t, gf, gjv, need[4:],
                                         need_t=need[1])
        return (None, gt, gh0 if need[2] else None, None, *grads)


def _affine_mlp_vjp(saved: list, params: tuple, t: Tensor, gf: Tensor | None,
                    gjv: Tensor | None, need: Sequence[bool], need_t: bool = False
                    ) -> tuple[Tensor | None, Tensor, list]:
    """The backward pass of :class:`_AffineMLPJVP` (plain tensor code): for upstream
    gradients ``gf`` of ``f`` and ``gjv`` of ``J v``, the gradients w.r.t. ``t`` (``None``
    unless ``need_t`` and some layer uses ``t``), the input ``h0`` and each parameter
    (``None`` where ``need`` says so)."""
    x_last = saved[-1][0]
    G = x_last.new_zeros(x_last.shape[0], x_last.shape[1], params[-5].shape[0])
    if gf is not None:
        G[0] = gf
    if gjv is not None:
        G[1:] = gjv
    grads: list = [None] * len(params)
    need_t = need_t and any(params[5 * i + 2] is not None or params[5 * i + 4] is not None
                            for i in range(len(params) // 5))
    gt = torch.zeros_like(t) if need_t else None
    gh0 = G[0]
    for i in range(len(params) // 5 - 1, -1, -1):
        w, b, ga, ge, d = params[5 * i: 5 * i + 5]
        x, p, g, _, _, _ = saved[i]
        j = 5 * i
        if d is not None and (need[j + 4] or need_t):
            gc = G[0].sum(0)
            if need[j + 4]:
                grads[j + 4] = (gc * t).view_as(d)
            if need_t:
                gt = gt + (gc * d.view(-1)).sum()
        if g is not None:
            if need[j + 2] or need[j + 3] or need_t:
                gpre = (G * p).sum((0, 1)) * g * (1 - g)
                grads[j + 2] = (gpre * t).view_as(ga) if need[j + 2] else None
                grads[j + 3] = gpre if need[j + 3] else None
                if need_t:
                    gt = gt + (gpre * ga.view(-1)).sum()
            G = G * g
        if b is not None and need[j + 1]:
            grads[j + 1] = G[0].sum(0)
        if need[j]:
            grads[j] = G.reshape(-1, G.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        gx = torch.matmul(G, w)
        if i == 0:
            gh0 = gx[0]
            break
        _, _, _, d1, d2, q = saved[i - 1]
        gv = gx[1:]
        G = torch.empty_like(gx)
        torch.mul(gv, d1, out=G[1:])
        torch.addcmul(gx[0] * d1, (gv * q).sum(0), d2, out=G[0])
    return gt, gh0, grads


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
        self.act_name = act
        #: forward_jvp runs as one autograd node (:class:`_AffineMLPJVP`) for these
        #: activations; otherwise (and in :meth:`forward_jvp_layerwise`) layer by layer
        self.fused_jvp = act in FUSED_ACTS

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
        exact trace costs no backward passes. The context is constant: its tangent is 0.

        The value and the K tangents go through each layer as one ``[K+1, B, ·]`` product,
        and the whole pass is one autograd node with a written-out backward
        (:class:`_AffineMLPJVP`): what the adjoint's vector-Jacobian product asks for at
        every evaluation, in a fraction of the operations autograd would record.
        :meth:`forward_jvp_layerwise` gives the same numbers layer by layer."""
        if not self.fused_jvp or t.dim() > 0:
            return self.forward_jvp_layerwise(t, z, v, context)
        h = self._input(z, context)
        if self.context_dim:
            v = torch.cat([v, v.new_zeros(*v.shape[:-1], self.context_dim)], dim=-1)
        v = v.expand(v.shape[0], h.shape[0], v.shape[-1])  # a basis may come as [K, 1, D]
        params: list = []
        for layer in self.layers:
            params.extend(layer.fused_params(t))
        if not torch.is_grad_enabled():  # evaluation: no node, nothing saved
            return _affine_mlp_jvp(self.act_name, t, h, v.to(h.dtype), params, save=False)[:2]
        return _AffineMLPJVP.apply(self.act_name, t, h, v.to(h.dtype), *params)

    @property
    def supports_vjp(self) -> bool:
        """Whether :meth:`jvp_vjp` is available: a fused activation, layers whose fused
        parameters are their own (``ignore``, ``squash``, ``concatsquash``), no context."""
        return (self.fused_jvp and self.context_dim == 0
                and all(getattr(layer, "own_fused_params", False) for layer in self.layers))

    def jvp_vjp(self, t: Tensor, z: Tensor, v: Tensor, gf: Tensor, gjv: Tensor
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, list[Tensor]]:
        """``f``, ``J v`` (as :meth:`forward_jvp`) and the gradients of
        ``⟨gf, f⟩ + ⟨gjv, J v⟩`` w.r.t. the time ``t``, ``z`` and every parameter (in
        ``parameters()`` order), in one pass without autograd: what an adjoint solve's
        evaluation needs. Needs :attr:`supports_vjp`. Returns ``(f, jv, gt, gz, grads)``."""
        if not self.supports_vjp:
            raise ConfigError("jvp_vjp needs an ODENet with a fused activation (tanh, softplus, "
                              "swish, elu, relu), ignore/squash/concatsquash layers, no context")
        v = v.expand(v.shape[0], z.shape[0], v.shape[-1]).to(z.dtype)
        with torch.no_grad():
            params: list = []
            for layer in self.layers:
                params.extend(layer.fused_params(t))
            f, jv, saved = _affine_mlp_jvp(self.act_name, t, z, v, tuple(params), save=True)
            gt, gz, grads = _affine_mlp_vjp(saved, tuple(params), t, gf, gjv,
                                            [p is not None for p in params], need_t=True)
        gt = torch.zeros_like(t) if gt is None else gt
        return f, jv, gt, gz, [g for g in grads if g is not None]

    def forward_jvp_layerwise(self, t: Tensor, z: Tensor, v: Tensor,
                              context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """:meth:`forward_jvp` written layer by layer (each layer's ``jvp``, autograd
        recording every operation): the reference the fused pass is tested against."""
        h = self._input(z, context)
        if self.context_dim:
            v = torch.cat([v, v.new_zeros(*v.shape[:-1], self.context_dim)], dim=-1)
        for i, layer in enumerate(self.layers):
            h, v = layer.jvp(t, h, v)
            if i < len(self.acts):
                h, v = activation_jvp(self.acts[i], h, v)
        return h, v
