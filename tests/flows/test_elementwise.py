import pytest
import torch

from cnf.errors import ConfigError
from cnf.flows.elementwise import LeakyReLU, Logit, PiecewiseLinear, Sigmoid


def test_piecewise_linear_is_identity_outside_the_bound_and_continuous_at_it():
    flow = PiecewiseLinear(2, bins=6, bound=2.0)
    with torch.no_grad():
        flow.raw_widths.normal_()
        flow.raw_heights.normal_()
    x = torch.tensor([[-10.0, 3.0], [2.5, -2.0001]])
    z, logdet = flow(x)
    torch.testing.assert_close(z, x)
    torch.testing.assert_close(logdet, torch.zeros(2))
    edge = torch.tensor([[1.999999, -1.999999]])
    torch.testing.assert_close(flow(edge)[0], edge, atol=1e-5, rtol=0)


def test_piecewise_linear_is_monotone():
    flow = PiecewiseLinear(1, bins=8, bound=3.0)
    with torch.no_grad():
        flow.raw_widths.normal_(std=2)
        flow.raw_heights.normal_(std=2)
    x = torch.linspace(-4, 4, 2001)[:, None]
    z, _ = flow(x)
    assert (z[1:] - z[:-1] > 0).all()


def test_logit_is_finite_at_pixel_values_0_and_1_with_alpha():
    x = torch.tensor([[0.0, 1.0, 0.5]])
    z, logdet = Logit(alpha=0.05)(x)
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    x_back, _ = Logit(alpha=0.05).inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-6, rtol=0)


def test_sigmoid_logdet_is_stable_for_large_inputs():
    x = torch.tensor([[-200.0, 200.0]], dtype=torch.float64)
    _, logdet = Sigmoid()(x)
    assert torch.isfinite(logdet).all()
    torch.testing.assert_close(logdet, torch.tensor([-400.0], dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("bad", [0.0, -0.5])
def test_leaky_relu_rejects_non_positive_slope(bad):
    with pytest.raises(ConfigError, match="negative_slope"):
        LeakyReLU(bad)
