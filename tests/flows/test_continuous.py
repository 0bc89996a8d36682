"""CNF and FFJORD beyond the contract harness (which checks them in float64 too)."""

import math

import pytest
import torch
from torch import nn

from cnf.distributions import Density, StandardNormal
from cnf.errors import ConfigError, ShapeError, SolverError
from cnf.flows.base import exact_logdet, gather
from cnf.flows.continuous import CNF, FFJORD
from cnf.ode import SolverConfig

TIGHT = dict(solver=SolverConfig(rtol=1e-9, atol=1e-9))
TIGHT_DIRECT = dict(solver=SolverConfig(rtol=1e-9, atol=1e-9, adjoint=False))


class Linear(nn.Module):
    def __init__(self, A):
        super().__init__()
        self.A = nn.Parameter(A)

    def forward(self, t, z):
        return z @ self.A.T


def _nll(flow, x):
    z, logdet = flow(x)
    return (0.5 * z.pow(2).sum(1) + math.log(2 * math.pi) - logdet).mean()


def test_linear_dynamics_give_matrix_exponential_and_trace():
    A = torch.tensor([[0.3, -1.0], [0.7, -0.2]], dtype=torch.float64)
    cnf = CNF(2, T=0.7, net=Linear(A), **TIGHT).double()
    x = torch.randn(8, 2, dtype=torch.float64)
    z, logdet = cnf(x)
    torch.testing.assert_close(z, x @ torch.linalg.matrix_exp(0.7 * A).T, rtol=0, atol=1e-7)
    torch.testing.assert_close(logdet, torch.full((8,), 0.7 * A.trace().item(), dtype=torch.float64))


@pytest.mark.parametrize("impl", ["autograd", "jvp"])
def test_logdet_is_brute_force_logabsdet_of_the_solved_map(impl):
    torch.manual_seed(0)
    cnf = CNF(3, hidden=(32, 32), act="softplus", T=1.0, divergence_impl=impl,
              **TIGHT_DIRECT).double()
    with torch.no_grad():
        for p in cnf.parameters():
            p.mul_(2.0)
    x = torch.randn(3, 3, dtype=torch.float64)
    _, logdet = cnf(x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: cnf(v[None])[0][0], x[i])
        torch.testing.assert_close(logdet[i].detach(), torch.linalg.slogdet(jac)[1], atol=1e-7, rtol=0)
    assert logdet.abs().max() > 1e-2


def test_forward_then_inverse_returns_input_float32_defaults():
    """Default float32 model at rtol = atol = 1e-5: round trip within 1e-3 (measured ~2e-5)."""
    torch.manual_seed(0)
    flow = FFJORD(2, num_blocks=2).eval()
    x = torch.randn(64, 2) * 2
    with torch.no_grad():
        z, ld = flow(x)
        x_rec, ld_inv = flow.inverse(z)
    assert (x_rec - x).abs().max() < 1e-3
    assert (ld + ld_inv).abs().max() < 1e-3


