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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Literal

import torch
from torch import Tensor, nn

from cnf.errors import ConfigError, ShapeError
from cnf.flows.base import Chain, Flow
from cnf.ode import NFECounter, ODENet, SolverConfig, odeint_cnf
from cnf.ode.solve import as_solver_config, legacy_solver_error

__all__ = ["CNF", "FFJORD", "matching_cnf", "use_eval_solver"]


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
        solver: the training solve, a :class:`cnf.ode.SolverConfig` (method, rtol, atol,
            step_size, adjoint, adjoint_seminorm, max_nfe, min_step; a dict is accepted).
            YAML: ``solver: {method: rk4, step_size: 0.125, adjoint: false}``. Default:
            dopri5 at rtol = atol = 1e-5 with the adjoint (FFJORD's setting).
        eval_solver: the solve in eval mode (validation, test, sampling); default: the
            training solver, or ``dopri5`` at its rtol/atol when that one is fixed-step.
        kinetic_weight, jacobian_weight: RNODE regularizer weights (0: not integrated).
        context_dim: width of a conditioning vector; the field becomes ``f(t, z, c)``
            (``c`` concatenated to the ODE net's input) and ``forward``/``inverse`` take
            ``context [B, context_dim]``. The context rides along the solve as constant
            state, so gradients reach it (e.g. a VAE encoder's features) under the adjoint.
        net: a custom ``net(t, z)`` (``net(t, z, context)`` with ``context_dim``)
            replacing the ``ODENet`` built from the above.

    Time convention: data sits at ``t = 0`` and the base (latent) at ``t = T``; the field
    ``net(t, z)`` is evaluated at real time ``t ∈ [0, T]``. Flow matching
    (:mod:`cnf.ode.matching`) regresses the same ``net`` on this convention.

    Example::

        >>> import torch
        >>> from cnf.ode import SolverConfig
        >>> cnf = CNF(2, hidden=(32, 32), T=0.5, divergence="hutchinson",
        ...           solver=SolverConfig(method="rk4", step_size=0.125, adjoint=False))
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
        solver: SolverConfig | None = None,
        eval_solver: SolverConfig | None = None,
        kinetic_weight: float = 0.0,
        jacobian_weight: float = 0.0,
        context_dim: int = 0,
        net: nn.Module | None = None,
        **legacy: Any,
    ):
        super().__init__()
        if legacy or isinstance(solver, str) or isinstance(eval_solver, str):
            raise legacy_solver_error(type(self).__name__, legacy, solver, eval_solver)
        if divergence not in ("exact", "hutchinson"):
            raise ConfigError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
        if probe not in ("gaussian", "rademacher"):
            raise ConfigError(f"probe must be 'gaussian' or 'rademacher', got {probe!r}")
        if n_probes < 1:
            raise ConfigError(f"n_probes must be >= 1, got {n_probes}")
        if kinetic_weight < 0 or jacobian_weight < 0:
            raise ConfigError("regularizer weights must be >= 0")
        if context_dim < 0:
            raise ConfigError(f"context_dim must be >= 0, got {context_dim}")
        self.dim = dim
        self.context_dim = int(context_dim)
        self.net = net if net is not None else ODENet(dim, hidden, layer_type, act,
                                                      context_dim=self.context_dim)
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
        self.train_config = as_solver_config(solver, SolverConfig())
        train = self.train_config
        default_eval = (replace(train, method="dopri5", step_size=None) if train.fixed else train)
        self.eval_config = as_solver_config(eval_solver, default_eval)
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
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ShapeError(f"CNF(dim={self.dim}) expects [batch, {self.dim}], got {list(x.shape)}")
        if self.context_dim == 0 and context is not None:
            raise ConfigError("this CNF takes no context; build it with context_dim=C for a "
                              "conditional density")
        if self.context_dim and (context is None or context.shape != (x.shape[0], self.context_dim)):
            got = None if context is None else list(context.shape)
            raise ShapeError(f"CNF(context_dim={self.context_dim}) needs a context "
                             f"[{x.shape[0]}, {self.context_dim}], got {got}")
        config = self.train_config if self.training else self.eval_config
        regularize = self.training and torch.is_grad_enabled() and not reverse
        kinetic = regularize and self.kinetic_weight > 0
        frobenius = regularize and self.jacobian_weight > 0
        self._counter = NFECounter()
        self._last_training = self.training and torch.is_grad_enabled()
        z, logdet, regs = odeint_cnf(
            self.net, x, self.end_time, config, reverse=reverse, exact=self.exact,
            probe=self.probe, n_probes=self.n_probes, kinetic=kinetic, frobenius=frobenius,
            counter=self._counter, divergence_impl=self.divergence_impl, context=context,
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

    def velocity(self, s: Tensor, z: Tensor, context: Tensor | None = None) -> Tensor:
        """The field in unit time, ``T · f(sT, z, c)`` (``[B, D]``), for times ``s`` (a
        scalar or one per sample ``[B]``) with data at ``s = 0`` and the base at ``s = 1``:
        what flow matching (:mod:`cnf.ode.matching`) regresses. ``T`` enters detached:
        a learnable end time is a maximum-likelihood parameter."""
        T = self.end_time().detach()
        args = (context,) if context is not None else ()
        return T * self.net(s * T, z, *args)

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
        solver: SolverConfig | None = None,
        eval_solver: SolverConfig | None = None,
        kinetic_weight: float = 0.0,
        jacobian_weight: float = 0.0,
        context_dim: int = 0,
        **legacy: Any,
    ):
        if legacy or isinstance(solver, str) or isinstance(eval_solver, str):
            raise legacy_solver_error(type(self).__name__, legacy, solver, eval_solver)
        if num_blocks < 1:
            raise ConfigError(f"num_blocks must be >= 1, got {num_blocks}")
        block_args = dict(
            hidden=hidden, layer_type=layer_type, act=act, T=T, train_T=train_T,
            divergence=divergence, probe=probe, n_probes=n_probes,
            divergence_impl=divergence_impl, solver=solver, eval_solver=eval_solver,
            kinetic_weight=kinetic_weight, jacobian_weight=jacobian_weight,
            context_dim=context_dim,
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


def matching_cnf(flow: Flow) -> tuple[CNF, tuple[int, ...] | None]:
    """The single CNF block whose field flow matching trains, and the image shape it sees
    (``None`` for vector data, whose states are ``[B, D]`` already).

    Accepts a :class:`CNF`, an :class:`FFJORD` of one block without normalization layers,
    or a :class:`cnf.flows.continuous_image.ImageCNF`; anything else (several blocks, a
    multiscale model, a discrete flow) has no single path from data to the base and raises
    :class:`cnf.errors.ConfigError`.
    """
    if isinstance(flow, CNF):
        return flow, None
    if isinstance(flow, FFJORD) and len(flow.flows) == 1:
        return flow.blocks[0], None
    inner = getattr(flow, "cnf", None)
    shape = getattr(flow, "shape", None)
    if isinstance(inner, CNF) and shape is not None:
        return inner, tuple(shape)
    raise ConfigError(
        f"flow matching trains one CNF block from the data straight to the base, got "
        f"{type(flow).__name__}; use cnf.flows.continuous.CNF, FFJORD with num_blocks: 1 and "
        f"norm: none, or cnf.flows.continuous_image.ImageCNF")


@contextmanager
def use_eval_solver(module: nn.Module, config: SolverConfig) -> Iterator[None]:
    """Solve every CNF block inside ``module`` with ``config`` in eval mode for the duration
    (e.g. rk4 at 8 steps for an NFE curve); the blocks' own ``eval_config`` comes back after."""
    blocks = [m for m in module.modules() if isinstance(m, CNF)]
    saved = [b.eval_config for b in blocks]
    try:
        for b in blocks:
            b.eval_config = config
        yield
    finally:
        for b, c in zip(blocks, saved):
            b.eval_config = c
