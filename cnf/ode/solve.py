"""Solving the augmented CNF ODE with torchdiffeq, with NFE counting and loud failures.

The state is ``[z, a, (R_KE), (R_JF)]`` with (Chen et al., 2018; Grathwohl et al., 2019;
Finlay et al., 2020)::

    dz/dt    = f(t, z)
    da/dt    = -tr(∂f/∂z)          a = Δlog p, starts at 0
    dR_KE/dt = ‖f‖²                 kinetic energy (optional)
    dR_JF/dt = ‖∂f/∂z‖²_F          Jacobian Frobenius norm (optional)

Time is rescaled, ``t = s·T`` with ``s ∈ [0, 1]``, so the end time ``T`` is an ordinary
parameter of the dynamics (``dz/ds = T f(sT, z)``): its gradient is exact under both the
adjoint and direct backpropagation. (FFJORD's ``train_T`` puts T into ``torch.tensor``,
which detaches it; it never learns.)

Every solve has an NFE budget and a minimum step. Exceeding either, or a non-finite state,
raises :class:`cnf.errors.SolverError` naming the step, the time reached and the NFE so
far; torchdiffeq's own checks are ``assert`` statements (gone under ``python -O``), so they
are not relied on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torchdiffeq
from torch import Tensor, nn

from cnf.errors import ConfigError, ShapeError, SolverError
from cnf.ode.divergence import (
    divergence_exact,
    divergence_from_jvp,
    divergence_hutchinson,
    sample_probes,
)

__all__ = ["SolverConfig", "NFECounter", "odeint_cnf", "ADAPTIVE_SOLVERS", "FIXED_SOLVERS",
           "as_solver_config", "LEGACY_SOLVER_KEYS", "legacy_solver_error", "legacy_solver_hint"]

ADAPTIVE_SOLVERS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_SOLVERS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams",
                 "fixed_adams")


@dataclass(frozen=True)
class SolverConfig:
    """How to solve one ODE.

    Args:
        method: a torchdiffeq solver: adaptive (``dopri5``, ``dopri8``, ``bosh3``,
            ``fehlberg2``, ``adaptive_heun``) or fixed-step (``rk4``, ``euler``, ``midpoint``...).
        rtol, atol: tolerances of adaptive solvers.
        step_size: step of fixed-step solvers, in units of t (the grid has
            ``ceil(T / step_size)`` equal steps).
        adjoint: backpropagate with the adjoint ODE (``odeint_adjoint``, O(1) memory, a
            second solve) instead of through the solver's operations (``odeint``).
        adjoint_seminorm: step control of the adjoint solve ignores the parameter adjoints
            (Kidger et al., 2021; fewer backward NFE).
        max_nfe: function evaluations allowed per solve (forward and adjoint separately).
        min_step: smallest step (in units of t) an adaptive solver may take.
    """

    method: str = "dopri5"
    rtol: float = 1e-5
    atol: float = 1e-5
    step_size: float | None = None
    adjoint: bool = True
    adjoint_seminorm: bool = False
    max_nfe: int = 5000
    min_step: float = 1e-9

    def __post_init__(self) -> None:
        if self.method not in ADAPTIVE_SOLVERS + FIXED_SOLVERS:
            raise ConfigError(
                f"unknown ODE solver {self.method!r}; choose one of "
                f"{list(ADAPTIVE_SOLVERS + FIXED_SOLVERS)}"
            )
        if self.fixed and (self.step_size is None or self.step_size <= 0):
            raise ConfigError(
                f"the fixed-step solver {self.method!r} needs a positive step_size "
                f"(e.g. step_size: 0.125), or pick an adaptive solver such as dopri5"
            )
        if not self.fixed and not (self.rtol > 0 and self.atol > 0):
            raise ConfigError(f"rtol and atol must be positive, got {self.rtol}, {self.atol}")
        if self.max_nfe < 1 or self.min_step < 0:
            raise ConfigError(f"max_nfe must be >= 1 and min_step >= 0, got {self.max_nfe}, {self.min_step}")

    @property
    def fixed(self) -> bool:
        return self.method in FIXED_SOLVERS

    def yaml(self) -> str:
        """The settings that differ from the defaults, in the YAML flow form configs use."""
        default = SolverConfig()
        items = [f"method: {self.method}"] + [
            f"{f.name}: {getattr(self, f.name)}" for f in fields(self)
            if f.name != "method" and getattr(self, f.name) != getattr(default, f.name)]
        return "{" + ", ".join(items) + "}"


def as_solver_config(value: SolverConfig | dict | None, default: SolverConfig) -> SolverConfig:
    """``value`` as a :class:`SolverConfig`: a config is kept, a dict fills the defaults'
    remaining fields (``{"method": "rk4", "step_size": 0.1}``), ``None`` gives ``default``."""
    if value is None:
        return default
    if isinstance(value, SolverConfig):
        return value
    if isinstance(value, dict):
        unknown = sorted(set(value) - {f.name for f in fields(SolverConfig)})
        if unknown:
            raise ConfigError(f"unknown solver setting(s) {unknown}; a solver takes "
                              f"{[f.name for f in fields(SolverConfig)]}")
        return SolverConfig(**value)
    raise ConfigError(
        f"a solver is an object such as {{method: dopri5, rtol: 1.0e-5, atol: 1.0e-5}} or "
        f"{{method: rk4, step_size: 0.125, adjoint: false}}, got {value!r}")


#: the flat keywords CNF constructors took before ``solver: SolverConfig``, with the field
#: each one became (``eval_*`` went to ``eval_solver``)
LEGACY_SOLVER_KEYS: dict[str, str] = {
    "rtol": "rtol", "atol": "atol", "step_size": "step_size", "adjoint": "adjoint",
    "adjoint_seminorm": "adjoint_seminorm", "max_nfe": "max_nfe", "min_step": "min_step",
    "eval_rtol": "rtol", "eval_atol": "atol", "eval_step_size": "step_size",
}


def legacy_solver_error(owner: str, legacy: dict, solver: object = None,
                        eval_solver: object = None) -> ConfigError:
    """The error for flat solver keywords given to ``owner``; the message shows the
    ``solver:`` / ``eval_solver:`` objects that replace them, with the values given."""
    unknown = sorted(set(legacy) - set(LEGACY_SOLVER_KEYS))
    if unknown:
        return ConfigError(f"{owner} got unexpected keyword argument(s) {unknown}")
    train = {} if not isinstance(solver, (dict, str)) else (
        {"method": solver} if isinstance(solver, str) else dict(solver))
    ev = {} if not isinstance(eval_solver, (dict, str)) else (
        {"method": eval_solver} if isinstance(eval_solver, str) else dict(eval_solver))
    for key, value in legacy.items():
        (ev if key.startswith("eval_") else train)[LEGACY_SOLVER_KEYS[key]] = value

    def form(d: dict) -> str:
        return "{" + ", ".join(f"{k}: {v}" for k, v in d.items()) + "}"

    lines = [f"solver: {form(train or {'method': 'dopri5'})}"]
    if ev:
        lines.append(f"eval_solver: {form(ev)}")
    return ConfigError(
        f"{owner} no longer takes the flat solver keywords {sorted(legacy)}: the solve is one "
        f"object. Write\n    " + "\n    ".join(lines) + "\n(fields: "
        f"{', '.join(f.name for f in fields(SolverConfig))}; eval_solver defaults to the "
        f"training solver, or dopri5 at its rtol/atol when that one is fixed-step)")


def legacy_solver_hint(message: str) -> str | None:
    """For a configuration error that shows the old flat solver keys (``solver: rk4``,
    ``rtol``, ``step_size``, ``eval_solver: dopri5``...), the text that shows the new form;
    ``None`` when the message does not look like one."""
    import re

    string_solver = re.search(r"'(eval_)?solver': '", message)
    flat = any(f"'{k}': " in message for k in LEGACY_SOLVER_KEYS if k.startswith("eval_"))
    flat = flat or (any(f"'{k}': " in message for k in LEGACY_SOLVER_KEYS)
                    and "'solver': {" not in message)
    if not (string_solver or flat):
        return None
    return ("CNF, FFJORD and FFJORDMultiscale take the solve as one object: replace the flat "
            "keys (solver: NAME, rtol, atol, step_size, adjoint, adjoint_seminorm, max_nfe, "
            "min_step, eval_solver: NAME, eval_rtol, eval_atol, eval_step_size) by\n"
            "    solver: {method: rk4, step_size: 0.125, adjoint: false}\n"
            "    eval_solver: {method: dopri5, rtol: 1.0e-5, atol: 1.0e-5}")


class NFECounter:
    """Function evaluations of one call: ``forward`` during the solve; ``backward`` during
    backpropagation (adjoint-solve evaluations, or vector-Jacobian products through the
    recorded evaluations under direct backprop). ``steps`` counts solver step attempts."""

    __slots__ = ("forward", "backward", "steps", "steps_backward", "in_backward")

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0
        self.steps = 0
        self.steps_backward = 0
        self.in_backward = False

    def __repr__(self) -> str:
        return f"NFECounter(forward={self.forward}, backward={self.backward}, steps={self.steps})"


class _CountVJP(torch.autograd.Function):
    """Identity whose backward counts one dynamics VJP (direct backprop)."""

    @staticmethod
    def forward(ctx, counter, *tensors):  # type: ignore[override]
        ctx.counter = counter
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads):  # type: ignore[override]
        ctx.counter.backward += 1
        return (None, *grads)


class _Dynamics(nn.Module):
    """The augmented right-hand side in rescaled time s; one instance per solve, so the
    Hutchinson probe and the counters of a solve cannot leak into another one."""

    def __init__(self, net: nn.Module, end_time: nn.Module, *, exact: bool, probes: Tensor | None,
                 kinetic: bool, frobenius: bool, counter: NFECounter, config: SolverConfig,
                 time_scale: float, direct_grad: bool, use_jvp: bool = False,
                 has_context: bool = False):
        super().__init__()
        self.has_context = has_context
        self.use_jvp = use_jvp
        self._basis: Tensor | None = None
        self.net = net
        self.end_time = end_time
        self.exact = exact
        self.probes = probes
        self.kinetic = kinetic
        self.frobenius = frobenius
        self.counter = counter
        self.config = config
        self.time_scale = time_scale  # |T| as a float, for messages and step limits
        self.direct_grad = direct_grad
        self.last_s = 0.0

    # -- failure checks --------------------------------------------------------------
    def _where(self, s: Tensor | float | None = None) -> str:
        s = self.last_s if s is None else s
        s = float(s.detach()) if isinstance(s, Tensor) else float(s)
        c = self.counter
        phase = "adjoint (backward) solve" if c.in_backward else "solve"
        step = c.steps_backward if c.in_backward else c.steps
        nfe = c.backward if c.in_backward else c.forward
        return (f"{phase} at step {step}, t = {float(s) * self.time_scale:.6g} of "
                f"T = {self.time_scale:.6g}, after {nfe} function evaluations")

    def _check_step(self, s: Tensor, y: tuple[Tensor, ...], dt: Tensor) -> None:
        c = self.counter
        if c.in_backward:
            c.steps_backward += 1
        else:
            c.steps += 1
        # every state tensor finite and (adaptive) the step above min_step, as one boolean
        # tensor read once: one host sync per step on an accelerator instead of one per
        # state tensor plus one for dt; the messages below are only built on failure
        checks = [torch.isfinite(y_).all() for y_ in y]
        if not self.config.fixed:
            checks.append(dt * self.time_scale >= self.config.min_step)
        if bool(torch.stack(checks).all()):
            return
        for y_ in y:
            if not torch.isfinite(y_).all():
                raise SolverError(
                    f"non-finite ODE state in the {self._where(s)}: the dynamics blew up. "
                    f"Lower the learning rate, add weight decay, use a smoother activation "
                    f"(tanh, softplus) or add the kinetic/Jacobian regularizers"
                )
        if not self.config.fixed:
            dt_t = float(dt) * self.time_scale
            if not dt_t >= self.config.min_step:
                raise SolverError(
                    f"step size {dt_t:.3g} fell below min_step = {self.config.min_step:g} in the "
                    f"{self._where(s)}: the dynamics are too stiff for rtol = {self.config.rtol:g}, "
                    f"atol = {self.config.atol:g}. Loosen the tolerances, train with a fixed-step "
                    f"solver (method: rk4, step_size), add weight decay or the RNODE regularizers"
                )

    def callback_step(self, s, y, dt):
        self._check_step(s, y, dt)

    def callback_step_adjoint(self, s, y, dt):
        self._check_step(s, y, dt)

    # -- right-hand side -------------------------------------------------------------
    def _count(self, s: Tensor) -> None:
        c = self.counter
        if c.in_backward:
            c.backward += 1
            n = c.backward
        else:
            c.forward += 1
            n = c.forward
        if n > self.config.max_nfe:
            raise SolverError(
                f"NFE budget max_nfe = {self.config.max_nfe} exceeded in the {self._where(s)}. "
                f"The dynamics became stiff: raise max_nfe, loosen rtol/atol, train with a "
                f"fixed-step solver, or add weight decay / the RNODE regularizers"
            )
        self.last_s = s  # a tensor: converted only for an error message (no host sync per NFE)

    def tangents(self, z: Tensor) -> Tensor:
        """The forward-mode tangents: the basis ``[D, 1, D]`` (exact) or the probes."""
        if not self.exact:
            return self.probes
        if self._basis is None or self._basis.dtype != z.dtype:
            d = z.shape[1]
            self._basis = torch.eye(d, dtype=z.dtype, device=z.device).unsqueeze(1)
        return self._basis

    def adjoint_eval(self, s: Tensor, z: Tensor, adj_z: Tensor, adj_a: Tensor
                     ) -> tuple[Tensor, Tensor, Tensor, Tensor, list[Tensor]]:
        """One evaluation of the adjoint solve, without autograd (``net.jvp_vjp``):
        ``(T f, -T div)`` and the vector-Jacobian products of ``-(adj_z, adj_a)`` with
        them w.r.t. the time ``s``, ``z`` and the net's parameters, as torchdiffeq's
        ``odeint_adjoint`` computes them (it differentiates w.r.t. time too, and that
        component enters its step control)."""
        self._count(s)
        T = self.end_time()
        t = s.to(z.dtype) * T
        v = self.tangents(z)
        # ⟨-adj_z, T f⟩ + ⟨-adj_a, -T div⟩ with div = Σ_k ⟨v_k, J v_k⟩ (/K for probes)
        w = (T / v.shape[0]) if not self.exact else T
        gjv = v * (w * adj_a).view(1, -1, 1)
        f, jv, gt, gz, grads = self.net.jvp_vjp(t, z, v, -T * adj_z, gjv)
        div, _ = divergence_from_jvp(jv, None if self.exact else self.probes, False)
        return T * f, (-T * div).unsqueeze(1), (gt * T).to(z.dtype), gz, grads

    def forward(self, s: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self._count(s)
        z = state[0]
        ctx = (state[-1],) if self.has_context else ()
        need_graph = torch.is_grad_enabled()
        want_frob = self.frobenius
        if self.use_jvp:
            # forward mode: f and J·v in one pass, no autograd needed to get the trace
            T = self.end_time()
            t = s.to(z.dtype) * T
            if self.exact:
                f, jv = self.net.forward_jvp(t, z, self.tangents(z), *ctx)
                div, frob = divergence_from_jvp(jv, None, want_frob)
            else:
                f, jv = self.net.forward_jvp(t, z, self.probes, *ctx)
                div, frob = divergence_from_jvp(jv, self.probes, want_frob)
            return self._pack(T, f, div, frob, need_graph, ctx)
        with torch.enable_grad():
            if not (need_graph and z.requires_grad):
                # (a view made under no_grad can claim requires_grad without a graph)
                z = z.detach().requires_grad_(True)
            T = self.end_time()
            t = s.to(z.dtype) * T
            f = self.net(t, z, *ctx)
            if self.exact:
                div, frob = divergence_exact(f, z, need_graph, want_frob)
            else:
                div, frob = divergence_hutchinson(f, z, self.probes, need_graph, want_frob)
        return self._pack(T, f, div, frob, need_graph, ctx)

    def _pack(self, T: Tensor, f: Tensor, div: Tensor, frob: Tensor | None,
              need_graph: bool, ctx: tuple[Tensor, ...] = ()) -> tuple[Tensor, ...]:
        out = [T * f, (-T * div).unsqueeze(1)]
        if self.kinetic:
            out.append((T * f.pow(2).sum(1)).unsqueeze(1))
        if frob is not None:
            out.append((T * frob).unsqueeze(1))
        if ctx:
            out.append(torch.zeros_like(ctx[0]))  # the context is carried, constant
        if not need_graph:
            return tuple(o.detach() for o in out)
        if self.direct_grad:
            return _CountVJP.apply(self.counter, *out)
        return tuple(out)


class _AdjointRHS:
    """The adjoint ODE of torchdiffeq's ``odeint_adjoint`` for a ``(z, Δlog p)`` state, on
    one flat tensor ``[vjp_t (1), z, a, adj_z, adj_a, adj_params]`` laid out as torchdiffeq
    lays out its tuple, evaluated by :meth:`_Dynamics.adjoint_eval` (no autograd). Its
    ``norm`` is torchdiffeq's default adjoint norm on that layout: the max of ``|vjp_t|``,
    the RMS of each of ``z, a, adj_z, adj_a`` and of each parameter's adjoint (without the
    parameters under ``seminorm``), so the steps, and hence the NFE, are torchdiffeq's."""

    def __init__(self, dyn: _Dynamics, shape: tuple[int, int], param_sizes: list[int],
                 seminorm: bool):
        self.dyn = dyn
        self.B, self.D = shape
        self.param_sizes = param_sizes
        self.seminorm = seminorm
        bd, n = self.B * self.D, self.B * self.D + self.B
        self.cuts = [1, bd, self.B, bd, self.B]  # vjp_t, z, a, adj_z, adj_a
        self.bd, self.n = bd, n
        self.zero_a = None

    def __call__(self, s: Tensor, y: Tensor) -> Tensor:
        B, D, bd, n = self.B, self.D, self.bd, self.n
        z = y[1:1 + bd].view(B, D)
        adj_z = y[1 + n:1 + n + bd].view(B, D)
        adj_a = y[1 + n + bd:1 + 2 * n].view(B, 1)
        fz, fa, gs, gz, grads = self.dyn.adjoint_eval(s, z, adj_z, adj_a)
        if self.zero_a is None:
            self.zero_a = y.new_zeros(B)  # d adj_a: the field ignores a
        return torch.cat([gs.reshape(1), fz.reshape(-1), fa.reshape(-1), gz.reshape(-1),
                          self.zero_a, *(g.reshape(-1) for g in grads)])

    def norm(self, y: Tensor) -> Tensor:
        parts = torch.split(y, self.cuts + self.param_sizes)
        if self.seminorm:
            parts = parts[:len(self.cuts)]
        return max([parts[0].abs().reshape(())] + [x.abs().pow(2).mean().sqrt() for x in parts[1:]])

    def callback_step(self, s: Tensor, y: Tensor, dt: Tensor) -> None:
        self.dyn._check_step(s, (y,), dt)


