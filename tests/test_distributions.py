import math

import pytest
import torch

from cnf.distributions import Density, StandardLogistic, StandardNormal
from cnf.errors import ConfigError, NonFiniteError, ShapeError
from cnf.flows.coupling import RealNVP

from .flows.registry import perturb


def test_standard_normal_log_prob_matches_torch():
    z = torch.randn(10, 3)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
    torch.testing.assert_close(StandardNormal(3).log_prob(z), ref)


def test_standard_logistic_log_prob_and_sampling():
    z = torch.randn(10, 4) * 3
    base = torch.distributions.TransformedDistribution(
        torch.distributions.Uniform(0.0, 1.0),
        [torch.distributions.SigmoidTransform().inv])
    torch.testing.assert_close(StandardLogistic(4).log_prob(z), base.log_prob(z).sum(1))
    s = StandardLogistic(1).sample(200_000)
    assert abs(s.var().item() - math.pi**2 / 3) < 0.05


def test_temperature_scales_samples():
    d = Density(perturb(RealNVP(2, num_layers=2, hidden=8)), StandardNormal(2))
    torch.manual_seed(0)
    assert abs(d.base.sample(100_000, temperature=0.5).std().item() - 0.5) < 0.01
    assert d.sample(7, temperature=0.7).shape == (7, 2)


def test_sample_and_log_prob_agrees_with_log_prob():
    d = Density(perturb(RealNVP(3, num_layers=4, hidden=16)), StandardNormal(3))
    x, logq = d.sample_and_log_prob(64)
    torch.testing.assert_close(logq, d.log_prob(x), atol=1e-4, rtol=1e-4)


def test_density_normalizes_in_2d():
    """The pushed-forward density integrates to one over a wide grid."""
    d = Density(perturb(RealNVP(2, num_layers=4, hidden=16), scale=0.1), StandardNormal(2))
    g = torch.linspace(-12, 12, 401)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    with torch.no_grad():
        p = d.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp()
    mass = p.sum().item() * (g[1] - g[0]).item() ** 2
    assert abs(mass - 1.0) < 0.01


def test_bad_inputs_raise_clear_errors():
    d = Density(RealNVP(2, num_layers=2), StandardNormal(2))
    with pytest.raises(ShapeError, match=r"shape \[batch, 2\] but got \[4, 3\]"):
        d.log_prob(torch.randn(4, 3))
    x = torch.randn(5, 2)
    x[3, 1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"rows \[3\]"):
        d.log_prob(x)


# -- context, dtype and shape checks (cnf.data.files feeds these) -------------------------------
def test_conditional_density_log_prob_and_sample_take_context():
    torch.manual_seed(0)
    d = Density(perturb(RealNVP(3, num_layers=2, hidden=8, context_dim=2)), StandardNormal(3))
    x, c = torch.randn(6, 3), torch.randn(6, 2)
    assert d.context_dim == 2
    lp = d.log_prob(x, c)
    assert lp.shape == (6,) and not torch.allclose(lp, d.log_prob(x, c + 1.0))
    assert d.sample(4, context=torch.zeros(2)).shape == (4, 3)  # one context for all
    assert d.sample(6, context=c).shape == (6, 3)                 # one per sample
    xs, lq = d.sample_and_log_prob(6, context=c)
    torch.testing.assert_close(lq, d.log_prob(xs, c), atol=1e-4, rtol=1e-4)
    with pytest.raises(ShapeError, match="context_dim=2 but got no context"):
        d.log_prob(x)
    with pytest.raises(ShapeError, match="context of width 1"):
        d.log_prob(x, torch.randn(6, 1))
    with pytest.raises(ShapeError, match="the batch of x"):
        d.log_prob(x, torch.randn(5, 2))
    with pytest.raises(ShapeError, match=r"\[4, context_dim\]"):
        d.sample(4, context=torch.zeros(3, 2))
    plain = Density(RealNVP(3, num_layers=2, hidden=8), StandardNormal(3))
    with pytest.raises(ShapeError, match="context_dim=0"):
        plain.log_prob(x, c)


def test_float64_data_to_a_float32_model_is_a_shape_error():
    d = Density(RealNVP(2), StandardNormal(2))
    with pytest.raises(ShapeError, match=r"data is float64 but the model is float32.*precision 64"):
        d.log_prob(torch.randn(3, 2, dtype=torch.float64))
    assert d.double().log_prob(torch.randn(3, 2, dtype=torch.float64)).dtype == torch.float64


def test_base_shape_follows_the_flow_dim():
    d = Density(RealNVP(5), StandardNormal())
    assert d.event_shape == (5,)
    with pytest.raises(ConfigError, match="dim=5 but the base distribution has shape"):
        Density(RealNVP(5), StandardNormal(4))
