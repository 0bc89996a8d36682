"""Dequantization, logit preprocessing and bits/dim, against hand-computed numbers."""

import math

import pytest
import torch

from cnf.dequantization import (
    DequantizedDensity,
    Dequantizer,
    VariationalDequantizer,
    bits_per_dim,
)
from cnf.distributions import StandardNormal
from cnf.errors import ConfigError, DataError
from cnf.flows.base import Chain, Identity
from cnf.flows.normalization import ActNorm


class FixedDequantizer(Dequantizer):
    """Test-only: returns the given offsets u (broadcast over the batch), log q = 0."""

    def __init__(self, u):
        super().__init__()
        self.u = u

    def forward(self, x, levels):
        return self.u.expand_as(x).to(x), x.new_zeros(x.shape[0])


def test_bits_per_dim_hand_computed_case():
    # one pixel, K = 2 levels, x = 0, u = 1/2, logit λ = 0.05, identity flow, N(0, 1) base:
    #   y = (0 + 0.5) / 2 = 0.25;  p = 0.05 + 0.9 * 0.25 = 0.275
    #   s = log(0.275 / 0.725) = -0.969401
    #   log N(s) = -s²/2 - log(2π)/2 = -0.469869 - 0.918939 = -1.388807
    #   log|ds/dy| = log 0.9 - log 0.275 - log 0.725 = -0.105361 + 1.290984 + 0.321584 = 1.507207
    #   log P(x) >= -1.388807 + 1.507207 - log 2 (= 0.693147) = -0.574747 nats
    #   bits/dim = 0.574747 / ln 2 = 0.829185
    d = DequantizedDensity(Identity(), StandardNormal((1, 1, 1)), levels=2,
                           dequantizer=FixedDequantizer(torch.tensor(0.5)), logit_lambda=0.05)
    x = torch.tensor([[[[0.0]]], [[[1.0]]]])
    logp = d.log_prob(x)
    torch.testing.assert_close(logp, torch.tensor([-0.574747, -0.574747]), atol=2e-6, rtol=0)
    torch.testing.assert_close(bits_per_dim(logp, 1), torch.tensor([0.829185] * 2), atol=3e-6,
                               rtol=0)


def test_bits_per_dim_without_logit():
    # s = y - 1/2, K = 256, D = 2, x = (0, 255), u = 1/2: s = (0.5/256 - 0.5, 255.5/256 - 0.5)
    d = DequantizedDensity(Identity(), StandardNormal((1, 1, 2)), levels=256,
                           dequantizer=FixedDequantizer(torch.tensor(0.5)), logit_lambda=None)
    s = torch.tensor([0.5 / 256 - 0.5, 255.5 / 256 - 0.5], dtype=torch.float64)
    expected = float((-0.5 * s**2 - 0.5 * math.log(2 * math.pi)).sum()) - 2 * math.log(256)
    got = d.double().log_prob(torch.tensor([[[[0.0, 255.0]]]], dtype=torch.float64))
    assert got.item() == pytest.approx(expected, abs=1e-9)
    assert bits_per_dim(got, 2).item() == pytest.approx(-expected / (2 * math.log(2)), abs=1e-9)


def test_discrete_probabilities_sum_to_the_mass_in_range():
    # Σ_x P(x), with P(x) = ∫ exp(bound(x, u)) du computed by the midpoint rule over u;
    # a missing -D log K or a wrong logit log-det breaks this by a constant factor
    flow = Chain([ActNorm(1)])
    with torch.no_grad():
        flow[0].bias.fill_(0.7)
        flow[0].log_scale.fill_(-0.4)
    flow[0].initialized.fill_(True)
    m = 2000
    u = ((torch.arange(m, dtype=torch.float64) + 0.5) / m).view(m, 1, 1, 1)
    d = DequantizedDensity(flow, StandardNormal((1, 1, 1)), levels=17,
                           dequantizer=FixedDequantizer(u), logit_lambda=0.05).double()
    total = sum(d.log_prob(torch.full((m, 1, 1, 1), float(k), dtype=torch.float64)).exp().mean()
                for k in range(17))
    # y in [0, 1) maps onto s in [logit λ, logit(1 - λ)]: the discrete probabilities sum to the
    # model's mass there, z = (s + 0.7) e^{-0.4} ~ N(0, 1)
    lo, hi = (math.log(p / (1 - p)) for p in (0.05, 0.95))
    phi = lambda v: 0.5 * (1 + math.erf((v + 0.7) * math.exp(-0.4) / math.sqrt(2)))  # noqa: E731
    assert float(total) == pytest.approx(phi(hi) - phi(lo), abs=1e-6)
    assert 0.9 < float(total) < 0.95  # the logit range leaks ~7 % here: comparing with 1 fails


def test_logit_lambda_must_be_positive():
    with pytest.raises(ConfigError, match="logit_lambda"):
        DequantizedDensity(Identity(), StandardNormal(2), logit_lambda=0.0)


def test_variational_dequantizer_log_q_matches_jacobian():
    torch.manual_seed(0)
    deq = VariationalDequantizer(channels=1, num_layers=2, hidden=8, features=4).double()
    for p in deq.parameters():  # move away from the identity initialization
        p.data.add_(0.2 * torch.randn_like(p))
    x = torch.randint(0, 17, (1, 1, 2, 2)).double()
    eps = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    u, log_q = deq.transform(eps, x, 17)
    assert ((u > 0) & (u < 1)).all()
    jac = torch.autograd.functional.jacobian(
        lambda e: deq.transform(e.view(1, 1, 2, 2), x, 17)[0].flatten(), eps.flatten())
    expected = float((-0.5 * eps**2 - 0.5 * math.log(2 * math.pi)).sum()
                     - torch.linalg.slogdet(jac)[1])
    assert log_q.item() == pytest.approx(expected, abs=1e-8)


def test_variational_bound_is_trainable_end_to_end():
    torch.manual_seed(0)
    from cnf.flows.coupling import RealNVPImage

    d = DequantizedDensity(RealNVPImage((1, 4, 4), scales=2, hidden=8),
                           StandardNormal((1, 4, 4)), levels=17,
                           dequantizer=VariationalDequantizer(1, num_layers=2, hidden=8))
    x = torch.randint(0, 17, (8, 1, 4, 4))
    loss = -d.log_prob(x).mean()
    loss.backward()
    grads = [p.grad for p in d.dequantizer.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_non_integer_input_is_a_data_error():
    d = DequantizedDensity(Identity(), StandardNormal((1, 2, 2)), levels=17)
    with pytest.raises(DataError, match="integer pixel levels"):
        d.log_prob(torch.rand(3, 1, 2, 2))
    with pytest.raises(DataError, match="levels"):
        d.log_prob(torch.full((3, 1, 2, 2), 17.0))


def test_samples_are_levels():
    d = DequantizedDensity(Identity(), StandardNormal((1, 3, 3)), levels=17, logit_lambda=0.05)
    x = d.sample(50, temperature=0.7)
    assert x.shape == (50, 1, 3, 3) and torch.equal(x, x.round())
    assert x.min() >= 0 and x.max() <= 16