class _FusedAdjoint(torch.autograd.Function):
    """``odeint_adjoint`` for a ``(z, Δlog p)`` state whose field has ``jvp_vjp``: the same
    forward solve (torchdiffeq's ``odeint`` without a graph) and the same adjoint ODE,
    solved by torchdiffeq's ``odeint`` on one flat state with the same layout, tolerances
    and norm, but each adjoint evaluation is one hand-written forward-and-backward pass of
    the net (:meth:`cnf.ode.ODENet.jvp_vjp`) instead of a recorded graph and
    ``torch.autograd.grad`` over the parameters. Returns ``(z(T), Δlog p(T))``."""

    @staticmethod
    def forward(ctx, dyn, s, kwargs, seminorm, z0, *params):  # type: ignore[override]
        zs, as_ = torchdiffeq.odeint(dyn, (z0, z0.new_zeros(z0.shape[0], 1)), s, **kwargs)
        ctx.dyn, ctx.s, ctx.kwargs, ctx.seminorm, ctx.params = dyn, s, kwargs, seminorm, params
        ctx.save_for_backward(zs, as_)
        return zs[-1], as_[-1]

    @staticmethod
    def backward(ctx, gz1, ga1):  # type: ignore[override]
        zs, as_ = ctx.saved_tensors
        params, s = ctx.params, ctx.s
        B, D = zs.shape[1:]
        n = B * D + B
        gz1 = torch.zeros_like(zs[-1]) if gz1 is None else gz1
        ga1 = torch.zeros_like(as_[-1]) if ga1 is None else ga1
        sizes = [p.numel() for p in params]
        rhs = _AdjointRHS(ctx.dyn, (B, D), sizes, ctx.seminorm)
        kw = dict(ctx.kwargs)
        kw["options"] = dict(kw.get("options") or {}, norm=rhs.norm)
        # as torchdiffeq: one backward solve per interval of the time grid (fixed-step
        # solvers have one per step), each restarted from the forward solve's state there
        vjp_t, adj, adj_params = zs.new_zeros(1), torch.cat([gz1.reshape(-1), ga1.reshape(-1)]), None
        for i in range(len(s) - 1, 0, -1):
            y0 = torch.cat([vjp_t, zs[i].reshape(-1), as_[i].reshape(-1), adj,
                            zs.new_zeros(sum(sizes)) if adj_params is None else adj_params])
            with torch.no_grad():
                y = torchdiffeq.odeint(rhs, y0, s[i - 1:i + 1].flip(0), **kw)[-1]
            vjp_t, adj, adj_params = y[:1], y[1 + n:1 + 2 * n], y[1 + 2 * n:]
        y = torch.cat([vjp_t, zs[0].reshape(-1), as_[0].reshape(-1), adj, adj_params])
        gz0 = y[1 + n:1 + n + B * D].view(B, D)
        grads, off = [], 1 + 2 * n
        for p, k in zip(params, sizes):
            grads.append(y[off:off + k].view_as(p))
            off += k
        return (None, None, None, None, gz0, *grads)


