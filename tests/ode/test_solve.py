"""The solver wrapper: NFE counting, failure modes, regularizer integrals."""


import pytest
import torch
from torch import nn

from cnf.errors import ConfigError, SolverError
from cnf.ode import NFECounter, ODENet, SolverConfig, odeint_cnf


class Const(nn.Module):
    """A fixed end time T."""

    def __init__(self, T):
        super().__init__()
        self.register_buffer("T", torch.tensor(float(T), dtype=torch.float64))

    def forward(self):
        return self.T


class Linear(nn.Module):
    """f(t, z) = A z: solution expm(tA) z0, trace tr(A), ‖J‖_F² = ‖A‖_F²."""

    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A)

    def forward(self, t, z):
        return z @ self.A.T


class Exploding(nn.Module):
    """f(t, z) = z²: z(t) = z0 / (1 - t z0) blows up at t = 1/z0."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, t, z):
        return self.scale * z.pow(2)


def test_linear_field_solution_logdet_and_regularizers():
    torch.manual_seed(0)
    A = torch.randn(3, 3, dtype=torch.float64) * 0.5
    z0 = torch.randn(5, 3, dtype=torch.float64)
    T = 0.8
    cfg = SolverConfig(rtol=1e-10, atol=1e-10, adjoint=False)
    z, logdet, regs = odeint_cnf(Linear(A), z0, Const(T), cfg, kinetic=True, frobenius=True)
    torch.testing.assert_close(z, z0 @ torch.linalg.matrix_exp(T * A).T, rtol=0, atol=1e-8)
    torch.testing.assert_close(logdet, torch.full((5,), T * A.trace().item(), dtype=torch.float64))
    torch.testing.assert_close(regs["jacobian"], torch.full((5,), T * A.pow(2).sum().item(), dtype=torch.float64))
    # kinetic energy ∫‖A expm(tA) z0‖² dt by Simpson's rule on 2001 points
    ts = torch.linspace(0, T, 2001, dtype=torch.float64)
    vals = torch.stack([(z0 @ (A @ torch.linalg.matrix_exp(t * A)).T).pow(2).sum(1) for t in ts])
    w = torch.ones(2001, dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4, 2
    ke = (w[:, None] * vals).sum(0) * (T / 2000) / 3
    torch.testing.assert_close(regs["kinetic"], ke, rtol=1e-8, atol=1e-10)
    # backwards in time: the inverse map, opposite log-det, same (non-negative) integrals
    x, logdet_inv, regs_inv = odeint_cnf(Linear(A), z, Const(T), cfg, reverse=True, kinetic=True)
    torch.testing.assert_close(x, z0, rtol=0, atol=1e-8)
    torch.testing.assert_close(logdet_inv, -logdet)
    torch.testing.assert_close(regs_inv["kinetic"], ke, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("adjoint", [True, False])
def test_fixed_step_nfe_is_counted_forward_and_backward(adjoint):
    net = ODENet(2, hidden=(8,))
    counter = NFECounter()
    cfg = SolverConfig(method="rk4", step_size=0.125, adjoint=adjoint)
    z, logdet, _ = odeint_cnf(net, torch.randn(6, 2), Const(0.5).float(), cfg, counter=counter)
    assert counter.forward == 16  # 4 steps x 4 stages
    assert counter.backward == 0
    (z.sum() + logdet.sum()).backward()
    # adjoint: rk4 backwards over the same 4 steps; direct: one VJP per recorded evaluation
    assert counter.backward == 16


def test_adaptive_nfe_counts_are_consistent():
    net = ODENet(2, hidden=(16, 16))
    counter = NFECounter()
    z, logdet, _ = odeint_cnf(net, torch.randn(6, 2), Const(0.5).float(), SolverConfig(), counter=counter)
    # dopri5: 6 evaluations per step attempt, plus 2 to choose the first step
    assert counter.forward == 6 * counter.steps + 2
    (z.sum() + logdet.sum()).backward()
    assert counter.backward == 6 * counter.steps_backward + 2


def test_exploding_field_raises_solver_error_quickly():
    z0 = torch.full((4, 1), 2.0, dtype=torch.float64)  # blows up at t = 0.5
    for cfg in (SolverConfig(rtol=1e-6, atol=1e-6), SolverConfig(method="rk4", step_size=0.01)):
        counter = NFECounter()
        with pytest.raises(SolverError) as info:
            odeint_cnf(Exploding(), z0, Const(2.0), cfg, counter=counter)
        msg = str(info.value)
        assert "step" in msg and "t = " in msg and "function evaluations" in msg, msg
        # "quickly" in function evaluations, not seconds (no timed assertions)
        assert counter.forward < cfg.max_nfe


def test_min_step_names_the_time_reached():
    z0 = torch.full((4, 1), 2.0, dtype=torch.float64)
    with pytest.raises(SolverError, match=r"min_step.*t = 0\.4\d+") as info:
        odeint_cnf(Exploding(), z0, Const(2.0), SolverConfig(rtol=1e-6, atol=1e-6, min_step=1e-4))
    assert "stiff" in str(info.value)


def test_nfe_budget_forward_and_adjoint():
    net = ODENet(2, hidden=(16,))
    with pytest.raises(SolverError, match="max_nfe = 10"):
        odeint_cnf(net, torch.randn(5, 2), Const(0.5).float(), SolverConfig(max_nfe=10, rtol=1e-8, atol=1e-8))
    # enough for the forward solve, too few for the adjoint solve (which also carries the
    # parameter adjoints in its error norm): the backward pass raises, it does not hang
    counter = NFECounter()
    z, logdet, _ = odeint_cnf(net, torch.randn(5, 2), Const(0.5).float(),
                              SolverConfig(rtol=1e-5, atol=1e-5, max_nfe=1000), counter=counter)
    tight = SolverConfig(rtol=1e-5, atol=1e-5, max_nfe=counter.forward)
    z, logdet, _ = odeint_cnf(net, torch.randn(5, 2), Const(0.5).float(), tight)
    with pytest.raises(SolverError, match="adjoint"):
        (1e6 * (z.pow(2).sum() + logdet.sum())).backward()


def test_non_finite_start_state_raises():
    z0 = torch.tensor([[float("nan"), 0.0]])
    with pytest.raises(SolverError, match="non-finite"):
        odeint_cnf(ODENet(2, hidden=(4,)), z0, Const(0.5).float(), SolverConfig())


def test_bad_configs():
    with pytest.raises(ConfigError, match="unknown ODE solver"):
        SolverConfig(method="tsit5")
    with pytest.raises(ConfigError, match="step_size"):
        SolverConfig(method="rk4")
    with pytest.raises(ConfigError, match="rtol"):
        SolverConfig(rtol=0.0)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_wrapper_matches_bare_torchdiffeq(method):
    """cnf's bookkeeping (NFE budget, fused per-step checks, tensor-valued time) changes
    nothing: same NFE, same end state and log-det as torchdiffeq on the bare augmented RHS."""
    import torchdiffeq

    torch.manual_seed(0)
    net = ODENet(2, hidden=(16, 16))
    z0 = torch.randn(7, 2)
    T = 0.5
    basis = torch.eye(2).unsqueeze(1)
    calls = {"n": 0}

    def rhs(s, state):
        calls["n"] += 1
        f, jv = net.forward_jvp(s.to(torch.float32) * T, state[0], basis)
        div = jv.diagonal(dim1=0, dim2=2).sum(-1)
        return T * f, (-T * div).unsqueeze(1)

    if method == "rk4":
        cfg = SolverConfig(method="rk4", step_size=0.125)
        s = torch.linspace(0.0, 1.0, 5, dtype=torch.float64)
    else:
        cfg = SolverConfig(rtol=1e-6, atol=1e-6)
        s = torch.tensor([0.0, 1.0], dtype=torch.float64)
    counter = NFECounter()
    with torch.no_grad():
        z, logdet, _ = odeint_cnf(net, z0, Const(T).float(), cfg, counter=counter)
        ref = torchdiffeq.odeint(rhs, (z0, torch.zeros(7, 1)), s, method=cfg.method,
                                 rtol=cfg.rtol, atol=cfg.atol)
    assert counter.forward == calls["n"]
    torch.testing.assert_close(z, ref[0][-1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logdet, -ref[1][-1].squeeze(1), rtol=1e-6, atol=1e-6)


class Huge(nn.Module):
    """f(t, z) = c, with c near float32's largest value: the state stays finite."""

    def forward(self, t, z):
        return torch.full_like(z, 1e37) + 0 * z


