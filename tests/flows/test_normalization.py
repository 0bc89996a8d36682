import torch

from cnf.flows.normalization import ActNorm


def test_actnorm_initializes_to_standardized_output():
    x = torch.randn(512, 3) * torch.tensor([5.0, 0.1, 2.0]) + torch.tensor([2.0, -1.0, 0.0])
    norm = ActNorm(3)
    z, _ = norm(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(3), atol=1e-4, rtol=0)


def test_actnorm_image_logdet_counts_spatial_positions():
    norm = ActNorm(2)
    x = torch.randn(16, 2, 3, 5) * 3
    _, logdet = norm(x)
    torch.testing.assert_close(logdet, norm.log_scale.sum().expand(16) * 15)


def test_actnorm_reload_does_not_reinitialize():
    norm = ActNorm(3)
    norm(torch.randn(256, 3) * 4 + 1)
    fresh = ActNorm(3)
    fresh.load_state_dict(norm.state_dict())
    fresh.train()
    other = torch.randn(64, 3) * 0.1 - 7  # very different data: a re-init would change outputs
    torch.testing.assert_close(fresh(other)[0], norm(other)[0])
    assert bool(fresh.initialized)
