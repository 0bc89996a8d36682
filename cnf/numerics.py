"""Numerical leaves shared by the flows: scalar root finding, Hutchinson probes, blockwise
evaluation. Pure PyTorch; imports nothing else of cnf but its errors.

- :func:`monotone_root` — the root of an increasing scalar function per entry, by Newton
  steps safeguarded by bisection, to a stated tolerance; :class:`cnf.errors.InverseError`
  when it is not reached (the numerical inverses of planar and Sylvester layers).
- :func:`sample_probes` / :func:`probe` — Hutchinson probe vectors with ``E[v vᵀ] = I``.
- :func:`blockwise` — run a flow method on blocks of rows when no gradient is needed.

    >>> root, iters = monotone_root(lambda a: a ** 3 - 8.0, lambda a: 3 * a ** 2,
    ...                             torch.tensor([0.0]), torch.tensor([5.0]), tol=1e-9)
    >>> float(root)
    2.0
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from cnf.errors import ConfigError, InverseError

__all__ = ["monotone_root", "default_tol", "sample_probes", "probe", "blockwise", "EVAL_BLOCK"]


def default_tol(dtype: torch.dtype) -> float:
    """Root-finding tolerance by dtype: 1e-12 in float64, 1e-6 otherwise."""
    return 1e-12 if dtype == torch.float64 else 1e-6


@torch.no_grad()
def monotone_root(residual: Callable[[Tensor], Tensor], derivative: Callable[[Tensor], Tensor],
                  lo: Tensor, hi: Tensor, start: Tensor | None = None, scale: Tensor | float = 1.0,
                  tol: float | None = None, max_iter: int = 100,
                  name: str = "root finder") -> tuple[Tensor, int]:
    """Root of ``residual(a) = 0`` for every entry, ``residual`` increasing on ``[lo, hi]``
    with a sign change there; ``derivative`` is its derivative.

    Newton steps that leave the current bracket are replaced by bisection. Converged when
    ``|residual| <= tol · scale`` everywhere (``scale``: the size of the terms of the
    residual, which bounds what float arithmetic resolves) or when the bracket shrinks to
    round-off. Returns ``(root, iterations)``, without a graph (for gradients, take one
    differentiable Newton step at the root). Raises :class:`cnf.errors.InverseError`, naming
    ``name``, after ``max_iter`` iterations without convergence.
    """
    tol = default_tol(lo.dtype) if tol is None else tol
    eps = torch.finfo(lo.dtype).eps
    a = (0.5 * (lo + hi) if start is None else start).clamp(lo, hi)
    for it in range(1, max_iter + 1):
        g = residual(a)
        if bool((g.abs() <= tol * scale).all()):
            return a, it - 1
        hi = torch.where(g > 0, a, hi)
        lo = torch.where(g > 0, lo, a)
        newton = a - g / derivative(a)
        a = torch.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi))
        if bool(((hi - lo) <= 4 * eps * scale).all()):  # a bracket down to round-off
            return a, it
    worst = float((residual(a).abs() / scale).max())
    raise InverseError(
        f"{name}: the root finder stopped after {max_iter} iterations with relative residual "
        f"{worst:.2e} > tol {tol:.1e}; raise max_iter or tol, or evaluate in float64")


def sample_probes(kind: str, n: int, like: Tensor) -> Tensor:
    """``n`` probe vectors shaped like ``like`` (stacked: ``[n, *like.shape]``) with
    ``E[v vᵀ] = I``: ``rademacher`` (±1) or ``gaussian`` (N(0, I))."""
    shape = (n, *like.shape)
    if kind == "gaussian":
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    if kind == "rademacher":
        return torch.randint(0, 2, shape, device=like.device).to(like.dtype) * 2 - 1
    raise ConfigError(f"unknown probe distribution {kind!r}; choose 'rademacher' or 'gaussian'")


def probe(like: Tensor, kind: str = "rademacher") -> Tensor:
    """One Hutchinson probe shaped like ``like`` (see :func:`sample_probes`)."""
    return sample_probes(kind, 1, like)[0]


#: rows per block when a flow runs without gradients: the hidden activations and spline
#: intermediates of a block stay in cache. Measured on the 2-core CPU: log_prob of 100k
#: points with MAF 5×(MADE 2×64) took 0.15 s in blocks of 4096 vs 0.65 s in one block.
EVAL_BLOCK = 4096

_Method = Callable[..., tuple[Tensor, Tensor]]


def blockwise(method: _Method) -> _Method:
    """Run ``method(self, x, context)`` on blocks of ``EVAL_BLOCK`` rows when gradients are
    off (evaluation, sampling) and concatenate; with gradients, one call on the whole batch.
    Rows are independent in every flow, so the result is the same either way."""

    @functools.wraps(method)
    def wrapper(self: nn.Module, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        if n <= EVAL_BLOCK or torch.is_grad_enabled():
            return method(self, x, context)
        outs, lds = [], []
        for start in range(0, n, EVAL_BLOCK):
            c = None if context is None else context[start: start + EVAL_BLOCK]
            y, ld = method(self, x[start: start + EVAL_BLOCK], c)
            outs.append(y)
            lds.append(ld)
        return torch.cat(outs), torch.cat(lds)

    return wrapper
