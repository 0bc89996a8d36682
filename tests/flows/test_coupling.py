"""Image couplings (checkerboard / channel masks) and RealNVP's multi-scale architecture."""

import pytest
import torch

from cnf.distributions import Density, StandardNormal
from cnf.errors import ConfigError, ShapeError
from cnf.flows.coupling import ImageAffineCoupling, RealNVPImage


def _randomized(layer):
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(std=0.2)
    return layer


@pytest.mark.parametrize("parity", [0, 1])
def test_checkerboard_keeps_the_conditioning_pixels(parity):
    layer = _randomized(ImageAffineCoupling(2, "checkerboard", parity=parity, hidden=8))
    x = torch.randn(4, 2, 4, 6)
    z, _ = layer(x)
    ij = torch.arange(4)[:, None] + torch.arange(6)[None, :]
    keep = (ij + parity) % 2 == 0
    torch.testing.assert_close(z[:, :, keep], x[:, :, keep])
    assert (z[:, :, ~keep] - x[:, :, ~keep]).abs().min() > 0


@pytest.mark.parametrize("parity", [0, 1])
def test_channel_coupling_keeps_one_half(parity):
    layer = _randomized(ImageAffineCoupling(5, "channel", parity=parity, hidden=8))
    x = torch.randn(3, 5, 2, 2)
    z, _ = layer(x)
    kept = slice(0, 2) if parity == 0 else slice(3, 5)
    torch.testing.assert_close(z[:, kept], x[:, kept])
    assert (z - x).abs().max() > 1e-3


def test_image_coupling_context_changes_the_map():
    layer = _randomized(ImageAffineCoupling(2, "channel", hidden=8, context_dim=3))
    x = torch.randn(1, 2, 4, 4).expand(2, -1, -1, -1)
    z, _ = layer(x, torch.randn(2, 3))
    assert (z[0] - z[1]).abs().max() > 1e-4


def test_realnvp_image_density_and_errors():
    torch.manual_seed(0)
    d = Density(RealNVPImage((1, 8, 8), scales=3, hidden=8), StandardNormal((1, 8, 8)))
    x = torch.rand(4, 1, 8, 8)
    assert d.log_prob(x).shape == (4,)
    assert d.sample(3).shape == (3, 1, 8, 8)
    with pytest.raises(ConfigError, match="fewer scales"):
        RealNVPImage((1, 4, 4), scales=4)
    with pytest.raises(ConfigError, match="channel coupling needs"):
        ImageAffineCoupling(1, "channel")
    with pytest.raises(ShapeError, match="at least 2 pixels"):
        ImageAffineCoupling(2, "checkerboard")(torch.randn(2, 2, 1, 1))
