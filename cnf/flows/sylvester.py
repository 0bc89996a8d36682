"""Sylvester flows (van den Berg et al., 2018, "Sylvester normalizing flows for variational
inference"), fully amortized: every parameter comes per sample from the context.

The map, in the generative direction (base sample ``z`` -> posterior sample ``x``)::

    x = z + Q R h(R̃ Qᵀ z + b),      log|det dx/dz| = Σᵢ log|1 + rᵢᵢ r̃ᵢᵢ h'(·)ᵢ|,   h = tanh

with ``R``, ``R̃`` upper triangular with ``tanh`` diagonals (``|rᵢᵢ r̃ᵢᵢ| < 1``, so the map is
invertible) and ``Q`` with orthonormal columns: from a QR decomposition of an amortized
``D × M`` matrix (orthogonal variant; the paper orthogonalizes iteratively instead) or a
product of ``H`` amortized Householder reflections (Householder variant, ``M = D``).

**Cheap direction: ``inverse``** (analytic). ``forward`` back-substitutes through the
triangular structure with the tolerance-checked scalar root finder of
:mod:`cnf.numerics` (``InverseError`` when it fails); one differentiable Newton step at each
root gives implicit-function gradients. :class:`cnf.flows.amortized.AmortizedChain` stacks
layers and splits one context vector among them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cnf.errors import ConfigError
from cnf.flows.base import Flow, amortized_params
from cnf.numerics import monotone_root

__all__ = ["Sylvester"]


class Sylvester(Flow):
    """Sylvester layer ``x = z + Q R tanh(R̃ Qᵀ z + b)`` with per-sample ``Q, R, R̃, b`` (fully
    amortized: the ``context`` ``[B, param_dim]`` holds them raw).

    Args:
        dim: D.
        num_columns: M, the number of orthonormal columns of Q (orthogonal variant; ≤ D).
        variant: ``"orthogonal"`` (Q from QR of an amortized D×M matrix) or
            ``"householder"`` (Q = H₁⋯H_H from amortized reflection vectors; M = D).
        num_householder: H, reflections per layer (Householder variant).

    ``param_dim = 2·M² + M`` (R, R̃ as full M×M raw matrices of which the upper triangles
    are used, b) ``+ D·M`` (orthogonal) or ``+ H·D`` (Householder). Cheap direction:
    ``inverse``. ``forward`` back-substitutes through the triangular structure: one scalar
    monotone root (:func:`cnf.numerics.monotone_root`, to ``tol``; ``max_iter`` caps it) per
    coordinate of ``Qᵀz`` (M in sequence); the part of ``z`` orthogonal to Q's columns is left
    unchanged by the map.

    Example::

        >>> flow = Sylvester(4, num_columns=2)
        >>> params = torch.randn(8, flow.param_dim)            # from an encoder head
        >>> x, logdet = flow.inverse(torch.randn(8, 4), params)  # analytic
        >>> z, _ = flow(x, params)                               # root finding
        >>> bool(z.isfinite().all())
        True
    """

    def __init__(self, dim: int, num_columns: int | None = None,
                 variant: str = "orthogonal", num_householder: int = 4,
                 tol: float | None = None, max_iter: int = 100):
        super().__init__()
        self.tol, self.max_iter = tol, max_iter
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
        q, r, rt, bias = self._split(amortized_params(self, z, context))
        v = (q.transpose(1, 2) @ z[:, :, None]).squeeze(2)              # Qᵀz  [B, M]
        pre = (rt @ v[:, :, None]).squeeze(2) + bias                    # R̃Qᵀz + b
        t = torch.tanh(pre)
        x = z + (q @ (r @ t[:, :, None])).squeeze(2)
        diag = torch.diagonal(r, dim1=1, dim2=2) * torch.diagonal(rt, dim1=1, dim2=2)
        logdet = torch.log((1 + diag * (1 - t * t)).abs()).sum(1)
        return x, logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, r, rt, bias = self._split(amortized_params(self, x, context))
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

            vi, _ = monotone_root(
                lambda v, g=g, target=target: g(v) - target, dg,
                target - rii.abs(), target + rii.abs(), scale=1 + target.abs() + rii.abs(),
                tol=self.tol, max_iter=self.max_iter, name="Sylvester.forward")
            sech2 = 1 - torch.tanh(rtii * vi + known_pre).pow(2)
            vi = vi - (g(vi) - target) / (1 + rii * rtii * sech2)   # differentiable Newton step
            ti = torch.tanh(rtii * vi + known_pre)
            v_cols[i], t_cols[i] = vi, ti
            logdet = logdet - torch.log((1 + rii * rtii * (1 - ti * ti)).abs())
        v = torch.stack(v_cols, 1)
        z = rest + (q @ v[:, :, None]).squeeze(2)
        return z, logdet
