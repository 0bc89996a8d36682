"""Flow-matching paths and couplings (cnf/ode/matching.py)."""

import importlib.util
import itertools
import math

import pytest
import torch

from cnf.errors import ConfigError
from cnf.ode.matching import FlowMatcher, ot_permutation


@pytest.mark.parametrize("path,sigma", [("linear", 0.0), ("linear", 0.3), ("vp", 0.0)])
def test_target_is_the_time_derivative_of_the_interpolant(path, sigma):
    """u_s = ∂x_s/∂s (central difference in float64), and the ends are the data and noise."""
    torch.manual_seed(0)
    m = FlowMatcher(path=path, sigma=sigma)
    x, z, eps = (torch.randn(16, 3, dtype=torch.float64) for _ in range(3))
    s = torch.rand(16, dtype=torch.float64) * 0.9 + 0.05
    h = 1e-6
    _, u = m.interpolate(x, z, s, eps)
    up, _ = m.interpolate(x, z, s + h, eps)
    down, _ = m.interpolate(x, z, s - h, eps)
    torch.testing.assert_close(u, (up - down) / (2 * h), atol=1e-7, rtol=0)
    x0, _ = m.interpolate(x, z, torch.zeros(16, dtype=torch.float64), eps)
    x1, _ = m.interpolate(x, z, torch.ones(16, dtype=torch.float64), eps)
    torch.testing.assert_close(x0, x + sigma * eps, atol=1e-12, rtol=0)
    torch.testing.assert_close(x1, z + sigma * eps, atol=1e-12, rtol=0)


def test_closed_forms():
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    z = torch.tensor([[-1.0, 0.5]], dtype=torch.float64)
    s = torch.tensor([0.25], dtype=torch.float64)
    xs, u = FlowMatcher("linear").interpolate(x, z, s)
    torch.testing.assert_close(xs, 0.75 * x + 0.25 * z)
    torch.testing.assert_close(u, z - x)
    xs, u = FlowMatcher("vp").interpolate(x, z, s)
    a = math.pi / 8
    torch.testing.assert_close(xs, math.cos(a) * x + math.sin(a) * z)
    torch.testing.assert_close(u, math.pi / 2 * (math.cos(a) * z - math.sin(a) * x))


def _cost(x, z):
    return (x - z).pow(2).sum().item()


def test_ot_coupling_lowers_the_transport_cost_on_every_batch():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(64, 2, generator=gen) * 3 + 1
        z = torch.randn(64, 2, generator=gen)
        paired = z[ot_permutation(x, z)]
        assert _cost(x, paired) < _cost(x, z)
        assert sorted(paired[:, 0].tolist()) == sorted(z[:, 0].tolist())  # a permutation


def test_ot_coupling_is_the_optimal_assignment():
    gen = torch.Generator().manual_seed(1)
    x, z = torch.randn(6, 2, generator=gen), torch.randn(6, 2, generator=gen)
    best = min(_cost(x, z[list(p)]) for p in itertools.permutations(range(6)))
    solvers = ["scipy"] + (["pot"] if importlib.util.find_spec("ot") else [])
    for solver in solvers:
        assert _cost(x, z[ot_permutation(x, z, solver)]) == pytest.approx(best, rel=1e-12)


def test_logit_normal_times_are_in_the_unit_interval_with_the_right_median():
    torch.manual_seed(0)
    s = FlowMatcher(time_sampling="logit_normal", logit_loc=1.0).sample_time(20000, torch.zeros(1))
    assert (s > 0).all() and (s < 1).all()
    assert s.median().item() == pytest.approx(1 / (1 + math.exp(-1)), abs=0.01)
    u = FlowMatcher().sample_time(20000, torch.zeros(1))
    assert u.mean().item() == pytest.approx(0.5, abs=0.01)


def test_user_errors():
    with pytest.raises(ConfigError):
        FlowMatcher(path="cosine")
    with pytest.raises(ConfigError):
        FlowMatcher(coupling="sinkhorn")
    with pytest.raises(ConfigError):
        FlowMatcher(path="vp", sigma=0.1)
    with pytest.raises(ConfigError, match="independent"):
        FlowMatcher(coupling="ot").pair(torch.randn(4, 2), torch.randn(4, 2), torch.randn(4, 1))