def test_huge_but_finite_state_is_not_flagged():
    # the per-step check must test elements, not a sum that overflows (100 x 1.5e37 > 3.4e38);
    # fixed-step only: torchdiffeq's own dopri5 error norm overflows at these values
    z0 = torch.full((10, 10), 1e37)
    cfg = SolverConfig(method="rk4", step_size=0.125, adjoint=False)
    z, logdet, _ = odeint_cnf(Huge(), z0, Const(0.5).float(), cfg)
    assert torch.isfinite(z).all() and (z > 1e37).all() and not torch.isfinite(z.sum())
    torch.testing.assert_close(logdet, torch.zeros(10))


def test_nan_mid_solve_is_named_at_its_step():
    class NanAfter(nn.Module):
        def forward(self, t, z):
            return 0 * z + torch.where(t > 0.3, torch.full_like(z, float("nan")), torch.ones_like(z))

    with pytest.raises(SolverError, match=r"non-finite ODE state in the solve at step 4, t = 0\.375"):
        odeint_cnf(NanAfter(), torch.zeros(2, 2), Const(1.0).float(),
                   SolverConfig(method="rk4", step_size=0.125))
    # dopri5 rejects the NaN steps and shrinks its step until min_step stops it
    with pytest.raises(SolverError, match="min_step"):
        odeint_cnf(NanAfter(), torch.zeros(2, 2), Const(1.0).float(), SolverConfig(rtol=1e-6, atol=1e-6))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("adjoint", [True, False])
