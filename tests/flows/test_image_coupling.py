import pytest
import torch

from cnf.errors import ConfigError, ShapeError
from cnf.flows.image_coupling import ConvAffineCoupling, checkerboard


def test_checkerboard_coupling_keeps_conditioning_entries():
    layer = ConvAffineCoupling(2, "checkerboard", parity=0, hidden=8)
    for p in layer.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(3, 2, 4, 4)
    z, _ = layer(x)
    m = checkerboard(4, 4, 0).bool().expand_as(x)
    assert torch.equal(z[m], x[m]) and not torch.allclose(z[~m], x[~m])


def test_coupling_starts_as_identity_and_context_is_checked():
    layer = ConvAffineCoupling(1, hidden=8, context_channels=3)
    x = torch.randn(2, 1, 4, 4)
    z, ld = layer(x, torch.randn(2, 3, 4, 4))
    assert torch.equal(z, x) and torch.equal(ld, torch.zeros(2))
    with pytest.raises(ShapeError):
        layer(x)


def test_context_changes_the_map_and_config_errors():
    layer = ConvAffineCoupling(2, "channel", hidden=8, context_channels=3)
    for p in layer.parameters():
        p.data.normal_(0, 0.3)
    x = torch.randn(2, 2, 4, 4)
    z1, _ = layer(x, torch.randn(2, 3, 4, 4))
    z2, _ = layer(x, torch.randn(2, 3, 4, 4))
    assert not torch.allclose(z1, z2)
    with pytest.raises(ConfigError):
        ConvAffineCoupling(1, "channel")
