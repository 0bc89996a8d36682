"""Planar flow: constraint by parameterization, numerical inverse tolerance, gradients."""

import pytest
import torch

from cnf.errors import InverseError, ShapeError
from cnf.flows.planar import Planar, PlanarFlow


def _adversarial(dim=3, dtype=torch.float64):
    """u pointing against w (wᵀu = -12): unconstrained, the map would not be invertible."""
    layer = Planar(dim).to(dtype)
    with torch.no_grad():
        layer.w.copy_(torch.linspace(1, 2, dim))
        layer.u.copy_(-12 * layer.w / layer.w.pow(2).sum())
        layer.b.fill_(0.3)
    return layer


def test_constraint_holds_by_parameterization():
    layer = _adversarial()
    x = torch.randn(4, 3, dtype=torch.float64)
    u_hat, w, _ = layer._params(x, None)
    assert float((w * u_hat).sum().detach()) > -1
    # the map is increasing along w: 1 + wᵀû·tanh' > 0 everywhere, so log-dets are finite
    _, logdet = layer.inverse(torch.randn(1000, 3, dtype=torch.float64) * 5)
    assert torch.isfinite(logdet).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
def test_numerical_inverse_reaches_the_stated_tolerance(dtype, tol):
    torch.manual_seed(0)
    layer = _adversarial(dtype=dtype)
    z = torch.randn(2000, 3, dtype=dtype) * 3
    with torch.no_grad():
        x, _ = layer.inverse(z)
        z_rec, _ = layer(x)
    # the residual bound gives an error along w of up to tol·(1+|wᵀx|)/(1+wᵀû); on this
    # near-degenerate layer (1 + wᵀû ≈ 6e-6) we measured max |z_rec - z| = 7.6e-11 (float64,
    # 45 iterations) and 1.4e-4 (float32, 23 iterations)
    err = (z_rec - z).abs().max()
    assert err < (1e-9 if dtype == torch.float64 else 1e-3), err
    u_hat, w, b = layer._params(x, None)
    alpha = (z_rec * w).sum(1)
    resid = alpha + (w * u_hat).sum() * torch.tanh(alpha + b[0]) - (x * w).sum(1)
    c = (w * u_hat).sum().abs()
    assert (resid.abs() <= tol * (1 + (x * w).sum(1).abs() + c) * 1.01).all()
    assert layer.last_iterations <= 60


def test_root_finder_raises_when_it_cannot_converge():
    layer = _adversarial()
    layer.max_iter = 1
    x = torch.randn(64, 3, dtype=torch.float64) * 3
    with pytest.raises(InverseError, match="max_iter"):
        layer(x)


def test_parameter_gradients_through_the_root_match_finite_differences():
    torch.manual_seed(0)
    flow = PlanarFlow(2, num_layers=2).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.7 * torch.randn_like(p))
    x = torch.randn(5, 2, dtype=torch.float64)
    names = [n for n, _ in flow.named_parameters()]

    def fn(*ps):
        return torch.func.functional_call(flow, dict(zip(names, ps)), (x,))

    inputs = tuple(p.detach().clone().requires_grad_() for p in flow.parameters())
    assert torch.autograd.gradcheck(fn, inputs)


def test_amortized_parameters_depend_on_the_context():
    layer = Planar(2, context_dim=4)
    with torch.no_grad():
        layer.amortize.weight.normal_()
    z = torch.randn(1, 2).expand(3, 2)
    c = torch.randn(3, 4)
    x, _ = layer.inverse(z, c)
    assert (x[0] - x[1]).abs().max() > 1e-4
    with pytest.raises(ShapeError, match="context"):
        layer.inverse(z)


def test_float32_root_finder_converges_with_a_large_w_dot_u():
    """After lr-1e-2 training wᵀû reached the hundreds and the float32 residual could not get
    below tol·(1+|wᵀx|) (eps·|wᵀû| rounding): InverseError on a plotting grid. The tolerance is
    now relative to the terms, 1 + |wᵀx| + |wᵀû|."""
    layer = Planar(2)
    with torch.no_grad():
        layer.w.copy_(torch.tensor([20.0, -15.0]))
        layer.u.copy_(torch.tensor([8.0, 3.0]))  # wᵀu = 115
        layer.b.fill_(0.7)
    g = torch.linspace(-4, 4, 200)
    grid = torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    with torch.no_grad():
        z, logdet = layer(grid)
        x, _ = layer.inverse(z)
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    # float32 round trip of this stiff layer (|u|·sech² amplifies the α error): measured 6.6e-3
    assert (x - grid).abs().max() < 2e-2
