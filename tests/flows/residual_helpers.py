"""Trained-like residual blocks for the numerics tests of cnf.flows.{lipschitz,logdet,residual}.

A freshly initialized block has a tiny Jacobian (‖J‖ ≈ 0.06 measured), which would let a wrong
estimator pass. These helpers *train* ``g`` for a few hundred Adam steps to reproduce a dense,
rotation-like linear map ``A = gain · Q`` (Q random orthogonal) on standard-normal inputs, so
``J ≈ A`` on the data: ‖J‖ ≈ 0.81-0.87 at gain 0.8 (measured), larger than the Jacobians of the
trained toy flows in the i-ResNet anchors study (max 0.71-0.75), and the soft spectral
normalization is active (several singular values at the cap).
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import Tensor

from cnf.flows.logdet import jacobian
from cnf.flows.residual import ResidualBlock, lipschitz_mlp


def trained_net(dim: int, coeff: float = 0.97, act: str = "elu", hidden: int = 32,
                depth: int = 1, steps: int = 200, gain: float = 0.8, seed: int = 0,
                dtype: torch.dtype = torch.float64, **power_kw) -> torch.nn.Module:
    """A fresh copy of the trained net (training runs once per argument set per session)."""
    key = (dim, coeff, act, hidden, depth, steps, gain, seed, dtype,
           tuple(sorted(power_kw.items())))
    return copy.deepcopy(_trained_net(*key))


@functools.cache
def _trained_net(dim, coeff, act, hidden, depth, steps, gain, seed, dtype, power_kw):
    power_kw = dict(power_kw)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    a = (gain * q).to(dtype)
    net = lipschitz_mlp(dim, hidden, depth, coeff, act, **power_kw).to(dtype)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.randn(256, dim, generator=g, dtype=torch.float64).to(dtype)
        loss = (net(x) - x @ a.T).pow(2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def trained_block(dim: int, estimator="exact", coeff: float = 0.97, **kw) -> ResidualBlock:
    net_kw = {k: kw.pop(k) for k in list(kw) if k in ("act", "hidden", "depth", "steps",
                                                       "gain", "seed", "dtype")}
    return ResidualBlock(trained_net(dim, coeff, **net_kw), estimator, **kw)


def exact_jacobian(net: torch.nn.Module, x: Tensor) -> Tensor:
    xg = x.detach().requires_grad_(True)
    with torch.enable_grad():
        return jacobian(net(xg), xg).detach()


def exact_logdet_of(net: torch.nn.Module, x: Tensor) -> Tensor:
    jac = exact_jacobian(net, x)
    eye = torch.eye(jac.shape[-1], dtype=jac.dtype)
    return torch.linalg.slogdet(eye + jac)[1]