@pytest.mark.parametrize("impl", ["autograd", "jvp"])
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_adjoint_and_direct_gradients_agree(impl, divergence):
    torch.manual_seed(0)
    kw = dict(hidden=(16, 16), train_T=True, divergence_impl=impl,
              divergence=divergence, kinetic_weight=0.1, jacobian_weight=0.1)
    a = CNF(2, solver=SolverConfig(rtol=1e-8, atol=1e-8, adjoint=True), **kw).double()
    d = CNF(2, solver=SolverConfig(rtol=1e-8, atol=1e-8, adjoint=False), **kw).double()
    d.load_state_dict(a.state_dict())
    x = torch.randn(32, 2, dtype=torch.float64)
    for flow in (a, d):
        torch.manual_seed(5)  # the same Hutchinson probes in both
        (_nll(flow, x) + sum(flow.extra_losses().values())).backward()
    for (name, pa), pd in zip(a.named_parameters(), d.parameters()):
        torch.testing.assert_close(pa.grad, pd.grad, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("adjoint", [True, False])
def test_learnable_T_gets_the_right_gradient_and_moves(adjoint):
    torch.manual_seed(0)
    cnf = CNF(2, hidden=(16,), T=0.5, train_T=True,
              solver=SolverConfig(rtol=1e-9, atol=1e-9, adjoint=adjoint)).double()
    x = torch.randn(16, 2, dtype=torch.float64) * 2
    _nll(cnf, x).backward()
    grad = cnf.end_time.sqrt_T.grad
    assert grad is not None and grad.abs() > 1e-6
    # central finite difference in sqrt(T)
    h = 1e-5
    with torch.no_grad():
        base = cnf.end_time.sqrt_T.item()
        cnf.end_time.sqrt_T.fill_(base + h)
        up = _nll(cnf, x).item()
        cnf.end_time.sqrt_T.fill_(base - h)
        down = _nll(cnf, x).item()
        cnf.end_time.sqrt_T.fill_(base)
    torch.testing.assert_close(grad.item(), (up - down) / (2 * h), rtol=1e-4, atol=1e-8)
    opt = torch.optim.SGD(cnf.parameters(), lr=0.05)
    opt.step()
    assert float(cnf.T.detach()) != pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("impl", ["autograd", "jvp"])
def test_hutchinson_is_stochastic_and_exact_mode_is_exact(impl):
    torch.manual_seed(0)
    h = CNF(2, hidden=(16, 16), divergence="hutchinson", probe="rademacher",
            divergence_impl=impl, **TIGHT).double()
    e = CNF(2, hidden=(16, 16), divergence="exact", divergence_impl=impl, **TIGHT).double()
    e.load_state_dict(h.state_dict())
    assert h.stochastic and h.logdet_is_estimate and not e.stochastic
    x = torch.randn(5, 2, dtype=torch.float64)
    with torch.no_grad():
        _, exact = e(x)
        # 400 copies of the batch in one solve: every row draws its own probe
        draws = h(x.repeat(400, 1))[1].reshape(400, 5)
        with exact_logdet(h):
            assert not h.stochastic
            _, switched = h(x)
    assert h.stochastic
    torch.testing.assert_close(switched, exact)
    assert draws.std(0).min() > 1e-4  # it really is random
    # the integral of unbiased traces is unbiased: mean of 400 draws within 4 standard errors
    se = draws.std(0) / math.sqrt(400)
    assert ((draws.mean(0) - exact).abs() < 4 * se).all()


def test_regularizers_and_stats_through_the_hooks():
    torch.manual_seed(0)
    flow = FFJORD(2, num_blocks=2, hidden=(16,), kinetic_weight=0.1, jacobian_weight=0.01,
                  divergence="hutchinson")
    x = torch.randn(32, 2)
    loss = _nll(flow, x)
    extra = gather(flow, "extra_losses")
    assert set(extra) == {"kinetic_energy", "jacobian_frobenius"}
    assert all(v.item() > 0 and v.requires_grad for v in extra.values())
    (loss + sum(extra.values())).backward()
    stats = gather(flow, "stats")
    per_block = [b.stats() for b in flow.blocks]
    assert stats["nfe_forward"] == sum(s["nfe_forward"] for s in per_block) > 0
    assert stats["nfe_backward"] == sum(s["nfe_backward"] for s in per_block) > 0
    flow.eval()
    with torch.no_grad():
        flow(x)
    assert gather(flow, "extra_losses") == {}
    assert set(gather(flow, "stats")) == {"nfe"}


def test_fixed_step_training_with_adaptive_evaluation():
    cnf = CNF(2, hidden=(16,), solver=SolverConfig(method="rk4", step_size=0.125), T=0.5)
    assert cnf.eval_config.method == "dopri5"
    z, ld = cnf(torch.randn(8, 2))
    assert cnf.stats()["nfe_forward"] == 16
    cnf.eval()
    with torch.no_grad():
        cnf(torch.randn(8, 2))
    assert cnf.stats()["nfe"] % 6 == 2  # dopri5: 6 per step + 2 to choose the first step


def test_exploding_cnf_raises_instead_of_hanging():
    torch.manual_seed(0)
    cnf = CNF(2, hidden=(32,), act="elu", T=50.0, solver=SolverConfig(max_nfe=500))
    with torch.no_grad():
        for p in cnf.parameters():
            p.mul_(20)
    with pytest.raises(SolverError):
        cnf(torch.randn(16, 2) * 10)
    assert cnf._counter.forward <= 501


def test_density_with_ffjord_and_user_errors():
    d = Density(FFJORD(2, num_blocks=1, hidden=(8,), norm="actnorm"), StandardNormal(2))
    assert d.log_prob(torch.randn(4, 2)).shape == (4,)
    with pytest.raises(ConfigError):
        CNF(2, divergence="trace")
    with pytest.raises(ConfigError):
        CNF(2, solver={"method": "rk4"})  # no step_size
    with pytest.raises(ConfigError):
        FFJORD(2, norm="layernorm")
    with pytest.raises(ConfigError):
        CNF(2, T=0.0)
    with pytest.raises(ShapeError):
        CNF(2)(torch.randn(4, 3))
    with pytest.raises(ConfigError, match="context"):
        CNF(2)(torch.randn(4, 2), torch.randn(4, 1))


def test_old_flat_solver_keywords_raise_with_the_new_form():
    with pytest.raises(ConfigError, match=r"solver: \{method: rk4, step_size: 0.125, adjoint: False\}"):
        CNF(2, solver="rk4", step_size=0.125, adjoint=False)
    with pytest.raises(ConfigError, match=r"eval_solver: \{rtol: 1e-06\}"):
        FFJORD(2, rtol=1e-5, eval_rtol=1e-6)
    with pytest.raises(ConfigError, match="unknown solver setting"):
        CNF(2, solver={"method": "dopri5", "tol": 1e-3})
    # a dict is the same as the config object; eval of a fixed-step solver is dopri5
    cnf = CNF(2, solver={"method": "rk4", "step_size": 0.25, "rtol": 1e-4})
    assert cnf.train_config == SolverConfig(method="rk4", step_size=0.25, rtol=1e-4)
    assert cnf.eval_config == SolverConfig(method="dopri5", rtol=1e-4)


def test_conditional_cnf_contract():
    """CNF(context_dim=3): round trip, log-det against the Jacobian of z -> z(T) for a fixed
    context (both directions), gradients into the context (direct and adjoint), and a
    different context gives a different map."""
    torch.manual_seed(0)
    for adjoint in (False, True):
        flow = CNF(2, context_dim=3, hidden=(8, 8),
                   solver=SolverConfig(rtol=1e-8, atol=1e-8, adjoint=adjoint)).double()
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(0.5 * torch.randn_like(p))
        z = torch.randn(2, 2, dtype=torch.float64)
        ctx = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        x, ld_inv = flow.inverse(z, ctx)
        z_rec, ld_fwd = flow(x.detach(), ctx)
        torch.testing.assert_close(z_rec, z, atol=1e-6, rtol=0)
        torch.testing.assert_close(ld_inv + ld_fwd, torch.zeros(2, dtype=torch.float64),
                                   atol=1e-6, rtol=0)
        assert (x - z).abs().max() > 1e-2 and ld_inv.abs().max() > 1e-3
        for i in range(2):
            c_i = ctx[i:i + 1].detach()
            jac = torch.autograd.functional.jacobian(
                lambda v, f=flow, c=c_i: f.inverse(v[None], c)[0][0], z[i])
            torch.testing.assert_close(ld_inv[i].detach(), torch.linalg.slogdet(jac)[1],
                                       atol=1e-6, rtol=0)
        (x.sum() + ld_inv.sum()).backward()
        assert ctx.grad.abs().sum() > 0
        x2, _ = flow.inverse(z, ctx.detach() + 1)
        assert (x2 - x).abs().max() > 1e-3
    with pytest.raises(ShapeError, match="context"):
        flow(torch.randn(2, 2, dtype=torch.float64))


def test_conditional_context_gradient_matches_between_adjoint_and_direct():
    torch.manual_seed(1)
    a = CNF(2, context_dim=2, hidden=(8,), solver=SolverConfig(rtol=1e-9, atol=1e-9)).double()
    d = CNF(2, context_dim=2, hidden=(8,),
            solver=SolverConfig(rtol=1e-9, atol=1e-9, adjoint=False)).double()
    d.load_state_dict(a.state_dict())
    x = torch.randn(4, 2, dtype=torch.float64)
    grads = []
    for flow in (a, d):
        ctx = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        ctx.requires_grad_(True)
        z, ld = flow(x, ctx)
        (z.pow(2).sum() - ld.sum()).backward()
        grads.append(ctx.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)
