"""ConvODENet: forward-mode products equal autograd's, time conditioning per layer type."""

from __future__ import annotations

import pytest
import torch

from cnf.errors import ConfigError, ShapeError
from cnf.ode.conv import CONV_LAYER_TYPES, ConvODENet


def _net(layer_type, act="softplus", shape=(2, 3, 3)):
    torch.manual_seed(0)
    net = ConvODENet(shape, hidden=(5, 4), layer_type=layer_type, act=act).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return net


@pytest.mark.parametrize("layer_type", sorted(CONV_LAYER_TYPES))
@pytest.mark.parametrize("act", ["softplus", "tanh", "swish"])
def test_forward_jvp_matches_autograd_jacobian(layer_type, act):
    net = _net(layer_type, act)
    t = torch.tensor(0.37, dtype=torch.float64)
    z = torch.randn(3, 18, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: net(t, v), z)  # [B, D, B, D]
    full = torch.stack([jac[b, :, b, :] for b in range(3)])  # [B, D_out, D_in]
    # the basis broadcast over the batch (as the exact trace passes it) and per-sample tangents
    basis = torch.eye(18, dtype=torch.float64).unsqueeze(1)
    f, jv = net.forward_jvp(t, z, basis)
    torch.testing.assert_close(f, net(t, z), rtol=0, atol=1e-13)
    torch.testing.assert_close(jv.permute(1, 2, 0), full, rtol=0, atol=1e-12)
    v = torch.randn(2, 3, 18, dtype=torch.float64)
    _, jv = net.forward_jvp(t, z, v)
    torch.testing.assert_close(jv, torch.einsum("boi,kbi->kbo", full, v), rtol=0, atol=1e-12)


@pytest.mark.parametrize("layer_type,depends", [("ignore", False), ("concat", True),
                                                ("concatsquash", True)])
def test_time_conditioning(layer_type, depends):
    net = _net(layer_type)
    z = torch.randn(2, 18, dtype=torch.float64)
    f0 = net(torch.tensor(0.1, dtype=torch.float64), z)
    f1 = net(torch.tensor(0.9, dtype=torch.float64), z)
    assert (f0 - f1).abs().max() > 1e-3 if depends else torch.equal(f0, f1)


def test_convolution_is_local_and_shape_checked():
    """3×3 kernels, 3 layers: a pixel sees at most 3 pixels away (the receptive field)."""
    net = ConvODENet((1, 8, 8), hidden=(4, 4), layer_type="concat").double()
    z = torch.randn(1, 64, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: net(torch.tensor(0.5), v), z)[0, :, 0]
    jac = jac.reshape(8, 8, 8, 8)
    assert jac[0, 0, 3, 3].abs() > 0 and jac[0, 0, 4, 0].abs() == 0 and jac[0, 0, 0, 4].abs() == 0
    with pytest.raises(ShapeError, match=r"\[batch, 64\]"):
        net(torch.tensor(0.5), torch.randn(2, 1, 8, 8, dtype=torch.float64))
    with pytest.raises(ConfigError, match="odd"):
        ConvODENet((1, 8, 8), kernel=2)
    with pytest.raises(ConfigError, match="layer_type"):
        ConvODENet((1, 8, 8), layer_type="hyper")
    with pytest.raises(ConfigError, match=r"\(C, H, W\)"):
        ConvODENet((64,))
