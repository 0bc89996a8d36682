"""Fully amortized flows (Planar/Radial(amortized=True), Sylvester, AmortizedChain) and the
conditional IAF: the flow contract with per-sample parameters as context.

Round trips, log-dets against a float64 autograd Jacobian in both directions, cancellation,
per-sample independence and gradients into the context (which carries the encoder's output).
"""

from __future__ import annotations

import pytest
import torch

from cnf.errors import ConfigError, InverseError, ShapeError
from cnf.flows.amortized import AmortizedChain
from cnf.flows.autoregressive import IAF
from cnf.flows.planar import Planar
from cnf.flows.radial import Radial
from cnf.flows.sylvester import Sylvester

D = 4


def build(name):
    if name == "planar":
        return AmortizedChain([Planar(D, amortized=True) for _ in range(3)])
    if name == "radial":
        return AmortizedChain([Radial(D, amortized=True) for _ in range(3)])
    if name == "sylvester_orthogonal":
        return AmortizedChain([Sylvester(D, num_columns=3) for _ in range(2)])
    if name == "sylvester_householder":
        return AmortizedChain([Sylvester(D, variant="householder", num_householder=3)
                               for _ in range(2)])
    if name == "iaf":
        flow = IAF(D, num_transforms=2, hidden=(16, 16), context_dim=5, act="elu", gated=True)
        with torch.no_grad():  # move away from the initialization
            for p in flow.parameters():
                p.add_(0.5 * torch.randn_like(p))
        return torch.nn.ModuleList(list(flow.flows))
    raise KeyError(name)


NAMES = ["planar", "radial", "sylvester_orthogonal", "sylvester_householder", "iaf"]


class _Seq:
    """Apply a ModuleList of conditional flows as one (generative order)."""

    def __init__(self, flows):
        self.flows = flows

    def inverse(self, z, c):
        total = 0
        for f in self.flows:
            z, ld = f.inverse(z, c)
            total = total + ld
        return z, total

    def __call__(self, x, c):
        total = 0
        for f in reversed(self.flows):
            x, ld = f(x, c)
            total = total + ld
        return x, total


def make(name, n, seed=0):
    torch.manual_seed(seed)
    flow = build(name).double()
    cdim = 5 if name == "iaf" else flow.param_dim
    ctx = 1.0 * torch.randn(n, cdim, dtype=torch.float64)
    if isinstance(flow, torch.nn.ModuleList):
        flow = _Seq(flow)
    return flow, ctx


def brute(fn, x, ctx):
    out = []
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(
            lambda v, i=i: fn(v[None], ctx[i:i + 1])[0][0], x[i])
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


@pytest.mark.parametrize("name", NAMES)
def test_round_trip_and_logdets(name):
    flow, ctx = make(name, 6)
    z = torch.randn(6, D, dtype=torch.float64)
    x, ld_inv = flow.inverse(z, ctx)
    z_rec, ld_fwd = flow(x.detach(), ctx)
    assert (x - z).abs().max() > 1e-2
    torch.testing.assert_close(z_rec, z, atol=1e-9, rtol=0)
    torch.testing.assert_close(ld_inv + ld_fwd, torch.zeros(6, dtype=torch.float64), atol=1e-9, rtol=0)
    assert ld_inv.abs().max() > 1e-3
    torch.testing.assert_close(ld_inv, brute(flow.inverse, z, ctx), atol=1e-8, rtol=1e-7)
    torch.testing.assert_close(ld_fwd, brute(flow, x.detach(), ctx), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_samples_independent_and_gradients_reach_context(name):
    flow, ctx = make(name, 3)
    ctx.requires_grad_(True)
    z = torch.randn(3, D, dtype=torch.float64, requires_grad=True)
    x, ld = flow.inverse(z, ctx)
    jac = torch.autograd.functional.jacobian(lambda v: flow.inverse(v, ctx.detach())[0], z.detach())
    for i in range(3):
        for j in range(3):
            if i != j:
                assert jac[i, :, j].abs().max() == 0
    (x.sum() + ld.sum()).backward()
    assert torch.isfinite(ctx.grad).all() and (ctx.grad[:, :].abs().sum(1) > 0).all()


@pytest.mark.parametrize("flow", [Planar(D, amortized=True), Sylvester(D, num_columns=2)],
                         ids=["planar", "sylvester"])
def test_numerical_forward_has_implicit_gradients(flow):
    """d z / d context through the root finder's Newton step equals finite differences."""
    torch.manual_seed(3)
    flow = flow.double()
    ctx = torch.randn(1, flow.param_dim, dtype=torch.float64, requires_grad=True)
    x = torch.randn(1, D, dtype=torch.float64)

    def f(c):
        z, ld = flow(x, c)
        return z.sum() + ld.sum()

    assert torch.autograd.gradcheck(f, (ctx,), atol=1e-5, rtol=1e-4)


def test_errors():
    with pytest.raises(ShapeError, match="context"):
        Planar(2, amortized=True).inverse(torch.zeros(3, 2), torch.zeros(3, 4))
    with pytest.raises(ShapeError, match="context"):
        Radial(2, amortized=True)(torch.zeros(3, 2))
    with pytest.raises(ConfigError, match="context_dim"):
        Planar(2, context_dim=3, amortized=True)
    with pytest.raises(ConfigError):
        Sylvester(3, num_columns=4)
    with pytest.raises(ConfigError):
        Sylvester(3, variant="triangular")
    with pytest.raises(ShapeError):
        IAF(3, context_dim=2, gated=True)(torch.zeros(2, 3))


def test_amortized_layers_hold_no_parameters():
    assert not list(Planar(3, amortized=True).parameters())
    assert not list(Radial(3, amortized=True).parameters())
    assert not list(Sylvester(3).parameters())


def test_sylvester_inverse_is_tolerance_checked():
    """The shared root finder raises InverseError instead of returning an unconverged root."""
    torch.manual_seed(0)
    flow = Sylvester(D, num_columns=2, max_iter=1).double()
    params = 3 * torch.randn(4, flow.param_dim, dtype=torch.float64)
    x, _ = flow.inverse(torch.randn(4, D, dtype=torch.float64), params)
    with pytest.raises(InverseError, match="Sylvester.forward"):
        flow(x, params)
    z, _ = Sylvester(D, num_columns=2).double()(x, params)  # default cap: converges
    torch.testing.assert_close(Sylvester(D, num_columns=2).double().inverse(z, params)[0], x,
                               atol=1e-10, rtol=0)
