"""Divergence ``tr(∂f/∂z)`` of a vector field, exactly or by Hutchinson's estimator.

Both functions take ``f`` (``[B, D]``) computed from ``z`` (``[B, D]``) with autograd
recording, and return ``(div [B], jac_frob_sq [B] or None)``: when ``frobenius=True`` they
also return ``‖∂f/∂z‖²_F`` per sample (exact) or its unbiased estimate ``‖εᵀ ∂f/∂z‖²``
(Hutchinson), reusing the same vector-Jacobian products (Finlay et al., 2020, "How to
train your neural ODE"). Cost: ``exact`` takes D autograd passes, ``hutchinson`` one per
probe.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cnf.numerics import sample_probes  # the one probe sampler (re-exported here)

__all__ = ["divergence_exact", "divergence_hutchinson", "divergence_from_jvp", "sample_probes"]


def divergence_exact(
    f: Tensor, z: Tensor, create_graph: bool, frobenius: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Exact trace: row ``i`` of the Jacobian from one autograd pass of ``Σ_b f[b, i]``."""
    div = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    frob = torch.zeros_like(div) if frobenius else None
    dim = f.shape[1]
    for i in range(dim):
        row = torch.autograd.grad(
            f[:, i].sum(), z, create_graph=create_graph, retain_graph=create_graph or i < dim - 1
        )[0]
        div = div + row[:, i]
        if frob is not None:
            frob = frob + row.pow(2).sum(1)
    return div, frob


def divergence_hutchinson(
    f: Tensor, z: Tensor, probes: Tensor, create_graph: bool, frobenius: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Hutchinson's estimate ``mean_k εₖᵀ (∂f/∂z) εₖ`` with probes ``[K, B, D]``."""
    k = probes.shape[0]
    div = torch.zeros(f.shape[0], dtype=f.dtype, device=f.device)
    frob = torch.zeros_like(div) if frobenius else None
    for j in range(k):
        e = probes[j]
        vjp = torch.autograd.grad(
            f, z, e, create_graph=create_graph, retain_graph=create_graph or j < k - 1
        )[0]  # εᵀ J
        div = div + (vjp * e).sum(1)
        if frob is not None:
            frob = frob + vjp.pow(2).sum(1)
    div = div / k
    if frob is not None:
        frob = frob / k
    return div, frob


def divergence_from_jvp(
    jv: Tensor, probes: Tensor | None, frobenius: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Trace (and ``‖J‖²_F``) from forward-mode products ``jv = J vₖ`` (``[K, B, D]``).

    ``probes=None`` means ``vₖ`` were the D basis vectors (``jv[j, b, i] = ∂f_i/∂z_j``):
    the exact trace and Frobenius norm. Otherwise Hutchinson: ``mean_k εₖᵀ J εₖ`` and
    ``mean_k ‖J εₖ‖²`` (both unbiased since ``E[εεᵀ] = I``)."""
    if probes is None:
        div = jv.diagonal(dim1=0, dim2=2).sum(-1)
        frob = jv.pow(2).sum((0, 2)) if frobenius else None
        return div, frob
    div = (jv * probes).sum(-1).mean(0)
    frob = jv.pow(2).sum(-1).mean(0) if frobenius else None
    return div, frob

