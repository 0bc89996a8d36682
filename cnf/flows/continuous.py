"""Continuous normalizing flows: ``CNF`` (one ODE block) and ``FFJORD`` (a stack of them).

A CNF transforms data by the flow of an ODE (Chen et al., 2018, "Neural ordinary
differential equations"; Grathwohl et al., 2019, "FFJORD")::

    dz/dt = f(t, z),  z(0) = x,  z = z(T),
    log|det ∂z/∂x| = ∫₀ᵀ tr(∂f/∂z(t, z(t))) dt

``forward`` integrates data → base from ``t = 0`` to ``T``; ``inverse`` integrates base →
data from ``T`` to 0. Both directions cost one ODE solve (neither is cheaper); the inverse is
numerical, accurate to the solver tolerance (the tests measure it at rtol = atol = 1e-10 in
float64: ``|inverse(forward(x)) - x| < 1e-8``).

The trace is exact (``divergence="exact"``: D autograd passes per evaluation) or
Hutchinson's unbiased estimate (``"hutchinson"``: one vector-Jacobian product per probe,
the probe drawn once per solve). In Hutchinson mode the flow is ``stochastic``; setting
``exact = True`` (e.g. with :func:`cnf.flows.base.exact_logdet`) switches to the exact trace.

RNODE regularizers (Finlay et al., 2020): ``kinetic_weight · ∫‖f‖² dt`` and
``jacobian_weight · ∫‖∂f/∂z‖²_F dt`` are integrated along the training solve and reported
by :meth:`CNF.extra_losses`. NFE counts are reported by :meth:`CNF.stats`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from cnf.errors import ConfigError
from cnf.flows.base import Chain, Flow
from cnf.ode import NFECounter, ODENet, SolverConfig, odeint_cnf
from cnf.ode.solve import FIXED_SOLVERS

__all__ = ["CNF", "FFJORD"]


class _EndTime(nn.Module):
    """The integration time T; learnable as ``T = sqrt_T²`` (FFJORD's parametrization)."""

    def __init__(self, T: float, learnable: bool):
        super().__init__()
        if not (T > 0 and math.isfinite(T)):
            raise ConfigError(f"the integration time T must be positive, got {T}")
        self.learnable = learnable
        if learnable:
            self.sqrt_T = nn.Parameter(torch.tensor(math.sqrt(T)))
        else:
            self.register_buffer("T", torch.tensor(float(T)))

    def forward(self) -> Tensor:
        return self.sqrt_T * self.sqrt_T if self.learnable else self.T


class CNF(Flow):
    """One continuous normalizing flow block (FFJORD's ``CNF``), see the module docstring.

    Args:
        dim: data dimension D.
        hidden, layer_type, act: the ODE network (:class:`cnf.ode.ODENet`); defaults are
            FFJORD's toy model, 3×64 concatsquash with tanh.
        T: integration time; ``train_T`` learns it (as ``sqrt_T²``).
        divergence: ``exact`` or ``hutchinson``; ``probe`` (``gaussian`` | ``rademacher``)
            and ``n_probes`` configure Hutchinson.
        divergence_impl: how the trace is computed: ``autograd`` (one backward pass per
            dimension or probe, as FFJORD), ``jvp`` (forward-mode Jacobian-vector products
            written out per layer of :class:`cnf.ode.ODENet`; same numbers, fewer
            operations) or ``auto`` (``jvp`` when the net supports it).
        solver, rtol, atol, step_size: the training solve (any torchdiffeq solver;
            fixed-step solvers such as ``rk4`` need ``step_size``).
        eval_solver, eval_rtol, eval_atol, eval_step_size: the solve in eval mode; by
            default the training settings, except that a fixed-step training solver is
            evaluated with ``dopri5`` at ``rtol``/``atol``.
        adjoint: backpropagate with the adjoint method (FFJORD always does) or directly
            through the solver (faster for small models, memory grows with NFE).
        adjoint_seminorm: adjoint step control ignores the parameter adjoints.
        kinetic_weight, jacobian_weight: RNODE regularizer weights (0: not integrated).
        max_nfe, min_step: per-solve NFE budget and smallest step before ``SolverError``.
        net: a custom ``net(t, z)`` replacing the ``ODENet`` built from the above.

    Example::

        >>> cnf = CNF(2, hidden=(32, 32), T=0.5, divergence="hutchinson")
        >>> z, logdet = cnf(torch.randn(10, 2))
        >>> cnf.stats()["nfe_forward"] > 0
        True
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64, 64),
        layer_type: str = "concatsquash",
        act: str = "tanh",
        T: float = 0.5,
        train_T: bool = False,
        divergence: Literal["exact", "hutchinson"] = "exact",
        probe: Literal["gaussian", "rademacher"] = "gaussian",
        n_probes: int = 1,
        divergence_impl: Literal["auto", "autograd", "jvp"] = "auto",
        solver: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        step_size: float | None = None,
        eval_solver: str | None = None,
        eval_rtol: float | None = None,
        eval_atol: float | None = None,
        eval_step_size: float | None = None,
        adjoint: bool = True,
        adjoint_seminorm: bool = False,
        kinetic_weight: float = 0.0,
        jacobian_weight: float = 0.0,
        max_nfe: int = 5000,
        min_step: float = 1e-9,
        net: nn.Module | None = None,
    ):
        super().__init__()
        if divergence not in ("exact", "hutchinson"):
            raise ConfigError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
        if probe not in ("gaussian", "rademacher"):
            raise ConfigError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
        if n_probes < 1:
            raise ConfigError(f"n_probes must be >= 1, got {n_probes}")
        if kinetic_weight < 0 or jacobian_weight < 0:
            raise ConfigError("regularizer weights must be >= 0")
        self.dim = dim
        self.net = net if net is not None else ODENet(dim, hidden, layer_type, act)
        self.end_time = _EndTime(T, train_T)
        self.divergence = divergence
        self.exact = divergence == "exact"
        self.probe = probe
        self.n_probes = n_probes
        self.divergence_impl = divergence_impl
        if divergence_impl == "jvp" and not getattr(self.net, "supports_jvp", False):
            raise ConfigError("divergence_impl='jvp' needs an ODENet with tanh, softplus, swish, "
                              "elu or relu; use 'autograd' or 'auto'")
        self.kinetic_weight = float(kinetic_weight)
        self.jacobian_weight = float(jacobian_weight)
        self.train_config = SolverConfig(
            method=solver, rtol=rtol, atol=atol, step_size=step_size, adjoint=adjoint,
            adjoint_seminorm=adjoint_seminorm, max_nfe=max_nfe, min_step=min_step,
        )
        if eval_solver is None:
            eval_solver = "dopri5" if solver in FIXED_SOLVERS else solver
        self.eval_config = SolverConfig(
            method=eval_solver,
            rtol=rtol if eval_rtol is None else eval_rtol,
            atol=atol if eval_atol is None else eval_atol,
            step_size=step_size if eval_step_size is None else eval_step_size,
            adjoint=adjoint, adjoint_seminorm=adjoint_seminorm, max_nfe=max_nfe,
            min_step=min_step,
        )
        self._counter = NFECounter()
        self._last_training = True
        self._regs: dict[str, Tensor] = {}

    # -- contract ------------------------------------------------------------------------
    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return not self.exact

    @property
    def T(self) -> Tensor:
        """The current integration time (a scalar tensor)."""
        return self.end_time()

    def _solve(self, x: Tensor, context: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor]:
        if context is not None:
            raise ConfigError("CNF takes no context; use an unconditional density")
        if x.dim() != 2 or x.shape[1] != self.dim:
            from cnf.errors import ShapeError

            raise ShapeError(f"CNF(dim={self.dim}) expects [batch, {self.dim}], got {list(x.shape)}")
        config = self.train_config if self.training else self.eval_config
        regularize = self.training and torch.is_grad_enabled() and not reverse
        kinetic = regularize and self.kinetic_weight > 0
        frobenius = regularize and self.jacobian_weight > 0
        self._counter = NFECounter()
        self._last_training = self.training and torch.is_grad_enabled()
        z, logdet, regs = odeint_cnf(
            self.net, x, self.end_time, config, reverse=reverse, exact=self.exact,
            probe=self.probe, n_probes=self.n_probes, kinetic=kinetic, frobenius=frobenius,
            counter=self._counter, divergence_impl=self.divergence_impl,
        )
        losses: dict[str, Tensor] = {}
        if kinetic:
            losses["kinetic_energy"] = self.kinetic_weight * regs["kinetic"].mean()
        if frobenius:
            losses["jacobian_frobenius"] = self.jacobian_weight * regs["jacobian"].mean()
        self._regs = losses
        return z, logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data → latent: integrate from 0 to T; returns ``log|det ∂z/∂x|``."""
        return self._solve(x, context, reverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent → data: integrate from T back to 0; returns ``log|det ∂x/∂z|``."""
        return self._solve(z, context, reverse=True)

    # -- hooks ---------------------------------------------------------------------------
    def extra_losses(self) -> dict[str, Tensor]:
        """The weighted RNODE terms of the last training ``forward`` (empty otherwise)."""
        return dict(self._regs)

    def stats(self) -> dict[str, float]:
        """NFE of the last call: ``nfe_forward`` / ``nfe_backward`` for a call with
        gradients (training; ``nfe_backward`` is complete once ``backward()`` ran), ``nfe``
        for an evaluation call."""
        c = self._counter
        if self._last_training:
            return {"nfe_forward": float(c.forward), "nfe_backward": float(c.backward)}
        return {"nfe": float(c.forward)}

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, divergence={self.divergence}, exact={self.exact}, "
                f"T={float(self.T):.4g}, learn_T={self.end_time.learnable}, "
                f"train={self.train_config.method}, eval={self.eval_config.method}")


class FFJORD(Chain):
    """A stack of ``num_blocks`` :class:`CNF` blocks, optionally with a normalization flow
    before the first block and after each block (FFJORD's ``--batch_norm``):
    ``norm="batchnorm"`` (moving batch norm, as FFJORD), ``"actnorm"`` or ``"none"``.
    All other arguments are those of :class:`CNF` and apply to every block.

    Example::

        >>> from cnf.distributions import Density, StandardNormal
        >>> density = Density(FFJORD(2, num_blocks=2, hidden=(32, 32)), StandardNormal(2))
        >>> density.log_prob(torch.randn(4, 2)).shape
        torch.Size([4])
    """

    def __init__(
        self,
        dim: int,
        num_blocks: int = 1,
        norm: Literal["none", "actnorm", "batchnorm"] = "none",
        bn_lag: float = 0.0,
        hidden: Sequence[int] = (64, 64, 64),
        layer_type: str = "concatsquash",
        act: str = "tanh",
        T: float = 0.5,
        train_T: bool = False,
        divergence: Literal["exact", "hutchinson"] = "exact",
        probe: Literal["gaussian", "rademacher"] = "gaussian",
        n_probes: int = 1,
        divergence_impl: Literal["auto", "autograd", "jvp"] = "auto",
        solver: str = "dopri5",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        step_size: float | None = None,
        eval_solver: str | None = None,
        eval_rtol: float | None = None,
        eval_atol: float | None = None,
        eval_step_size: float | None = None,
        adjoint: bool = True,
        adjoint_seminorm: bool = False,
        kinetic_weight: float = 0.0,
        jacobian_weight: float = 0.0,
        max_nfe: int = 5000,
        min_step: float = 1e-9,
    ):
        if num_blocks < 1:
            raise ConfigError(f"num_blocks must be >= 1, got {num_blocks}")
        block_args = dict(
            hidden=hidden, layer_type=layer_type, act=act, T=T, train_T=train_T,
            divergence=divergence, probe=probe, n_probes=n_probes,
            divergence_impl=divergence_impl, solver=solver, rtol=rtol,
            atol=atol, step_size=step_size, eval_solver=eval_solver, eval_rtol=eval_rtol,
            eval_atol=eval_atol, eval_step_size=eval_step_size, adjoint=adjoint,
            adjoint_seminorm=adjoint_seminorm, kinetic_weight=kinetic_weight,
            jacobian_weight=jacobian_weight, max_nfe=max_nfe, min_step=min_step,
        )

        def make_norm() -> list[Flow]:
            if norm == "none":
                return []
            if norm == "actnorm":
                from cnf.flows.normalization import ActNorm

                return [ActNorm(dim)]
            if norm == "batchnorm":
                from cnf.flows.normalization import MovingBatchNorm

                return [MovingBatchNorm(dim, bn_lag=bn_lag)]
            raise ConfigError(f"norm must be 'none', 'actnorm' or 'batchnorm', got {norm!r}")

        flows: list[Flow] = make_norm()
        for _ in range(num_blocks):
            flows.append(CNF(dim, **block_args))
            flows += make_norm()
        super().__init__(flows)
        self.dim = dim

    @property
    def blocks(self) -> list[CNF]:
        return [f for f in self.flows if isinstance(f, CNF)]
