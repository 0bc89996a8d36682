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
from cnf.flows.continuous import CNF, FFJORD
from cnf.flows.coupling import AffineCoupling, RealNVP, alternating_masks
from cnf.flows.multiscale import multiscale
from cnf.flows.normalization import ActNorm, MovingBatchNorm
from cnf.flows.residual import (
    ConvResidualFlow,
    IResNet,
    ResidualBlock,
    ResidualFlow,
    lipschitz_mlp,
)

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


# CNFs: float64, dopri5 at rtol = atol = 1e-10 and direct backprop, so the solved map is
# accurate to ~1e-9 and its autograd Jacobian is the Jacobian of the solver's map
_TIGHT = dict(hidden=(16, 16), rtol=1e-10, atol=1e-10, adjoint=False, eval_solver="dopri5")


def _cnf(shape):
    return perturb(CNF(shape[0], T=0.5, **_TIGHT), scale=0.2)


def _cnf_hutch_T(shape):
    return perturb(CNF(shape[0], T=0.4, train_T=True, divergence="hutchinson",
                       probe="rademacher", layer_type="concat", act="softplus",
                       divergence_impl="autograd", **_TIGHT), scale=0.2)


def _ffjord(shape):
    return perturb(FFJORD(shape[0], num_blocks=2, norm="batchnorm", T=0.3, **_TIGHT), scale=0.2)


def _moving_bn(shape):
    return perturb(MovingBatchNorm(shape[0]))


def _inverse(shape):
    return Inverse(_realnvp(shape))


CASES: dict[str, Case] = {
    "affine_coupling": Case(_coupling),
    "realnvp": Case(_realnvp),
    "chain": Case(_chain),
    "inverse": Case(_inverse),
    "actnorm": Case(_actnorm, shapes=((2,), (3,), (2, 3, 3)), inputs=_shifted_inputs),
    "multiscale": Case(_multiscale, shapes=((1, 4, 4), (2, 4, 4))),
    "iresnet_block": Case(lambda s: perturb(ResidualBlock(lipschitz_mlp(s[0], 16, coeff=0.9, act="elu"), "series"))),
    "resflow_block": Case(lambda s: perturb(ResidualBlock(lipschitz_mlp(s[0], 16, coeff=0.97), "roulette"))),
    "iresnet": Case(lambda s: perturb(IResNet(s[0], num_blocks=2, hidden=16)), inputs=_shifted_inputs),
    "resflow": Case(lambda s: perturb(ResidualFlow(s[0], num_blocks=2, hidden=16)), inputs=_shifted_inputs),
    "conv_resflow": Case(lambda s: perturb(ConvResidualFlow(s, num_scales=2, blocks_per_scale=1, hidden=8)), shapes=((1, 4, 4), (2, 4, 4))),
    "moving_batchnorm": Case(_moving_bn, inputs=_shifted_inputs),
    "cnf": Case(_cnf, shapes=((2,), (3,))),
    "cnf_hutchinson_learned_T": Case(_cnf_hutch_T, shapes=((2,),)),
    "ffjord": Case(_ffjord, shapes=((2,), (3,)), inputs=_shifted_inputs),
}