def odeint_cnf(
    net: nn.Module,
    z: Tensor,
    end_time: nn.Module,
    config: SolverConfig,
    *,
    reverse: bool = False,
    exact: bool = True,
    probe: str = "gaussian",
    n_probes: int = 1,
    kinetic: bool = False,
    frobenius: bool = False,
    counter: NFECounter | None = None,
    divergence_impl: str = "auto",
    context: Tensor | None = None,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Integrate ``dz/dt = net(t, z)`` from ``t = 0`` to ``t = T`` (``reverse``: from T to
    0) together with the log-density change and the requested regularizers.

    Args:
        net: ``net(t, z) -> dz/dt`` for ``z`` of shape ``[B, D]``.
        z: start state ``[B, D]``.
        end_time: a module whose call returns ``T`` (a scalar tensor, possibly learnable).
        config: solver settings (see :class:`SolverConfig`).
        reverse: integrate from T back to 0.
        exact: exact trace (D autograd passes) or Hutchinson (one per probe).
        probe, n_probes: Hutchinson probe distribution and count; drawn once per solve.
        kinetic, frobenius: also integrate ``∫‖f‖² dt`` and ``∫‖∂f/∂z‖²_F dt``.
        counter: receives the NFE of this solve (and of its backward pass).
        divergence_impl: ``autograd`` (one backward pass per dimension or probe, as FFJORD),
            ``jvp`` (forward-mode products written out per layer, ``net.forward_jvp``; the
            same numbers, fewer operations) or ``auto`` (``jvp`` when the net has it).
        context: ``[B, C]`` conditioning passed to ``net(t, z, context)``; it rides along
            as a constant part of the ODE state, so gradients reach it under the adjoint too.

    Returns:
        ``(z_end [B, D], logabsdet [B], regs)``: ``logabsdet = log|det ∂z_end/∂z|``,
        ``regs`` maps ``"kinetic"`` / ``"jacobian"`` to per-sample integrals ``[B]``
        (always integrated forward in time, i.e. non-negative).

    Example::

        >>> net = ODENet(2)
        >>> T = lambda: torch.tensor(0.5)
        >>> z, logdet, _ = odeint_cnf(net, torch.randn(4, 2), T, SolverConfig(adjoint=False))
    """
    counter = counter if counter is not None else NFECounter()
    if z.dim() != 2:
        raise ConfigError(f"odeint_cnf works on [batch, dim] states, got shape {list(z.shape)}")
    T = end_time()
    time_scale = abs(float(T.detach()))
    if not math.isfinite(time_scale) or time_scale <= 0:
        raise SolverError(f"the integration time T = {time_scale} must be positive and finite")
    probes = None if exact else sample_probes(probe, n_probes, z)
    use_adjoint = config.adjoint and torch.is_grad_enabled()
    if divergence_impl not in ("auto", "autograd", "jvp"):
        raise ConfigError(f"divergence_impl must be auto, autograd or jvp, got {divergence_impl!r}")
    has_jvp = bool(getattr(net, "supports_jvp", False))
    if divergence_impl == "jvp" and not has_jvp:
        raise ConfigError("divergence_impl='jvp' needs a net with forward_jvp (cnf.ode.ODENet "
                          "with tanh/softplus/swish/elu/relu); use 'autograd'")
    use_jvp = divergence_impl == "jvp" or (divergence_impl == "auto" and has_jvp)
    dyn = _Dynamics(net, end_time, exact=exact, probes=probes, kinetic=kinetic,
                    frobenius=frobenius, counter=counter, config=config,
                    time_scale=time_scale, direct_grad=torch.is_grad_enabled() and not use_adjoint,
                    use_jvp=use_jvp, has_context=context is not None)
    zeros = z.new_zeros(z.shape[0], 1)
    state = [z, zeros]
    if kinetic:
        state.append(zeros)
    if frobenius:
        state.append(zeros)
    if context is not None:
        if context.dim() != 2 or context.shape[0] != z.shape[0]:
            raise ShapeError(f"context must be [batch={z.shape[0]}, C], got {list(context.shape)}")
        state.append(context.to(z.dtype))
    state = tuple(state)

    if config.fixed:
        n_steps = max(1, math.ceil(time_scale / config.step_size - 1e-9))
        s = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64, device=z.device)
    else:
        s = torch.tensor([0.0, 1.0], dtype=torch.float64, device=z.device)
    if reverse:
        s = s.flip(0)
    options = {}
    if not config.fixed and torch.is_grad_enabled() and not use_adjoint:
        # choose the first step outside the graph, so gradients do not flow through the
        # step-size heuristic (which would couple the samples of a batch)
        options["first_step"] = _first_step(dyn, s, state, config)

    kwargs = dict(rtol=config.rtol, atol=config.atol, method=config.method, options=options)
    net_params = [p for p in net.parameters()]
    fused_adjoint = (use_adjoint and use_jvp and not kinetic and not frobenius
                     and context is None and not reverse
                     and bool(getattr(net, "supports_vjp", False))
                     and all(p.requires_grad for p in net_params)
                     and not any(p.requires_grad for p in end_time.parameters()))
    try:
        if fused_adjoint:
            sol = _FusedAdjoint.apply(dyn, s, kwargs, config.adjoint_seminorm and not config.fixed,
                                      z, *net_params)
            sol = [x.unsqueeze(0) for x in sol]
        elif use_adjoint:
            params = tuple(p for p in list(net.parameters()) + list(end_time.parameters())
                           if p.requires_grad)
            adj_opts = dict(options)
            if config.adjoint_seminorm and not config.fixed:
                adj_opts["norm"] = "seminorm"
            sol = torchdiffeq.odeint_adjoint(dyn, state, s, adjoint_params=params,
                                             adjoint_options=adj_opts, **kwargs)
        else:
            sol = torchdiffeq.odeint(dyn, state, s, **kwargs)
    except AssertionError as e:  # torchdiffeq's internal checks
        raise SolverError(f"torchdiffeq failed in the {dyn._where()}: {e}") from e
    finally:
        counter.in_backward = True  # any later evaluation belongs to the backward pass
    out = [x[-1] for x in sol]
    z_end, a = out[0], out[1].squeeze(1)
    if not bool(torch.isfinite(z_end).all() & torch.isfinite(a).all()):
        raise SolverError(f"non-finite result after the {dyn._where(s[-1])}")
    regs: dict[str, Tensor] = {}
    sign = -1.0 if reverse else 1.0
    i = 2
    if kinetic:
        regs["kinetic"] = sign * out[i].squeeze(1)
        i += 1
    if frobenius:
        regs["jacobian"] = sign * out[i].squeeze(1)
    return z_end, -a, regs


@torch.no_grad()
def _first_step(dyn: _Dynamics, s: Tensor, state: tuple[Tensor, ...], config: SolverConfig) -> Tensor:
    """Hairer, Nørsett & Wanner's initial step (as torchdiffeq picks it), computed without
    autograd; costs two evaluations, counted as forward NFE."""
    order = {"dopri5": 5, "dopri8": 8, "bosh3": 3, "fehlberg2": 2, "adaptive_heun": 2}[config.method]
    s0 = s[0]
    direction = 1.0 if s[-1] > s[0] else -1.0

    def norm(ts):
        return max(x.pow(2).mean().sqrt() for x in ts)

    f0 = dyn(s0, state)
    scale = tuple(config.atol + x.abs() * config.rtol for x in state)
    d0 = norm([x / sc for x, sc in zip(state, scale)])
    d1 = norm([x / sc for x, sc in zip(f0, scale)])
    h0 = torch.tensor(1e-6, dtype=torch.float64) if (d0 < 1e-5 or d1 < 1e-5) else 0.01 * d0 / d1
    h0 = torch.as_tensor(h0, dtype=torch.float64).abs()
    y1 = tuple(x + direction * h0.to(x.dtype) * f for x, f in zip(state, f0))
    f1 = dyn(s0 + direction * h0, y1)
    d2 = norm([(a - b) / sc for a, b, sc in zip(f1, f0, scale)]) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = torch.maximum(torch.tensor(1e-6, dtype=torch.float64), h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / float(order))
    return torch.minimum(100 * h0, torch.as_tensor(h1, dtype=torch.float64)).to(torch.float64).reshape(())
