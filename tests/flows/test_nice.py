import torch

from cnf.distributions import Density, StandardLogistic
from cnf.flows.nice import NICE, AdditiveCoupling


def test_additive_coupling_is_volume_preserving_and_keeps_the_conditioning_half():
    layer = AdditiveCoupling(4, mask=[1, 0, 0, 1], hidden=8)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_()
    x = torch.randn(16, 4)
    z, logdet = layer(x)
    assert torch.equal(logdet, torch.zeros(16))
    torch.testing.assert_close(z[:, [0, 3]], x[:, [0, 3]])
    assert (z[:, [1, 2]] - x[:, [1, 2]]).abs().max() > 1e-3


def test_nice_with_logistic_base_trains():
    """NICE + standard logistic base (the paper's setup) fits a scaled, correlated Gaussian.
    Measured: NLL 3.73 -> 2.74 in 150 steps (seed 0); the entropy of the data distribution
    (the optimum) is log(2πe) + ½ log det Σ = 2.70."""
    torch.manual_seed(0)
    cov = torch.tensor([[4.0, 1.8], [1.8, 1.0]])
    data = torch.randn(4096, 2) @ torch.linalg.cholesky(cov).t()
    density = Density(NICE(2, num_layers=4, hidden=32, depth=2), StandardLogistic(2))
    opt = torch.optim.Adam(density.parameters(), lr=1e-2)
    first = float(-density.log_prob(data).mean().detach())
    for _ in range(150):
        batch = data[torch.randint(0, 4096, (256,))]
        loss = -density.log_prob(batch).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(-density.log_prob(data).mean().detach())
    assert last < 2.85, (first, last)
    assert torch.isfinite(density.sample(100)).all()
