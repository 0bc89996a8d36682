"""Estimators of ``log|det(I + J_g(x))|`` for residual blocks ``F(x) = x + g(x)``, ``Lip(g) < 1``.

With ``‖J‖ < 1`` the log-determinant is the power series (Behrmann et al., 2019)::

    log det(I + J) = Σ_{k≥1} (-1)^{k+1} / k · tr(J^k),         tr(A) = E_v[vᵀ A v]

with ``E[v vᵀ] = I`` (Hutchinson). ``vᵀ J^k`` is k vector-Jacobian products, so no Jacobian
is ever formed. Three estimators share one interface, ``estimator(g, x) -> (g(x), logdet)``:

- :class:`ExactLogDet` — builds the Jacobian with ``D`` vector-Jacobian products and takes
  ``slogdet(I + J)``; differentiable; for small ``D`` and for evaluation.
- :class:`SeriesLogDet` — i-ResNet: the series truncated after ``n_terms`` terms. Biased (the
  bias is positive on the blocks measured here and shrinks geometrically with ``n``); memory
  grows with ``n`` because every term keeps its graph.
- :class:`RouletteLogDet` — Residual Flows (Chen et al., 2019): a random number ``N`` of terms
  after ``n_exact_terms`` always-computed ones, each term reweighted by ``1/P(N ≥ k - n_exact)``,
  which makes the estimate unbiased. ``N`` is geometric (``p``) or Poisson (``lam``); one ``N``
  per call (shared by the batch, as in the reference code). With ``neumann_grad=True`` the
  gradient comes from the Neumann-series estimator
  ``∂ log det(I+J) = E[Σ_{k=0}^{N} (-1)^k / P(N ≥ k) · vᵀ J^k (∂J) v]``: the power terms run
  without a graph, so memory does not grow with the number of terms. The returned tensor's
  *value* is still the unbiased log-det estimate (what should be logged); only its gradient
  is the Neumann one.

Probes are Rademacher by default (7–9× lower variance than Gaussian in 2-D, measured here) or
Gaussian; ``n_probes`` independent probes are averaged.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from cnf.errors import ConfigError
from cnf.numerics import probe

__all__ = [
    "LogDetEstimator", "ExactLogDet", "SeriesLogDet", "RouletteLogDet", "make_estimator",
    "jacobian", "series_exact_traces", "probe",
]

Fn = Callable[[Tensor], Tensor]


def jacobian(gx: Tensor, x: Tensor, create_graph: bool = False) -> Tensor:
    """Per-sample Jacobian ``J[b, i, j] = ∂g_i(x_b)/∂x_{b,j}`` (flattened event dims) from
    ``D`` vector-Jacobian products; valid because each sample's output depends on its own
    input only."""
    b = x.shape[0]
    gflat = gx.reshape(b, -1)
    rows = []
    for i in range(gflat.shape[1]):
        (r,) = torch.autograd.grad(gflat[:, i].sum(), x, retain_graph=True,
                                   create_graph=create_graph)
        rows.append(r.reshape(b, -1))
    return torch.stack(rows, dim=1)


def series_exact_traces(jac: Tensor, n_terms: int) -> Tensor:
    """``Σ_{k=1}^{n} (-1)^{k+1}/k · tr(J^k)`` with exact traces, for ``jac`` ``[B, D, D]``: the
    value the truncated Hutchinson series estimates (a test reference)."""
    out = jac.new_zeros(jac.shape[0])
    power = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device).expand_as(jac)
    for k in range(1, n_terms + 1):
        power = power @ jac
        out = out + (-1) ** (k + 1) / k * power.diagonal(dim1=-2, dim2=-1).sum(-1)
    return out


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).reshape(a.shape[0], -1).sum(1)


class LogDetEstimator:
    """Interface: ``estimator(g, x) -> (g(x), logdet[B])`` where ``logdet`` estimates
    ``log|det(I + ∂g/∂x)|``. Gradients flow through ``logdet`` when grad mode is on at the
    call; otherwise both outputs are detached. ``stats`` holds counters of the last call."""

    stochastic: bool = True
    name: str = ""

    def __init__(self) -> None:
        self.stats: dict[str, float] = {}

    def __call__(self, g: Fn, x: Tensor) -> tuple[Tensor, Tensor]:
        need_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            # differentiate w.r.t. a fresh node: hooks on ``x`` (e.g. the implicit gradient of
            # a fixed-point inverse) must not see the estimator's internal vector-Jacobian products
            xg = x.view_as(x) if x.requires_grad else x.detach().requires_grad_(True)
            gx = g(xg)
            logdet = self._estimate(gx, xg, need_graph)
        if not need_graph:
            return gx.detach(), logdet.detach()
        return gx, logdet

    def _estimate(self, gx: Tensor, x: Tensor, need_graph: bool) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if k != "stats")
        return f"{type(self).__name__}({fields})"


class ExactLogDet(LogDetEstimator):
    """``log|det(I + J)|`` from the full per-sample Jacobian (``D`` vector-Jacobian products
    and an LU ``slogdet``): exact and differentiable; cost grows with ``D``."""

    stochastic = False
    name = "exact"

    def _estimate(self, gx: Tensor, x: Tensor, need_graph: bool) -> Tensor:
        jac = jacobian(gx, x, create_graph=need_graph)
        eye = torch.eye(jac.shape[-1], dtype=jac.dtype, device=jac.device)
        self.stats = {"logdet_vjps": float(jac.shape[-1])}
        return torch.linalg.slogdet(eye + jac)[1]


class _Hutchinson(LogDetEstimator):
    def __init__(self, probe: str = "rademacher", n_probes: int = 1):
        super().__init__()
        if probe not in ("rademacher", "gaussian"):
            raise ConfigError(f"unknown probe {probe!r}; choose 'rademacher' or 'gaussian'")
        if n_probes < 1:
            raise ConfigError(f"n_probes must be >= 1, got {n_probes}")
        self.probe = probe
        self.n_probes = int(n_probes)

    def _series(self, gx: Tensor, x: Tensor, n: int, coeff: Callable[[int], float],
                create_graph: bool) -> Tensor:
        """``mean over probes of Σ_{k=1}^{n} (-1)^{k+1}/k · coeff(k) · vᵀ J^k v``."""
        total = gx.new_zeros(gx.shape[0])
        for _ in range(self.n_probes):
            v = probe(gx, self.probe)
            w = v
            for k in range(1, n + 1):
                (w,) = torch.autograd.grad(gx, x, w, retain_graph=True, create_graph=create_graph)
                total = total + (-1) ** (k + 1) / k * coeff(k) * _dot(w, v)
        return total / self.n_probes


class SeriesLogDet(_Hutchinson):
    """i-ResNet's estimator: the power series truncated after ``n_terms`` terms, traces by
    Hutchinson. Biased by the dropped tail (``|bias| ≤ D·Σ_{k>n} c^k/k`` for ``Lip(g) ≤ c``)."""

    name = "series"

    def __init__(self, n_terms: int = 5, probe: str = "rademacher", n_probes: int = 1):
        super().__init__(probe, n_probes)
        if n_terms < 1:
            raise ConfigError(f"n_terms must be >= 1, got {n_terms}")
        self.n_terms = int(n_terms)

    def _estimate(self, gx: Tensor, x: Tensor, need_graph: bool) -> Tensor:
        self.stats = {"logdet_vjps": float(self.n_terms * self.n_probes)}
        return self._series(gx, x, self.n_terms, lambda k: 1.0, create_graph=need_graph)


class RouletteLogDet(_Hutchinson):
    """Residual Flows' unbiased Russian-roulette estimator (see the module doc).

    Args:
        dist: ``"geometric"`` (``N ∈ {1, 2, …}``, ``P(N ≥ m) = (1-p)^{m-1}``) or ``"poisson"``
            (``N ∈ {0, 1, …}``, mean ``lam``): the number of terms after the exact ones.
        p, lam: parameters of ``dist``.
        n_exact_terms: terms always computed (unweighted) before the random ones.
        neumann_grad: gradient from the memory-saving Neumann-series estimator.
    """

    name = "roulette"

    def __init__(self, dist: str = "geometric", p: float = 0.5, lam: float = 2.0,
                 n_exact_terms: int = 2, probe: str = "rademacher", n_probes: int = 1,
                 neumann_grad: bool = True):
        super().__init__(probe, n_probes)
        if dist not in ("geometric", "poisson"):
            raise ConfigError(f"unknown roulette distribution {dist!r}; choose 'geometric' "
                              f"or 'poisson'")
        if dist == "geometric" and not 0 < p < 1:
            raise ConfigError(f"geometric p must be in (0, 1), got {p}")
        if dist == "poisson" and not lam > 0:
            raise ConfigError(f"poisson lam must be > 0, got {lam}")
        if n_exact_terms < 0:
            raise ConfigError(f"n_exact_terms must be >= 0, got {n_exact_terms}")
        self.dist, self.p, self.lam = dist, float(p), float(lam)
        self.n_exact_terms = int(n_exact_terms)
        self.neumann_grad = bool(neumann_grad)

    def tail(self, m: int) -> float:
        """``P(N ≥ m)``."""
        if self.dist == "geometric":
            return (1.0 - self.p) ** max(m - 1, 0)
        if m <= 0:
            return 1.0
        # P(Poisson(lam) >= m) = regularized lower incomplete gamma P(m, lam)
        return float(torch.special.gammainc(torch.tensor(float(m), dtype=torch.float64),
                                            torch.tensor(self.lam, dtype=torch.float64)))

    def coeff(self, k: int) -> float:
        """Weight of series term ``k`` (1-based): ``1 / P(N ≥ k - n_exact_terms)``."""
        return 1.0 / self.tail(k - self.n_exact_terms)

    def sample_n(self) -> int:
        """The number of terms after the exact ones, ``N``."""
        if self.dist == "geometric":
            return int(torch.empty((), dtype=torch.float64).geometric_(self.p).item())
        return int(torch.poisson(torch.tensor(self.lam, dtype=torch.float64)).item())

    def _estimate(self, gx: Tensor, x: Tensor, need_graph: bool) -> Tensor:
        n = self.n_exact_terms + self.sample_n()
        if n == 0:
            self.stats = {"logdet_vjps": 0.0}
            return gx.new_zeros(gx.shape[0]) + 0.0 * gx.reshape(gx.shape[0], -1).sum(1)
        if not (need_graph and self.neumann_grad):
            self.stats = {"logdet_vjps": float(n * self.n_probes)}
            return self._series(gx, x, n, self.coeff, create_graph=need_graph)
        # Neumann gradient: value = unbiased estimate, gradient = E[w^T (dJ) v] with
        # w = Σ_{k=1}^{n} (-1)^{k+1} coeff(k) vᵀ J^{k-1}, built without a graph.
        value = gx.new_zeros(gx.shape[0])
        surrogate = gx.new_zeros(gx.shape[0])
        for _ in range(self.n_probes):
            v = probe(gx, self.probe)
            a = v
            w = torch.zeros_like(v)
            for k in range(1, n + 1):
                w = w + (-1) ** (k + 1) * self.coeff(k) * a
                (a,) = torch.autograd.grad(gx, x, a, retain_graph=True)
                value = value + (-1) ** (k + 1) / k * self.coeff(k) * _dot(a, v)
            (wj,) = torch.autograd.grad(gx, x, w, create_graph=True)
            surrogate = surrogate + _dot(wj, v)
        self.stats = {"logdet_vjps": float((n + 1) * self.n_probes)}
        value, surrogate = value / self.n_probes, surrogate / self.n_probes
        return value.detach() + (surrogate - surrogate.detach())


def make_estimator(name: str, **kwargs) -> LogDetEstimator:
    """An estimator by name: ``exact``, ``series`` or ``roulette``; ``kwargs`` go to it (those
    it does not take are ignored, so one flat config can carry every estimator's options)."""
    classes = {"exact": ExactLogDet, "series": SeriesLogDet, "roulette": RouletteLogDet}
    if name not in classes:
        raise ConfigError(f"unknown log-det estimator {name!r}; choose one of {sorted(classes)}")
    cls = classes[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})
