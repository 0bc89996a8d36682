import torch

from cnf.flows.normalization import ActNorm, MovingBatchNorm


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


def test_moving_batchnorm_tracks_statistics_and_inverts_in_eval():
    bn = MovingBatchNorm(2, decay=0.5)
    x = torch.randn(1000, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([1.0, -2.0])
    for _ in range(30):
        bn(x)
    torch.testing.assert_close(bn.running_mean, x.mean(0), atol=1e-4, rtol=0)
    bn.eval()
    z, ld = bn(x)
    assert z.std(0).sub(1).abs().max() < 0.01
    x_rec, ld_inv = bn.inverse(z)
    torch.testing.assert_close(x_rec, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(ld + ld_inv, torch.zeros(1000))


def test_moving_batchnorm_with_lag_uses_batch_statistics_in_training():
    bn = MovingBatchNorm(2, bn_lag=0.5)
    x = torch.randn(500, 2) * 4 + 3
    z, ld = bn(x)
    # first step: (lag·batch + (1-lag)·running) / (1 - lag), FFJORD's formula; the running
    # mean starts at 0 (so the mean is the batch mean) and the running variance at 1
    torch.testing.assert_close(z.mean(0), torch.zeros(2), atol=1e-4, rtol=0)
    var = x.var(0) + 1.0
    torch.testing.assert_close(ld, (-0.5 * torch.log(var + bn.eps)).sum().expand(500))
    x.requires_grad_(True)
    bn(x)[1].sum().backward()
    assert x.grad is not None and x.grad.abs().max() > 0  # gradients flow through batch stats
