import pytest
import torch

from cnf.errors import ConfigError
from cnf.ode import LAYER_TYPES, ODENet


@pytest.mark.parametrize("layer_type", sorted(LAYER_TYPES))
@pytest.mark.parametrize("act", ["tanh", "softplus", "swish", "elu"])
def test_every_layer_type_and_activation(layer_type, act):
    net = ODENet(3, hidden=(8, 5), layer_type=layer_type, act=act)
    z = torch.randn(4, 3)
    out0 = net(torch.tensor(0.1), z)
    out1 = net(torch.tensor(0.7), z)
    assert out0.shape == (4, 3)
    if layer_type == "ignore":
        torch.testing.assert_close(out0, out1)
    else:
        assert (out0 - out1).abs().max() > 1e-6, "time must enter the dynamics"
    # rows are independent: one sample's output does not depend on another's input
    torch.testing.assert_close(net(torch.tensor(0.1), z[1:2]), out0[1:2])


def test_default_is_ffjords_toy_model():
    # FFJORD's toy model has 9,225 parameters: 9,224 in the ODE net plus sqrt(T)
    net = ODENet(2)
    assert sum(p.numel() for p in net.parameters()) == 9224
    assert len(net.layers) == 4 and net.layer_type == "concatsquash"


def test_concat_matches_explicit_concatenation():
    net = ODENet(2, hidden=(6,), layer_type="concat", act="tanh")
    t, z = torch.tensor(0.3), torch.randn(5, 2)
    h = z
    for i, layer in enumerate(net.layers):
        h = layer.linear(torch.cat([t.expand(h.shape[0], 1), h], 1))
        if i == 0:
            h = torch.tanh(h)
    torch.testing.assert_close(net(t, z), h)


def test_bad_names_raise_config_error():
    with pytest.raises(ConfigError, match="layer_type"):
        ODENet(2, layer_type="concat_v2")
    with pytest.raises(ConfigError, match="activation"):
        ODENet(2, act="sine")


@pytest.mark.parametrize("layer_type", sorted(LAYER_TYPES))
@pytest.mark.parametrize("act", ["tanh", "softplus", "swish", "elu", "relu"])
def test_forward_jvp_is_the_jacobian(layer_type, act):
    torch.manual_seed(0)
    net = ODENet(3, hidden=(8, 5), layer_type=layer_type, act=act).double()
    assert net.supports_jvp
    t = torch.tensor(0.4, dtype=torch.float64)
    z = torch.randn(4, 3, dtype=torch.float64)
    basis = torch.eye(3, dtype=torch.float64).unsqueeze(1)
    f, jv = net.forward_jvp(t, z, basis)
    torch.testing.assert_close(f, net(t, z))
    for b in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: net(t, v[None])[0], z[b])  # [out, in]
        torch.testing.assert_close(jv[:, b, :], jac.T)
    # arbitrary tangents [K, B, D]
    v = torch.randn(2, 4, 3, dtype=torch.float64)
    _, jv2 = net.forward_jvp(t, z, v)
    for b in range(4):
        jac = torch.autograd.functional.jacobian(lambda u: net(t, u[None])[0], z[b])
        torch.testing.assert_close(jv2[:, b, :], v[:, b, :] @ jac.T)


def test_unsupported_activation_has_no_jvp():
    net = ODENet(2, hidden=(4,), act="gelu")
    assert not net.supports_jvp