def test_fused_field_pass_changes_no_result(adjoint, dtype):
    """The fused forward-mode node (one autograd node per evaluation) against the old
    layer-by-layer pass on the same field (dopri5 at FFJORD's 1e-5): in float64, same NFE
    forward and backward, end state, log-det and parameter gradients to rounding. In
    float32 the forward solve agrees (same NFE, values well inside the solver's 1e-5); its
    adjoint NFE are not compared: on this field they flip between 38 and 62 with either
    pass when the input moves by one part in 10⁷ (float32 step control at 1e-5 sits at the
    edge of float32 rounding)."""
    torch.manual_seed(0)
    net = ODENet(2).to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)  # a field with some structure, so the solve takes several steps
    x = torch.randn(50, 2, dtype=dtype)
    cfg = SolverConfig(adjoint=adjoint)
    results = []
    for fused in (True, False):
        net.fused_jvp = fused
        net.zero_grad()
        counter = NFECounter()
        z, logdet, _ = odeint_cnf(net, x, Const(0.5).to(dtype), cfg, counter=counter)
        (0.5 * z.pow(2).sum() - logdet.sum()).backward()
        results.append((counter.forward, counter.backward, z.detach(), logdet.detach(),
                        [p.grad.clone() for p in net.parameters()]))
    (nf1, nb1, z1, ld1, g1), (nf2, nb2, z2, ld2, g2) = results
    assert nf1 == nf2 and nf1 > 14
    tol = dict(rtol=1e-9, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(z1, z2, **tol)
    torch.testing.assert_close(ld1, ld2, **tol)
    if dtype == torch.float64:
        assert nb1 == nb2
        for a, b in zip(g1, g2):
            torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("exact,seminorm,method", [
    (True, False, "dopri5"), (False, False, "dopri5"), (True, True, "dopri5"),
    (True, False, "bosh3"), (True, False, "rk4")])
def test_fused_adjoint_is_torchdiffeqs_adjoint(exact, seminorm, method):
    """The fused adjoint (cnf's own backward solve on torchdiffeq's adjoint ODE, one
    hand-written forward+VJP pass per evaluation) against torchdiffeq's ``odeint_adjoint``
    over autograd, in float64: same forward and backward NFE (its norm, time channel
    included, reproduced), same gradients w.r.t. the input and every parameter; exact and
    Hutchinson traces, the seminorm, another adaptive and a fixed-step method."""
    torch.manual_seed(0)
    net = ODENet(2, hidden=(16, 16, 16)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(2.0)
    assert net.supports_vjp
    x0 = torch.randn(30, 2, dtype=torch.float64)
    cfg = SolverConfig(method=method, adjoint_seminorm=seminorm,
                       step_size=0.125 if method == "rk4" else None)
    results = []
    for fused in (True, False):
        net.fused_jvp = fused  # False: layer-wise pass, torchdiffeq's odeint_adjoint
        net.zero_grad()
        x = x0.clone().requires_grad_(True)
        counter = NFECounter()
        torch.manual_seed(1)  # the same Hutchinson probes
        z, logdet, _ = odeint_cnf(net, x, Const(0.5), cfg, exact=exact, counter=counter)
        (0.5 * z.pow(2).sum() - logdet.sum() + z[:, 0].sum()).backward()
        results.append((counter.forward, counter.backward, z.detach(), logdet.detach(),
                        x.grad, [p.grad.clone() for p in net.parameters()]))
    (nf1, nb1, z1, ld1, gx1, g1), (nf2, nb2, z2, ld2, gx2, g2) = results
    assert (nf1, nb1) == (nf2, nb2) and nb1 > 0
    tol = dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(z1, z2, **tol)
    torch.testing.assert_close(ld1, ld2, **tol)
    torch.testing.assert_close(gx1, gx2, **tol)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, **tol)


def test_fused_adjoint_falls_back_where_it_does_not_apply():
    """A learnable end time, a context, RNODE terms or frozen parameters take torchdiffeq's
    adjoint (the fused one covers the plain FFJORD setting only); T still learns."""
    from cnf.flows.continuous import CNF

    torch.manual_seed(0)
    flow = CNF(2, hidden=(8, 8), train_T=True)
    z, logdet = flow(torch.randn(10, 2))
    (z.pow(2).sum() - logdet.sum()).backward()
    assert flow.end_time.sqrt_T.grad is not None and flow.end_time.sqrt_T.grad != 0
    net = ODENet(2, hidden=(8,))
    net.layers[0].linear.weight.requires_grad_(False)
    x = torch.randn(10, 2, requires_grad=True)
    z, logdet, _ = odeint_cnf(net, x, Const(0.5).float(), SolverConfig())
    (z.pow(2).sum() - logdet.sum()).backward()
    assert net.layers[0].linear.weight.grad is None and net.layers[0].linear.bias.grad is not None
    assert x.grad is not None
