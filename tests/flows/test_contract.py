"""The contract every flow keeps, checked for every entry of the registry.

- inverse(forward(x)) ≈ x and forward(inverse(z)) ≈ z
- log|det| equals a brute-force float64 Jacobian log|det|, in both directions
- forward and inverse log-dets cancel
- each sample's output depends only on its own input
- gradients reach every parameter
- a state_dict round trip into a fresh instance keeps the outputs
"""

from __future__ import annotations

import io

import pytest
import torch

from cnf.flows.base import exact_logdet

from .registry import CASES


def contract(test):
    """Parametrize ``test`` over every registered case and shape; the (case, test) pairs a
    case lists in ``Case.slow`` are marked slow."""
    params = [
        pytest.param(name, shape, id=f"{name}-{'x'.join(map(str, shape))}",
                     marks=(pytest.mark.slow,) if test.__name__ in case.slow else ())
        for name, case in CASES.items()
        for shape in case.shapes
    ]
    return pytest.mark.parametrize("name,shape", params)(test)


def make(name, shape):
    """Build the flow in float64, eval mode, exact log-det; run one data-dependent init pass."""
    case = CASES[name]
    torch.manual_seed(1)
    flow = case.build(shape).double()
    x = case.inputs(64, shape)
    with torch.no_grad():
        flow(x)  # data-dependent initialization (ActNorm), if any
    flow.eval()
    return case, flow


def brute_logdet(fn, x):
    """log|det J| per sample from a float64 autograd Jacobian of the flattened map.

    The batch goes through ``fn`` once and row k of every sample's Jacobian is the gradient
    of output k summed over the batch: that is each sample's own row because no sample sees
    another (test_samples_are_independent checks it for every case)."""
    x = x.detach().clone().requires_grad_(True)
    out = fn(x).reshape(len(x), -1)
    rows = []
    for k in range(out.shape[1]):
        (g,) = torch.autograd.grad(out[:, k].sum(), x, retain_graph=True, allow_unused=True)
        rows.append(torch.zeros_like(x) if g is None else g)
    jac = torch.stack([r.reshape(len(x), -1) for r in rows], 1)  # [batch, out, in]
    return torch.linalg.slogdet(jac)[1]


@contract
def test_invertible_both_ways(name, shape):
    case, flow = make(name, shape)
    x = case.inputs(16, shape)
    with torch.no_grad(), exact_logdet(flow):
        z, _ = flow(x)
        x_rec, _ = flow.inverse(z)
        z_rec, _ = flow(x_rec)
    assert torch.isfinite(z).all()
    torch.testing.assert_close(x_rec, x, atol=case.inverse_atol, rtol=0)
    torch.testing.assert_close(z_rec, z, atol=case.inverse_atol, rtol=0)
    # the flow must not be the identity, or these checks prove nothing
    assert (z - x).abs().max() > 1e-3


@contract
def test_logdet_matches_brute_force_jacobian(name, shape):
    case, flow = make(name, shape)
    x = case.inputs(4, shape)
    with exact_logdet(flow):
        z, logdet_fwd = flow(x)
        expected_fwd = brute_logdet(lambda v: flow(v)[0], x)
        torch.testing.assert_close(logdet_fwd.detach(), expected_fwd, atol=case.logdet_atol, rtol=1e-6)
        z = z.detach()
        x_back, logdet_inv = flow.inverse(z)
        expected_inv = brute_logdet(lambda v: flow.inverse(v)[0], z)
        torch.testing.assert_close(logdet_inv.detach(), expected_inv, atol=case.logdet_atol, rtol=1e-6)
    assert logdet_fwd.shape == (4,)
    # a trained-like flow is not volume preserving in general; guard against trivial zeros
    assert expected_fwd.abs().max() > 1e-4 or name.startswith("volume_preserving")


@contract
def test_forward_and_inverse_logdets_cancel(name, shape):
    case, flow = make(name, shape)
    x = case.inputs(16, shape)
    with torch.no_grad(), exact_logdet(flow):
        z, ld_f = flow(x)
        _, ld_i = flow.inverse(z)
    torch.testing.assert_close(ld_f + ld_i, torch.zeros_like(ld_f), atol=case.logdet_atol * 10, rtol=0)


@contract
def test_samples_are_independent(name, shape):
    """The Jacobian of the whole batch is block diagonal: no sample sees another.

    Each sample's output is projected on a random direction and differentiated: a dependence
    on another sample's input gives a non-zero gradient there with probability 1 (one
    backward pass per sample instead of one per output coordinate)."""
    case, flow = make(name, shape)
    x = case.inputs(3, shape)
    gen = torch.Generator().manual_seed(0)
    for fn in (lambda v: flow(v)[0], lambda v: flow.inverse(v)[0]):
        xr = x.detach().clone().requires_grad_(True)
        with exact_logdet(flow):
            out = fn(xr).reshape(3, -1)
        for i in range(3):
            w = torch.randn(out.shape[1], generator=gen, dtype=out.dtype)
            (g,) = torch.autograd.grad(out[i] @ w, xr, retain_graph=True, allow_unused=True)
            assert g is not None and g[i].abs().max() > 0, f"output {i} ignores its own input"
            for j in range(3):
                if i != j:
                    assert g[j].abs().max() == 0, f"output {i} depends on input {j}"
    # log-dets are per sample too
    with torch.no_grad(), exact_logdet(flow):
        _, ld_all = flow(x)
        _, ld_one = flow(x[1:2])
    torch.testing.assert_close(ld_all[1:2], ld_one, atol=case.logdet_atol, rtol=1e-6)


@contract
def test_gradients_reach_every_parameter(name, shape):
    case, flow = make(name, shape)
    flow.train()
    x = case.inputs(32, shape)
    z, logdet = flow(x)
    loss = (0.5 * z.pow(2).flatten(1).sum(1) - logdet).mean()
    loss.backward()
    missing = [n for n, p in flow.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().max() == 0)]
    assert not missing, f"no gradient reached {missing}"
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters() if p.grad is not None)


@contract
def test_state_dict_round_trip(name, shape):
    case, flow = make(name, shape)
    x = case.inputs(8, shape)
    buf = io.BytesIO()
    torch.save(flow.state_dict(), buf)
    buf.seek(0)
    torch.manual_seed(123)  # a fresh instance with different random parameters
    fresh = case.build(shape).double()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    fresh.eval()
    with torch.no_grad(), exact_logdet(flow), exact_logdet(fresh):
        z1, ld1 = flow(x)
        z2, ld2 = fresh(x)
    torch.testing.assert_close(z2, z1)
    torch.testing.assert_close(ld2, ld1)


def test_slow_marks_name_contract_tests():
    """A misspelt name in ``Case.slow`` would silently mark nothing."""
    tests = {n for n, v in globals().items() if n.startswith("test_") and callable(v)}
    for name, case in CASES.items():
        assert set(case.slow) <= tests, f"{name}: Case.slow names no test of {sorted(tests)}"
