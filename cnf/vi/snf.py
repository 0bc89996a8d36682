"""Stochastic normalizing flows (Wu, Köhler & Noé, 2020): deterministic flow layers
interleaved with stochastic Langevin layers that move samples towards the target.

A sample path ``z_0 → z_1 → … → z_T`` starts at ``z_0 ~ q_0`` (the base) and alternates
deterministic bijections (log-det ``log|det J_t|``) and Langevin steps of size ``ε`` on an
intermediate energy ``U_λ(z) = (1 − λ) ½‖z‖² + λ U(z)`` (``λ`` rises linearly to 1 over the
Langevin layers, or is 1 throughout with ``anneal=False``)::

    unadjusted (ULA):  z' = z − ε ∇U_λ(z) + sqrt(2ε) η,       η ~ N(0, I)
    MALA:              the ULA proposal, accepted with prob. min(1, e^{−U_λ(z') + U_λ(z)} q(z|z') / q(z'|z))

Each stochastic step contributes ``ΔS_t = log q_b(z_t | z_{t+1}) − log q_f(z_{t+1} | z_t)``:
for ULA the ratio of the two Gaussian transition densities, for MALA (detailed balance with
``e^{−U_λ}``) ``U_λ(z_{t+1}) − U_λ(z_t)``. The **path log-weight**::

    log w = −U(z_T) − log q_0(z_0) + Σ_det log|det J_t| + Σ_stoch ΔS_t

has ``E[w] = Z`` exactly (an unbiased importance weight for the marginal of ``z_T``), and
``E[−log w] = KL(P_f ‖ P_b) − log Z`` is the reverse path KL that training minimizes (the
"energy-based" training of the paper; path gradients flow through the reparameterized noise).
:meth:`StochasticFlow.sample_and_log_q` returns ``z_T`` and the "effective log q"
``log q_0 − Σ log|det| − Σ ΔS``, so ``log w = −U − log q_eff`` fits cnf's VI estimators.

The **forward path KL** ``KL(P_b ‖ P_f) = E_{P_b}[log w] − log Z`` starts from target samples
``x ~ p`` and runs the path backwards: the Langevin layers last to first (the backward
kernel of a Langevin step is the same Langevin step, so each returns ``−ΔS``) and the
deterministic layers in their density direction. :meth:`StochasticFlow.backward_log_q`
returns ``z_0`` and the same ``log q_eff`` along that path; minimizing ``−E[log q_eff]`` is
maximum likelihood of the paths (the paper's "example-based" training).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from cnf.distributions import BaseDistribution
from cnf.errors import ConfigError
from cnf.flows.base import Chain, Flow

__all__ = ["LangevinLayer", "StochasticFlow"]


def _grad(energy: Callable[[Tensor], Tensor], z: Tensor, create_graph: bool
          ) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        zz = z if z.requires_grad else z.detach().requires_grad_(True)
        u = energy(zz)
        (g,) = torch.autograd.grad(u.sum(), zz, create_graph=create_graph)
    return (u, g) if create_graph else (u.detach(), g.detach())


class LangevinLayer(nn.Module):
    """``steps`` Langevin steps of size ``step_size`` on ``U_λ`` (module docstring).

    ``forward(z, energy) -> (z', ΔS)`` with ``ΔS = log q_b − log q_f`` summed over the steps.
    """

    def __init__(self, lam: float = 1.0, step_size: float = 0.05, steps: int = 1,
                 mala: bool = False, learn_step_size: bool = False):
        super().__init__()
        if step_size <= 0 or steps < 1 or not 0 <= lam <= 1:
            raise ConfigError(f"LangevinLayer needs step_size > 0, steps >= 1 and lam in [0, 1] "
                              f"(got {step_size}, {steps}, {lam})")
        if learn_step_size and mala:
            raise ConfigError("learn_step_size needs unadjusted Langevin steps (mala: false): the "
                              "MALA accept/reject decision has no gradient in the step size")
        self.lam, self.steps, self.mala = float(lam), steps, mala
        log_step = torch.tensor(math.log(step_size))
        if learn_step_size:
            self.log_step_size = nn.Parameter(log_step)
        else:
            self.register_buffer("log_step_size", log_step, persistent=False)
        self.last_acceptance: float | None = None

    @property
    def step_size(self) -> Tensor:
        """The step size ``ε`` (a learned parameter with ``learn_step_size``), a scalar tensor."""
        return self.log_step_size.exp()

    def _energy(self, energy: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
        lam = self.lam
        if lam == 1.0:
            return energy
        return lambda z: (1 - lam) * 0.5 * z.pow(2).sum(1) + lam * energy(z)

    def forward(self, z: Tensor, energy: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        u_fn = self._energy(energy)
        eps = self.step_size.to(z)
        graph = torch.is_grad_enabled()
        delta = z.new_zeros(z.shape[0])
        accepted = []
        u, g = _grad(u_fn, z, graph)
        for _ in range(self.steps):
            noise = torch.randn_like(z)
            prop = z - eps * g + torch.sqrt(2 * eps) * noise
            u_p, g_p = _grad(u_fn, prop, graph)
            # log q_f(prop | z) and log q_b(z | prop), up to the same constant
            log_f = -noise.pow(2).sum(1) / 2
            log_b = -(z - prop + eps * g_p).pow(2).sum(1) / (4 * eps)
            if not self.mala:
                z, u, g = prop, u_p, g_p
                delta = delta + log_b - log_f
                continue
            log_accept = (u - u_p + log_b - log_f).detach()
            keep = torch.log(torch.rand_like(log_accept)) < log_accept
            accepted.append(keep.float().mean())
            k = keep[:, None]
            delta = delta + torch.where(keep, u_p - u, torch.zeros_like(u))
            z, g = torch.where(k, prop, z), torch.where(k, g_p, g)
            u = torch.where(keep, u_p, u)
        if accepted:
            self.last_acceptance = float(torch.stack(accepted).mean())
        return z, delta


class StochasticFlow(nn.Module):
    """A base ``q_0``, a deterministic flow (a :class:`~cnf.flows.base.Chain`, e.g.
    ``RealNVP``) and Langevin layers inserted after every ``every`` of its layers in the
    generative direction (and after the last). Only the deterministic part has parameters.

    Args:
        flow: the deterministic layers; its ``inverse`` direction is the generative one.
        base: ``q_0``.
        every: Langevin layers go after every that many deterministic layers.
        langevin_steps, step_size, mala, learn_step_size: each Langevin layer (see
            :class:`LangevinLayer`); ``learn_step_size`` makes each layer's ``log ε`` a
            parameter (ULA only), so training can shrink a step that adds weight variance.
        anneal: intermediate energies from ``½‖z‖²`` to ``U`` (else ``U`` throughout).

    Example::

        >>> from cnf.flows.coupling import RealNVP
        >>> from cnf.distributions import StandardNormal
        >>> from cnf.vi.targets import EnergyTarget
        >>> snf = StochasticFlow(RealNVP(2, num_layers=4), StandardNormal(2), every=2)
        >>> z, log_q = snf.sample_and_log_q(16, EnergyTarget("u1").energy)
    """

    def __init__(self, flow: Flow, base: BaseDistribution, every: int = 2,
                 langevin_steps: int = 1, step_size: float = 0.05, mala: bool = False,
                 anneal: bool = True, learn_step_size: bool = False):
        super().__init__()
        layers: Sequence[Flow] = list(flow) if isinstance(flow, Chain) else [flow]
        if every < 1:
            raise ConfigError(f"every must be >= 1 (got {every})")
        self.flow, self.base = flow, base
        # generative order: the chain's inverse runs its layers last to first
        self._order = list(reversed(range(len(layers))))
        n_lang = math.ceil(len(layers) / every)
        lams = [(i + 1) / n_lang if anneal else 1.0 for i in range(n_lang)]
        self.langevin = nn.ModuleList(LangevinLayer(lam, step_size, langevin_steps, mala,
                                                    learn_step_size)
                                      for lam in lams)
        self.every = every

    def _layers(self) -> list[Flow]:
        return list(self.flow) if isinstance(self.flow, Chain) else [self.flow]

    @property
    def event_shape(self) -> torch.Size:
        return self.base.event_shape

    def sample_and_log_q(self, n: int, energy: Callable[[Tensor], Tensor]
                         ) -> tuple[Tensor, Tensor]:
        """``z_T`` ``[n, D]`` and ``log q_0(z_0) − Σ log|det| − Σ ΔS`` ``[n]``."""
        z = self.base.sample(n)
        log_q = self.base.log_prob(z)
        layers = self._layers()
        k = 0
        for i, idx in enumerate(self._order):
            z, ld = layers[idx].inverse(z)
            log_q = log_q - ld
            if (i + 1) % self.every == 0 or i == len(self._order) - 1:
                z, delta = self.langevin[k](z, energy)
                log_q = log_q - delta
                k += 1
        return z, log_q

    def backward_log_q(self, x: Tensor, energy: Callable[[Tensor], Tensor]
                       ) -> tuple[Tensor, Tensor]:
        """Run the path backwards from ``x = z_T`` (e.g. target samples): ``z_0`` ``[n, D]``
        and ``log q_0(z_0) − Σ log|det| − Σ ΔS`` ``[n]`` along the backward path, so that
        ``E_{x∼p}[−U(x) − log q_eff] − log Z`` is the forward path KL ``KL(P_b ‖ P_f) ≥ 0``."""
        z, log_q = x, x.new_zeros(x.shape[0])
        layers = self._layers()
        k = len(self.langevin)
        last = len(self._order) - 1
        for i in range(last, -1, -1):
            if (i + 1) % self.every == 0 or i == last:
                k -= 1
                z, delta = self.langevin[k](z, energy)  # delta = −ΔS_t of the forward path
                log_q = log_q + delta
            z, ld = layers[self._order[i]](z)  # density direction: ld = −(generative log-det)
            log_q = log_q + ld
        return z, log_q + self.base.log_prob(z)

    def acceptance(self) -> float | None:
        """Mean MALA acceptance rate of the last pass (``None`` for ULA)."""
        rates = [lay.last_acceptance for lay in self.langevin if lay.last_acceptance is not None]
        return sum(rates) / len(rates) if rates else None
