"""MADE masks, MAF's one-pass density and sequential sampling, IAF's one-pass sampling."""

import pytest
import torch

from cnf.distributions import Density, StandardNormal
from cnf.errors import ConfigError, ShapeError
from cnf.flows.autoregressive import IAF, MADE, MAF, MaskedAffineAutoregressive


@pytest.mark.parametrize("feature_major", [False, True])
def test_made_outputs_depend_only_on_preceding_features(feature_major):
    torch.manual_seed(0)
    order = torch.tensor([3, 0, 4, 1, 2])
    # tanh: no dead ReLU units that could hide a connection at the evaluation point
    made = MADE(5, 3, hidden=(16, 16), order=order, act="tanh", feature_major=feature_major).double()
    jac = torch.autograd.functional.jacobian(lambda v: made(v[None])[0], torch.randn(5).double())
    p = jac.reshape(5, 3, 5) if feature_major else jac.reshape(3, 5, 5).transpose(0, 1)
    for i in range(5):
        for j in range(5):
            dep = p[i, :, j].abs().max() > 0
            assert bool(dep) == bool(order[j] < order[i]), (i, j)


def test_made_parameter_count_matches_a_dense_mlp():
    # 5 layers of MADE 2->64->64->4: the parameter count zuko 1.6 reports for MAF(2, 5)
    flow = MAF(2, num_transforms=5, hidden=(64, 64))
    assert sum(p.numel() for p in flow.parameters()) == 23060


def _count_made_calls(flow):
    calls = []
    for m in flow.modules():
        if isinstance(m, MADE):
            m.register_forward_hook(lambda *a: calls.append(1))
    return calls


def test_maf_density_is_one_pass_and_sampling_is_sequential_and_exact():
    torch.manual_seed(0)
    dim = 16
    flow = MAF(dim, num_transforms=3, hidden=(32, 32)).double()
    calls = _count_made_calls(flow)
    x = torch.randn(64, dim, dtype=torch.float64)
    z, ld = flow(x)
    assert len(calls) == 3  # one MADE pass per layer
    calls.clear()
    x_rec, ld_inv = flow.inverse(z)
    assert len(calls) == 3 * dim
    torch.testing.assert_close(x_rec, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ld_inv, -ld, atol=1e-10, rtol=0)


def test_iaf_samples_in_one_pass_with_a_context():
    torch.manual_seed(0)
    iaf = IAF(8, num_transforms=3, hidden=(32, 32), context_dim=5)
    calls = _count_made_calls(iaf)
    q = Density(iaf, StandardNormal(8))
    h = torch.randn(32, 5)
    x, log_q = q.sample_and_log_prob(32, context=h)
    assert len(calls) == 3
    torch.testing.assert_close(q.log_prob(x, context=h), log_q, atol=1e-4, rtol=1e-4)
    # the context changes the map
    z = torch.randn(1, 8).expand(2, 8)
    out, _ = iaf.inverse(z, torch.randn(2, 5))
    assert (out[0] - out[1]).abs().max() > 1e-4
    with pytest.raises(ShapeError, match="context"):
        iaf.inverse(z)


def test_errors():
    with pytest.raises(ConfigError, match="dim >= 2"):
        MAF(1)
    with pytest.raises(ConfigError, match="permutation"):
        MADE(3, 2, order=[0, 0, 1])
    with pytest.raises(ShapeError, match=r"\[batch, 3\]"):
        MaskedAffineAutoregressive(3)(torch.randn(4, 2))


def test_blockwise_evaluation_matches_one_block(monkeypatch):
    """Without gradients the flows run in row blocks (cache-friendly); results must agree."""
    import cnf.numerics as ar
    from cnf.flows.spline import NSF

    torch.manual_seed(0)
    for flow in (MAF(3, 2, (16, 16), context_dim=2), NSF(3, 2, bins=4, hidden=(16, 16), context_dim=2),
                 NSF(3, 2, bins=4, hidden=(16,), autoregressive=False, context_dim=2)):
        x, c = torch.randn(37, 3), torch.randn(37, 2)
        z_ref, ld_ref = flow(x, c)
        x_ref, _ = flow.inverse(z_ref.detach(), c)
        monkeypatch.setattr(ar, "EVAL_BLOCK", 8)
        with torch.no_grad():
            z, ld = flow(x, c)
            x_back, _ = flow.inverse(z, c)
        monkeypatch.setattr(ar, "EVAL_BLOCK", 4096)
        torch.testing.assert_close(z, z_ref.detach())
        torch.testing.assert_close(ld, ld_ref.detach())
        torch.testing.assert_close(x_back, x_ref.detach())


def test_maf_equals_zuko_maf_given_the_same_weights():
    """An independent reference: zuko 1.6's MAF (the `bench` extra; skipped without it) with
    its weights copied into ours gives the same log-density (measured: bit-identical)."""
    zuko = pytest.importorskip("zuko")
    torch.manual_seed(0)
    dim = 3
    theirs = zuko.flows.MAF(dim, transforms=3, hidden_features=(16, 16))
    ours = Density(MAF(dim, num_transforms=3, hidden=(16, 16)), StandardNormal(dim))
    for layer, zt in zip(ours.flow.flows, theirs.transform.transforms):
        made = layer.made
        zlin = [m for m in zt.hyper if hasattr(m, "mask")]
        # zuko's output rows are feature-major (i·2 + k), ours parameter-major (k·D + i)
        perm = torch.tensor([i * 2 + k for k in range(2) for i in range(dim)])
        for n, (w, b, zl) in enumerate(zip(made.weights, made.biases, zlin)):
            zw, zb = zl.weight * zl.mask, zl.bias
            if n == made.num_layers - 1:
                zw, zb = zw[perm], zb[perm]
            with torch.no_grad():
                w.copy_(zw)
                b.copy_(zb)
    x = 2 * torch.randn(256, dim)
    with torch.no_grad():
        torch.testing.assert_close(ours.log_prob(x), theirs().log_prob(x), atol=1e-5, rtol=1e-5)
