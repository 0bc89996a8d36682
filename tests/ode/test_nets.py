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


def _fused_and_layerwise(net, t, z, v, context=None):
    """Values and gradients (w.r.t. t, z, context and every parameter) of a random linear
    functional of ``(f, J v)``, from the fused pass and from the layer-by-layer one."""
    torch.manual_seed(1)
    inputs = [t, z] + ([context] if context is not None else []) + list(net.parameters())
    out = []
    for fn in (net.forward_jvp, net.forward_jvp_layerwise):
        f, jv = fn(t, z, v, context)
        if not out:
            a, b = torch.randn_like(f), torch.randn_like(jv)
        grads = torch.autograd.grad((f * a).sum() + (jv * b).sum(), inputs, allow_unused=True)
        out.append((f, jv, grads))
    return out


@pytest.mark.parametrize("layer_type", sorted(LAYER_TYPES))
@pytest.mark.parametrize("act", ["tanh", "softplus", "swish", "elu", "relu"])
def test_fused_jvp_equals_layerwise_with_gradients(layer_type, act):
    # the fused node's written-out backward against autograd through the layer-wise pass
    torch.manual_seed(0)
    net = ODENet(3, hidden=(8, 5), layer_type=layer_type, act=act).double()
    assert net.fused_jvp
    t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    for v in (torch.eye(3, dtype=torch.float64).unsqueeze(1),     # the exact-trace basis
              torch.randn(2, 4, 3, dtype=torch.float64)):          # Hutchinson probes
        (f1, j1, g1), (f2, j2, g2) = _fused_and_layerwise(net, t, z, v)
        torch.testing.assert_close(f1, f2)
        torch.testing.assert_close(j1, j2)
        for x, y in zip(g1, g2):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y)


def test_fused_jvp_with_context_equals_layerwise():
    torch.manual_seed(0)
    net = ODENet(2, hidden=(6, 6), context_dim=3).double()
    t = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    z = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    c = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    (f1, j1, g1), (f2, j2, g2) = _fused_and_layerwise(net, t, z, torch.eye(2).double()[:, None], c)
    torch.testing.assert_close(j1, j2)
    for x, y in zip(g1, g2):
        torch.testing.assert_close(x, y)
    assert g1[2].abs().sum() > 0, "the gradient reaches the context"


@pytest.mark.parametrize("act", ["tanh", "softplus", "swish"])
def test_fused_jvp_backward_passes_gradcheck(act):
    # finite differences of the exact trace and the field, in float64, w.r.t. z and t
    torch.manual_seed(0)
    net = ODENet(2, hidden=(5, 4), act=act).double()
    basis = torch.eye(2, dtype=torch.float64).unsqueeze(1)

    def trace_and_field(t, z):
        f, jv = net.forward_jvp(t, z, basis)
        return f, jv.diagonal(dim1=0, dim2=2).sum(-1)

    t = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(trace_and_field, (t, z))


def test_fused_trace_gradient_matches_brute_force_jacobian():
    # d tr(J)/dz from the fused node against the trace of the brute-force float64 Jacobian
    torch.manual_seed(0)
    net = ODENet(2, hidden=(7, 7, 7)).double()
    t = torch.tensor(0.25, dtype=torch.float64)
    z = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    _, jv = net.forward_jvp(t, z, torch.eye(2, dtype=torch.float64).unsqueeze(1))
    (g_fused,) = torch.autograd.grad(jv.diagonal(dim1=0, dim2=2).sum(), z)

    def trace(x):  # one sample's exact trace by the brute-force Jacobian
        return torch.autograd.functional.jacobian(lambda u: net(t, u[None])[0], x,
                                                  create_graph=True).trace()

    g_brute = torch.stack([torch.autograd.grad(trace(z[b]), z)[0][b] for b in range(3)])
    torch.testing.assert_close(g_fused, g_brute)


@pytest.mark.parametrize("layer_type", ["concatsquash", "squash", "ignore"])
@pytest.mark.parametrize("act", ["tanh", "softplus", "elu"])
def test_jvp_vjp_equals_autograd(layer_type, act):
    # the adjoint's evaluation without autograd: value, tangents and the gradients w.r.t.
    # t, z and every parameter (parameters() order) against autograd, float64
    torch.manual_seed(0)
    net = ODENet(3, hidden=(8, 5), layer_type=layer_type, act=act).double()
    assert net.supports_vjp
    t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 4, 3, dtype=torch.float64)
    gf, gjv = torch.randn(4, 3, dtype=torch.float64), torch.randn(2, 4, 3, dtype=torch.float64)
    f, jv, gt, gz, grads = net.jvp_vjp(t.detach(), z.detach(), v, gf, gjv)
    f_ref, jv_ref = net.forward_jvp_layerwise(t, z, v)
    ref = torch.autograd.grad((f_ref * gf).sum() + (jv_ref * gjv).sum(),
                              [t, z, *net.parameters()], allow_unused=True)
    torch.testing.assert_close(f, f_ref.detach())
    torch.testing.assert_close(jv, jv_ref.detach())
    torch.testing.assert_close(gt, ref[0] if ref[0] is not None else torch.zeros_like(gt))
    torch.testing.assert_close(gz, ref[1])
    assert len(grads) == len(list(net.parameters()))
    for a, b in zip(grads, ref[2:]):
        torch.testing.assert_close(a, b)


def test_jvp_vjp_refuses_layers_it_cannot_serve():
    assert not ODENet(2, layer_type="concat").supports_vjp
    assert not ODENet(2, context_dim=1).supports_vjp
    with pytest.raises(ConfigError, match="jvp_vjp"):
        ODENet(2, layer_type="hyper").jvp_vjp(torch.tensor(0.1), torch.randn(3, 2),
                                              torch.eye(2)[:, None], torch.zeros(3, 2),
                                              torch.zeros(2, 3, 2))
