"""The registry of flows the contract harness checks.

Every flow in cnf joins by one line in ``CASES``: a name, and a ``Case`` whose ``build``
takes an event shape and returns a flow in a "trained-like" state (parameters perturbed
away from an identity initialization, so a wrong log-det cannot hide behind zeros).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from cnf.flows.base import Chain, Flow, Inverse
from cnf.flows.coupling import AffineCoupling, RealNVP, alternating_masks
from cnf.flows.multiscale import multiscale
from cnf.flows.normalization import ActNorm

VECTOR_SHAPES = ((2,), (3,), (5,))


def perturb(flow: Flow, scale: float = 0.3, seed: int = 0) -> Flow:
    """Move every parameter by Gaussian noise so the flow is far from the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return flow


def standard_inputs(n: int, shape: tuple[int, ...]) -> Tensor:
    return torch.randn(n, *shape, dtype=torch.float64)


@dataclass
class Case:
    build: Callable[[tuple[int, ...]], Flow]
    shapes: tuple[tuple[int, ...], ...] = VECTOR_SHAPES
    # inputs on which the flow is defined (data side); latents come from forward(inputs)
    inputs: Callable[[int, tuple[int, ...]], Tensor] = standard_inputs
    inverse_atol: float = 1e-8
    logdet_atol: float = 1e-7
    # flows whose inverse is only computed to a tolerance may loosen inverse_atol
    extra: dict = field(default_factory=dict)


def _coupling(shape):
    return perturb(AffineCoupling(shape[0], alternating_masks(shape[0], 1)[0], hidden=16))


def _realnvp(shape):
    return perturb(RealNVP(shape[0], num_layers=4, hidden=16))


def _chain(shape):
    masks = alternating_masks(shape[0], 2)
    return perturb(Chain([AffineCoupling(shape[0], m, hidden=8) for m in masks]))


def _actnorm(shape):
    return ActNorm(shape[0])


def _shifted_inputs(n, shape):
    """Data far from standardized, so ActNorm's data-dependent init is not the identity."""
    return 3.0 * torch.randn(n, *shape, dtype=torch.float64) + 1.5


class _PixelAffine(Flow):
    """A test-only elementwise affine map with learnable per-entry scale, for image shapes."""

    def __init__(self, shape):
        super().__init__()
        self.log_scale = torch.nn.Parameter(0.3 * torch.randn(*shape))
        self.shift = torch.nn.Parameter(0.3 * torch.randn(*shape))

    def forward(self, x, context=None):
        return x * self.log_scale.exp() + self.shift, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z, context=None):
        return (z - self.shift) * (-self.log_scale).exp(), -self.log_scale.sum().expand(z.shape[0])


def _multiscale(shape):
    c, h, w = shape
    return multiscale([_PixelAffine((c, h, w)), _PixelAffine((2 * c, h // 2, w // 2)),
                       _PixelAffine((4 * c, h // 4, w // 4))])


def _inverse(shape):
    return Inverse(_realnvp(shape))


def _conv_coupling(mask):
    from cnf.flows.image_coupling import ConvAffineCoupling

    return lambda shape: perturb(ConvAffineCoupling(shape[0], mask, parity=1, hidden=8), 0.1)


def _multiscale_realnvp(shape):
    from cnf.flows.image_coupling import MultiscaleRealNVP

    return perturb(MultiscaleRealNVP(shape, scales=2, couplings=1, hidden=8), 0.1)


CASES: dict[str, Case] = {
    "affine_coupling": Case(_coupling),
    "realnvp": Case(_realnvp),
    "chain": Case(_chain),
    "inverse": Case(_inverse),
    "actnorm": Case(_actnorm, shapes=((2,), (3,), (2, 3, 3)), inputs=_shifted_inputs),
    "multiscale": Case(_multiscale, shapes=((1, 4, 4), (2, 4, 4))),
    "conv_coupling_checkerboard": Case(_conv_coupling("checkerboard"), shapes=((1, 4, 4), (2, 3, 3))),
    "conv_coupling_channel": Case(_conv_coupling("channel"), shapes=((2, 3, 3), (3, 2, 2))),
    "multiscale_realnvp": Case(_multiscale_realnvp, shapes=((1, 4, 4), (2, 4, 4)),
                               inputs=_shifted_inputs),
}
