"""Flows whose parameters come from outside, per sample: the posteriors of VAEs with flows.

In the Sylvester-flows setup (van den Berg et al., 2018) the encoder's linear heads output
every flow parameter for each data point. Here that parameter vector is the flow's
``context``: ``context[b]`` holds the raw (unconstrained) parameters of sample ``b``, and
``param_dim`` says how many there are. :class:`AmortizedChain` splits one context vector
among its layers. The flows hold no parameters of their own.

All maps are defined in the generative direction (latent ``z`` -> data ``x``, here the base
sample ``z_0`` -> posterior sample ``z_K``), which is **``inverse``: analytic and cheap**.
``forward`` (density evaluation of a given ``z_K``) is exact in closed form for radial, and
numerical for planar and Sylvester (scalar monotone root finding: bisection, then Newton
steps inside the bracket, to float resolution; one final differentiable Newton step makes
gradients follow the implicit function theorem). ``ConditionalIAF`` (Kingma et al., 2016)
conditions on encoder features instead (a conditional CNF is
``cnf.flows.continuous.CNF(dim, context_dim=...)``).

Maps (``h = tanh``)::

    planar     x = z + û h(wᵀz + b),                    log|det| = log|1 + h'(wᵀz + b) wᵀû|
    radial     x = z + β (z - z₀) / (α + ‖z - z₀‖),      (Rezende & Mohamed, 2015)
    Sylvester  x = z + Q R h(R̃ Qᵀ z + b),               log|det| = Σᵢ log|1 + rᵢᵢ r̃ᵢᵢ h'(·)ᵢ|

with ``û`` and ``β`` reparameterized so the maps are invertible (``wᵀû > -1``,
``β > -α``), ``R``, ``R̃`` upper triangular with ``tanh`` diagonals (``|rᵢᵢ r̃ᵢᵢ| < 1``) and
``Q`` with orthonormal columns: from a QR decomposition of an amortized ``D × M`` matrix
(orthogonal variant; the paper orthogonalizes iteratively instead) or a product of ``H``
amortized Householder reflections (Householder variant, ``M = D``).

Example::

    >>> flow = AmortizedChain([AmortizedPlanar(4), AmortizedRadial(4)])
    >>> params = torch.randn(8, flow.param_dim)          # from an encoder head
    >>> zk, logdet = flow.inverse(torch.randn(8, 4), params)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnf.errors import ConfigError, ShapeError
from cnf.flows.base import Flow

__all__ = [
    "AmortizedFlow", "AmortizedPlanar", "AmortizedRadial", "AmortizedSylvester",
    "AmortizedChain", "ConditionalIAF", "MaskedLinear",
]


def _solve(fn: Callable[[Tensor], Tensor], dfn: Callable[[Tensor], Tensor], target: Tensor,
           lo: Tensor, hi: Tensor, bisections: int = 16, newton: int = 4) -> Tensor:
    """Root of the increasing elementwise ``fn(v) = target`` in ``[lo, hi]``: ``bisections``
    halvings, then ``newton`` Newton steps (``dfn`` = derivative) kept inside the bracket.
    Brackets here are at most a few units wide, so 16 halvings leave < 1e-4 and the Newton
    steps reach float resolution (quadratic convergence); the tests check 1e-9 round trips."""
    for _ in range(bisections):
        mid = 0.5 * (lo + hi)
        below = fn(mid) < target
        lo = torch.where(below, mid, lo)
        hi = torch.where(below, hi, mid)
    v = 0.5 * (lo + hi)
    for _ in range(newton):
        v = torch.minimum(torch.maximum(v - (fn(v) - target) / dfn(v), lo), hi)
    return v


class AmortizedFlow(Flow):
    """A flow whose parameters are the ``context``: ``[B, param_dim]`` raw values."""

    param_dim: int
    dim: int

    def _params(self, x: Tensor, context: Tensor | None) -> Tensor:
        if context is None or context.ndim != 2 or context.shape[1] != self.param_dim \
                or context.shape[0] != x.shape[0]:
            got = None if context is None else list(context.shape)
            raise ShapeError(f"{type(self).__name__} takes its parameters as context of shape "
                             f"[{x.shape[0]}, {self.param_dim}]; got {got}")
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ShapeError(f"{type(self).__name__} acts on [batch, {self.dim}]; got {list(x.shape)}")
        return context


class AmortizedPlanar(AmortizedFlow):
    """Planar layer with per-sample ``(u, w, b)``: ``param_dim = 2D + 1``. Cheap direction:
    ``inverse``. ``forward`` solves the scalar ``α + (wᵀû) tanh(α + b) = wᵀx`` for
    ``α = wᵀz`` (root within ``wᵀx ± |wᵀû|``) by safeguarded Newton."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim, self.param_dim = dim, 2 * dim + 1

    def _uwb(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d = self.dim
        u, w, b = p[:, :d], p[:, d:2 * d], p[:, 2 * d]
        wu = (w * u).sum(1, keepdim=True)
        u_hat = u + (F.softplus(wu) - 1 - wu) * w / w.pow(2).sum(1, keepdim=True).clamp_min(1e-12)
        return u_hat, w, b

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u, w, b = self._uwb(self._params(z, context))
        a = (w * z).sum(1) + b
        t = torch.tanh(a)
        x = z + u * t[:, None]
        logdet = torch.log((1 + (1 - t * t) * (w * u).sum(1)).abs())
        return x, logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u, w, b = self._uwb(self._params(x, context))
        wu, y = (w * u).sum(1), (w * x).sum(1)

        def g(alpha: Tensor) -> Tensor:
            return alpha + wu * torch.tanh(alpha + b)

        def dg(alpha: Tensor) -> Tensor:
            return 1 + wu * (1 - torch.tanh(alpha + b).pow(2))

        with torch.no_grad():
            alpha = _solve(g, dg, y, y - wu.abs() - 1e-6, y + wu.abs() + 1e-6)
        # one Newton step at the root: exact value, implicit-function gradients
        sech2 = 1 - torch.tanh(alpha + b).pow(2)
        alpha = alpha - (g(alpha) - y) / (1 + wu * sech2)
        t = torch.tanh(alpha + b)
        z = x - u * t[:, None]
        logdet = -torch.log((1 + (1 - t * t) * wu).abs())
        return z, logdet


class AmortizedRadial(AmortizedFlow):
    """Radial layer with per-sample ``(z₀, α̂, β̂)``: ``param_dim = D + 2``, ``α = softplus(α̂)``,
    ``β = -α + softplus(β̂)``. Both directions in closed form: with ``ρ = ‖x - z₀‖`` the radius
    ``r = ‖z - z₀‖`` solves ``r² + (α + β - ρ) r - ρα = 0``."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim, self.param_dim = dim, dim + 2

    def _split(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        z0 = p[:, :self.dim]
        alpha = F.softplus(p[:, self.dim])
        beta = -alpha + F.softplus(p[:, self.dim + 1])
        return z0, alpha, beta

    def _logdet(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        h = 1 / (alpha + r)
        bh = beta * h
        return (self.dim - 1) * torch.log1p(bh) + torch.log1p(bh - beta * h * h * r)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z0, alpha, beta = self._split(self._params(z, context))
        diff = z - z0
        r = torch.linalg.vector_norm(diff, dim=1)
        x = z + (beta / (alpha + r))[:, None] * diff
        return x, self._logdet(r, alpha, beta)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z0, alpha, beta = self._split(self._params(x, context))
        y = x - z0
        rho = torch.linalg.vector_norm(y, dim=1)
        c = alpha + beta - rho
        r = 0.5 * (-c + torch.sqrt(c * c + 4 * rho * alpha))
        z = z0 + y / (1 + beta / (alpha + r))[:, None]
        return z, -self._logdet(r, alpha, beta)


class AmortizedSylvester(AmortizedFlow):
    """Sylvester layer ``x = z + Q R tanh(R̃ Qᵀ z + b)`` with per-sample ``Q, R, R̃, b``.

    Args:
        dim: D.
        num_columns: M, the number of orthonormal columns of Q (orthogonal variant; ≤ D).
        variant: ``"orthogonal"`` (Q from QR of an amortized D×M matrix) or
            ``"householder"`` (Q = H₁⋯H_H from amortized reflection vectors; M = D).
        num_householder: H, reflections per layer (Householder variant).

    ``param_dim = 2·M² + M`` (R, R̃ as full M×M raw matrices of which the upper triangles
    are used, b) ``+ D·M`` (orthogonal) or ``+ H·D`` (Householder). Cheap direction:
    ``inverse``. ``forward`` back-substitutes through the triangular structure: one scalar
    monotone root (bisection + Newton) per coordinate of ``Qᵀz`` (M in sequence); the part of ``z``
    orthogonal to Q's columns is left unchanged by the map.
    """

    def __init__(self, dim: int, num_columns: int | None = None,
                 variant: str = "orthogonal", num_householder: int = 4):
        super().__init__()
        if variant not in ("orthogonal", "householder"):
            raise ConfigError(f"variant must be 'orthogonal' or 'householder', got {variant!r}")
        m = dim if (variant == "householder" or num_columns is None) else int(num_columns)
        if not 1 <= m <= dim:
            raise ConfigError(f"num_columns must be in [1, {dim}], got {num_columns}")
        if variant == "householder" and num_householder < 1:
            raise ConfigError("num_householder must be >= 1")
        self.dim, self.m, self.variant, self.num_householder = dim, m, variant, num_householder
        q_dim = dim * m if variant == "orthogonal" else num_householder * dim
        self.param_dim = 2 * m * m + m + q_dim
        self.register_buffer("_triu", torch.triu(torch.ones(m, m), diagonal=1), persistent=False)

    def _split(self, p: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        b_, m, d = p.shape[0], self.m, self.dim
        mm = m * m
        r_raw = p[:, :mm].reshape(b_, m, m)
        rt_raw = p[:, mm:2 * mm].reshape(b_, m, m)
        bias = p[:, 2 * mm:2 * mm + m]
        q_raw = p[:, 2 * mm + m:]
        triu = self._triu.to(p.dtype)
        r = r_raw * triu + torch.diag_embed(torch.tanh(torch.diagonal(r_raw, dim1=1, dim2=2)))
        rt = rt_raw * triu + torch.diag_embed(torch.tanh(torch.diagonal(rt_raw, dim1=1, dim2=2)))
        if self.variant == "orthogonal":
            q, rr = torch.linalg.qr(q_raw.reshape(b_, d, m))
            # fix QR's sign freedom so Q is a smooth function of the raw matrix
            q = q * torch.sign(torch.diagonal(rr, dim1=1, dim2=2) + 1e-30)[:, None, :]
        else:
            v = q_raw.reshape(b_, self.num_householder, d)
            v = v / torch.linalg.vector_norm(v, dim=2, keepdim=True).clamp_min(1e-12)
            q = torch.eye(d, dtype=p.dtype, device=p.device).expand(b_, d, d)
            for i in range(self.num_householder):
                vi = v[:, i, :]
                q = q - 2 * (q @ vi[:, :, None]) * vi[:, None, :]
        return q, r, rt, bias

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, r, rt, bias = self._split(self._params(z, context))
        v = (q.transpose(1, 2) @ z[:, :, None]).squeeze(2)              # Qᵀz  [B, M]
        pre = (rt @ v[:, :, None]).squeeze(2) + bias                    # R̃Qᵀz + b
        t = torch.tanh(pre)
        x = z + (q @ (r @ t[:, :, None])).squeeze(2)
        diag = torch.diagonal(r, dim1=1, dim2=2) * torch.diagonal(rt, dim1=1, dim2=2)
        logdet = torch.log((1 + diag * (1 - t * t)).abs()).sum(1)
        return x, logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, r, rt, bias = self._split(self._params(x, context))
        u = (q.transpose(1, 2) @ x[:, :, None]).squeeze(2)              # Qᵀx = v + R tanh(·)
        rest = x - (q @ u[:, :, None]).squeeze(2)                        # unchanged part
        m = self.m
        v_cols: list[Tensor | None] = [None] * m
        t_cols: list[Tensor | None] = [None] * m
        logdet = x.new_zeros(x.shape[0])
        for i in reversed(range(m)):
            later = range(i + 1, m)
            known_pre = bias[:, i] + sum((rt[:, i, k] * v_cols[k] for k in later),
                                         start=x.new_zeros(x.shape[0]))
            known_out = sum((r[:, i, j] * t_cols[j] for j in later), start=x.new_zeros(x.shape[0]))
            rii, rtii = r[:, i, i], rt[:, i, i]
            target = u[:, i] - known_out

            def g(vi: Tensor, rii=rii, rtii=rtii, known_pre=known_pre) -> Tensor:
                return vi + rii * torch.tanh(rtii * vi + known_pre)

            def dg(vi: Tensor, rii=rii, rtii=rtii, known_pre=known_pre) -> Tensor:
                return 1 + rii * rtii * (1 - torch.tanh(rtii * vi + known_pre).pow(2))

            with torch.no_grad():
                vi = _solve(g, dg, target, target - rii.abs() - 1e-6, target + rii.abs() + 1e-6)
            sech2 = 1 - torch.tanh(rtii * vi + known_pre).pow(2)
            vi = vi - (g(vi) - target) / (1 + rii * rtii * sech2)   # differentiable Newton step
            ti = torch.tanh(rtii * vi + known_pre)
            v_cols[i], t_cols[i] = vi, ti
            logdet = logdet - torch.log((1 + rii * rtii * (1 - ti * ti)).abs())
        v = torch.stack(v_cols, 1)
        z = rest + (q @ v[:, :, None]).squeeze(2)
        return z, logdet


class AmortizedChain(AmortizedFlow):
    """Composition of amortized flows; ``context`` is split among them in order
    (``param_dim`` is the sum). Generative order: ``inverse`` applies ``flows[0]`` first."""

    def __init__(self, flows: Sequence[AmortizedFlow]):
        super().__init__()
        if not flows:
            raise ConfigError("AmortizedChain needs at least one flow")
        dims = {f.dim for f in flows}
        if len(dims) != 1:
            raise ConfigError(f"all flows of an AmortizedChain need the same dim, got {sorted(dims)}")
        self.flows = nn.ModuleList(flows)
        self.dim = dims.pop()
        self.param_dim = sum(f.param_dim for f in flows)
        self._sizes = [f.param_dim for f in flows]

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        parts = self._params(z, context).split(self._sizes, dim=1)
        total = z.new_zeros(z.shape[0])
        for flow, p in zip(self.flows, parts):
            z, ld = flow.inverse(z, p)
            total = total + ld
        return z, total

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        parts = self._params(x, context).split(self._sizes, dim=1)
        total = x.new_zeros(x.shape[0])
        for flow, p in zip(reversed(self.flows), reversed(parts)):
            x, ld = flow(x, p)
            total = total + ld
        return x, total

    def __len__(self) -> int:
        return len(self.flows)


# -- conditional IAF ---------------------------------------------------------------------
class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (MADE)."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor):
        super().__init__(in_features, out_features)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class ConditionalIAF(Flow):
    """Inverse autoregressive flow with context (Kingma et al., 2016), one layer::

        [m, s] = MADE(z, context),  σ = sigmoid(s + forget_bias),  x = σ ⊙ z + (1 - σ) ⊙ m
        log|det dx/dz| = Σ log σ

    ``x_i`` depends on ``z_{<i}`` (in the layer's ``order``) and the context only. Cheap
    direction: ``inverse`` (z -> x, one MADE pass: sampling a posterior). ``forward``
    inverts it with D sequential MADE passes (exact). Stack layers with reversed orders.

    Args:
        dim: D. context_dim: width of the conditioning features (0 for none).
        hidden: MADE hidden width. reverse: use the order D-1, …, 0 instead of 0, …, D-1.
        forget_bias: added to ``s`` so that σ starts near sigmoid(1.5) ≈ 0.82 (stable start).
    """

    def __init__(self, dim: int, context_dim: int = 0, hidden: int = 64, reverse: bool = False,
                 forget_bias: float = 1.5):
        super().__init__()
        self.dim, self.context_dim, self.forget_bias = dim, context_dim, forget_bias
        order = torch.arange(dim)
        if reverse:
            order = order.flip(0)
        self.register_buffer("order", order)
        # hidden degrees in [0, D-2]; output i may see inputs of degree < order[i]
        deg_h = torch.arange(hidden) % max(dim - 1, 1)
        mask_in = (deg_h[:, None] >= order[None, :]).float()             # [H, D]
        mask_out = (order[:, None] > deg_h[None, :]).float()             # [D, H]
        self.inp = MaskedLinear(dim, hidden, mask_in)
        self.ctx = nn.Linear(context_dim, hidden) if context_dim > 0 else None
        self.hid = MaskedLinear(hidden, hidden, (deg_h[:, None] >= deg_h[None, :]).float())
        self.out = MaskedLinear(hidden, 2 * dim, torch.cat([mask_out, mask_out]))
        with torch.no_grad():
            self.out.weight.mul_(0.01)
            self.out.bias.zero_()

    def _ms(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        h = self.inp(z)
        if self.ctx is not None:
            if context is None or context.shape != (z.shape[0], self.context_dim):
                got = None if context is None else list(context.shape)
                raise ShapeError(f"ConditionalIAF needs context [{z.shape[0]}, "
                                 f"{self.context_dim}]; got {got}")
            h = h + self.ctx(context)
        h = self.hid(F.elu(h))
        m, s = self.out(F.elu(h)).chunk(2, dim=1)
        return m, s + self.forget_bias

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        m, s = self._ms(z, context)
        sig = torch.sigmoid(s)
        return sig * z + (1 - sig) * m, F.logsigmoid(s).sum(1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = torch.zeros_like(x)
        for i in torch.argsort(self.order).tolist():
            m, s = self._ms(z, context)
            sig = torch.sigmoid(s[:, i])
            z = z.clone()
            z[:, i] = (x[:, i] - (1 - sig) * m[:, i]) / sig
        m, s = self._ms(z, context)
        return z, -F.logsigmoid(s).sum(1)
