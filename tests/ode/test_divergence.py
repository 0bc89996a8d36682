import math

import pytest
import torch

from cnf.errors import ConfigError
from cnf.ode import ODENet
from cnf.ode.divergence import divergence_exact, divergence_hutchinson, sample_probes


def _field(dim=4, n=3):
    torch.manual_seed(3)
    net = ODENet(dim, hidden=(16, 16), act="softplus").double()
    z = torch.randn(n, dim, dtype=torch.float64, requires_grad=True)
    f = net(torch.tensor(0.2, dtype=torch.float64), z)
    jac = torch.stack([torch.autograd.functional.jacobian(lambda v: net(torch.tensor(0.2, dtype=torch.float64), v[None])[0], zi) for zi in z.detach()])
    return f, z, jac


def test_exact_divergence_and_frobenius_match_the_jacobian():
    f, z, jac = _field()
    div, frob = divergence_exact(f, z, create_graph=False, frobenius=True)
    torch.testing.assert_close(div, jac.diagonal(dim1=1, dim2=2).sum(1))
    torch.testing.assert_close(frob, jac.pow(2).sum((1, 2)))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(kind):
    """Mean over 4000 probes vs the exact trace and Frobenius norm, within 4 standard
    errors (the estimator's own spread, measured from the same draws)."""
    f, z, jac = _field()
    torch.manual_seed(11)
    n = 4000
    probes = sample_probes(kind, n, z)
    vjp = torch.einsum("nbi,bij->nbj", probes, jac)  # εᵀJ for every probe, as autograd would
    est_div = (vjp * probes).sum(-1)                  # [n, B]
    est_frob = vjp.pow(2).sum(-1)
    exact_div = jac.diagonal(dim1=1, dim2=2).sum(1)
    exact_frob = jac.pow(2).sum((1, 2))
    for est, exact in ((est_div, exact_div), (est_frob, exact_frob)):
        se = est.std(0) / math.sqrt(n)
        assert ((est.mean(0) - exact).abs() < 4 * se + 1e-12).all(), (est.mean(0), exact, se)
    # and the autograd implementation computes exactly these per-probe quantities
    div, frob = divergence_hutchinson(f, z, probes[:5], create_graph=False, frobenius=True)
    torch.testing.assert_close(div, est_div[:5].mean(0))
    torch.testing.assert_close(frob, est_frob[:5].mean(0))


def test_rademacher_probes_are_signs_and_unknown_kind_raises():
    e = sample_probes("rademacher", 100, torch.zeros(3, 2))
    assert e.shape == (100, 3, 2) and set(e.unique().tolist()) == {-1.0, 1.0}
    with pytest.raises(ConfigError):
        sample_probes("uniform", 1, torch.zeros(1, 2))
