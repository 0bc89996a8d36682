"""Rational-quadratic splines: tails (finite values and gradients far beyond the bound),
identity at zero parameters, accuracy of the closed-form inverse."""

import pytest
import torch

from cnf.flows.spline import NSF, RQSAutoregressive, rational_quadratic_spline

FAR = [-1e4, -50.0, -7.0, -5.0, -4.999, 0.3, 4.999, 5.0, 7.0, 50.0, 1e4]


def _params(n, bins=8, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = scale * torch.randn(n, bins, generator=g, dtype=torch.float64)
    h = scale * torch.randn(n, bins, generator=g, dtype=torch.float64)
    d = scale * torch.randn(n, bins - 1, generator=g, dtype=torch.float64)
    return w, h, d


@pytest.mark.parametrize("inverse", [False, True])
def test_far_out_of_bound_inputs_stay_finite_with_finite_gradients(inverse):
    x = torch.tensor(FAR, dtype=torch.float64, requires_grad=True)
    w, h, d = (p.requires_grad_() for p in _params(len(FAR)))
    y, ld = rational_quadratic_spline(x, w, h, d, bound=5.0, inverse=inverse)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    (y.sum() + ld.sum()).backward()
    for t in (x, w, h, d):
        assert torch.isfinite(t.grad).all()
    outside = x.detach().abs() >= 5.0
    torch.testing.assert_close(y[outside], x[outside].detach())
    assert (ld[outside] == 0).all()
    assert (x.grad[outside] == 1).all()  # d(y + ld)/dx = 1 in the identity tails


def test_flow_level_tails_in_both_directions():
    torch.manual_seed(0)
    flow = NSF(2, num_transforms=3, bins=8, bound=5.0, hidden=(16, 16))
    x = torch.tensor([[1e4, -1e4], [60.0, 0.1], [-7.0, 5.0]], requires_grad=True)
    z, ld = flow(x)
    (z.sum() + ld.sum()).backward()
    assert torch.isfinite(z).all() and torch.isfinite(ld).all() and torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters())
    zz = torch.tensor([[1e4, -1e4], [60.0, 0.1]], requires_grad=True)
    xs, ld = flow.inverse(zz)
    (xs.sum() + ld.sum()).backward()
    assert torch.isfinite(xs).all() and torch.isfinite(zz.grad).all()


def test_zero_parameters_give_the_identity():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    zeros = torch.zeros(101, 8, dtype=torch.float64)
    y, ld = rational_quadratic_spline(x, zeros, zeros, zeros[:, :7], bound=5.0)
    # min_bin/min_derivative shift the knots by O(1e-3): the identity holds to that level
    torch.testing.assert_close(y, x, atol=1e-2, rtol=0)
    torch.testing.assert_close(ld, torch.zeros_like(ld), atol=1e-2, rtol=0)


def test_inverse_accuracy_and_continuity_at_the_bound():
    w, h, d = _params(20000, scale=3.0, seed=1)
    x = torch.empty(20000, dtype=torch.float64).uniform_(-5, 5)
    y, ld = rational_quadratic_spline(x, w, h, d, bound=5.0)
    x_rec, ld_inv = rational_quadratic_spline(y, w, h, d, bound=5.0, inverse=True)
    # with bins as narrow as 1e-3 of the range and slopes down to 1e-3, measured (float64):
    # max |x_rec - x| = 2.4e-9, and 5.3e-13 once scaled by the slope dy/dx (round-off in y)
    err = (x_rec - x).abs()
    assert err.max() < 1e-8
    assert (err * ld.exp()).max() < 1e-11
    torch.testing.assert_close(ld + ld_inv, torch.zeros_like(ld), atol=1e-8, rtol=0)
    inner = torch.full((4,), 5.0 - 1e-9, dtype=torch.float64)
    y_edge, _ = rational_quadratic_spline(inner, *(p[:4] for p in (w, h, d)), bound=5.0)
    torch.testing.assert_close(y_edge, inner, atol=1e-7, rtol=0)


def test_parameter_count_matches_zuko_nsf():
    # zuko 1.6 NSF(2, transforms=5, bins=8, hidden_features=(64, 64)): 36,710 parameters
    flow = NSF(2, num_transforms=5, bins=8, hidden=(64, 64))
    assert sum(p.numel() for p in flow.parameters()) == 36710


def test_autoregressive_sampling_is_exact_in_16d():
    torch.manual_seed(0)
    layer = RQSAutoregressive(16, bins=8, bound=3.0, hidden=(32, 32)).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = 2 * torch.randn(128, 16, dtype=torch.float64)
    z, _ = layer(x)
    x_rec, _ = layer.inverse(z)
    # measured 4e-15; larger perturbations (0.3) give near-degenerate splines whose
    # conditioning amplifies round-off through the 16 passes (measured 1e-5)
    torch.testing.assert_close(x_rec, x, atol=1e-10, rtol=0)
