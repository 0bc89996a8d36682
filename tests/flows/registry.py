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

from cnf.flows.autoregressive import IAF, MAF, MaskedAffineAutoregressive
from cnf.flows.base import Chain, Flow, Inverse
from cnf.flows.continuous import CNF, FFJORD
from cnf.flows.continuous_image import FFJORDMultiscale, ImageCNF
from cnf.flows.coupling import (
    AffineCoupling,
    ImageAffineCoupling,
    RealNVP,
    RealNVPImage,
    alternating_masks,
)
from cnf.flows.elementwise import ElementwiseAffine, LeakyReLU, Logit, PiecewiseLinear, Sigmoid
from cnf.flows.glow import Glow, InvertibleConv1x1
from cnf.flows.linear import LULinear, RandomPermutation, Reverse
from cnf.flows.multiscale import multiscale
from cnf.flows.nice import NICE, AdditiveCoupling, DiagonalScaling
from cnf.flows.normalization import ActNorm, MovingBatchNorm
from cnf.flows.planar import Planar, PlanarFlow
from cnf.flows.radial import Radial, RadialFlow
from cnf.flows.residual import (
    ConvResidualFlow,
    IResNet,
    ResidualBlock,
    ResidualFlow,
    lipschitz_mlp,
)
from cnf.flows.spline import NSF, RQSAutoregressive, RQSCoupling
from cnf.flows.sylvester import Sylvester
from cnf.ode import SolverConfig

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
    # contract tests (function names in test_contract.py) too slow for `make test-fast` on
    # this case: marked slow, so they run in `make test` only
    slow: tuple[str, ...] = ()


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
_TIGHT = dict(hidden=(16, 16), solver=SolverConfig(rtol=1e-10, atol=1e-10, adjoint=False))


def _cnf(shape):
    return perturb(CNF(shape[0], T=0.5, **_TIGHT), scale=0.2)


def _cnf_hutch_T(shape):
    return perturb(CNF(shape[0], T=0.4, train_T=True, divergence="hutchinson",
                       probe="rademacher", layer_type="concat", act="softplus",
                       divergence_impl="autograd", **_TIGHT), scale=0.2)


def _ffjord(shape):
    return perturb(FFJORD(shape[0], num_blocks=2, norm="batchnorm", T=0.3, **_TIGHT), scale=0.2)


_TIGHT_IMAGE = {**_TIGHT, "hidden": (8,)}


def _image_cnf(shape):
    # concatsquash conv layers, tanh, Hutchinson in training and the autograd trace
    return perturb(ImageCNF(shape, layer_type="concatsquash", act="tanh", T=0.4, train_T=True,
                            divergence="hutchinson", probe="rademacher",
                            divergence_impl="autograd", **_TIGHT_IMAGE), scale=0.2)


def _ffjord_multiscale(shape):
    # FFJORD's image model (concat conv layers, softplus, forward-mode exact trace); T and
    # the perturbation keep the brute-force Jacobians cheap (log-dets still ~1, |z - x| ~1)
    return perturb(FFJORDMultiscale(shape, scales=2, blocks_per_scale=1, T=0.25,
                                    **_TIGHT_IMAGE), scale=0.15)


def _moving_bn(shape):
    return perturb(MovingBatchNorm(shape[0]))


def _inverse(shape):
    return Inverse(_realnvp(shape))


def _conv_coupling(mask):
    from cnf.flows.image_coupling import ConvAffineCoupling

    return lambda shape: perturb(ConvAffineCoupling(shape[0], mask, parity=1, hidden=8), 0.1)


class _ImageContext(Flow):
    """Test wrapper: a fixed image-shaped context (the same for every row) for couplings
    conditioned pixel by pixel."""

    def __init__(self, flow, shape, channels=2):
        super().__init__()
        self.flow = flow
        g = torch.Generator().manual_seed(7)
        self.register_buffer("ctx", torch.randn(1, channels, *shape[1:], generator=g))

    def forward(self, x, context=None):
        return self.flow(x, self.ctx.to(x).expand(x.shape[0], -1, -1, -1))

    def inverse(self, z, context=None):
        return self.flow.inverse(z, self.ctx.to(z).expand(z.shape[0], -1, -1, -1))


def _conv_coupling_context(shape):
    from cnf.flows.image_coupling import ConvAffineCoupling

    return perturb(_ImageContext(ConvAffineCoupling(shape[0], "checkerboard", hidden=8,
                                                    context_channels=2), shape), 0.1)


def _unit_inputs(n, shape):
    """Data in (0, 1), away from the ends (for Logit)."""
    return 0.05 + 0.9 * torch.rand(n, *shape, dtype=torch.float64)


def _wide_inputs(n, shape):
    """Standard normal scaled by 2.5: a good share of entries beyond a spline bound of 2."""
    return 2.5 * torch.randn(n, *shape, dtype=torch.float64)


def _leaky_relu_chain(shape):
    # leaky ReLU has no parameters; chain it with an affine map so the harness sees both signs
    return perturb(Chain([ElementwiseAffine(shape), LeakyReLU(0.3), ElementwiseAffine(shape)]))


def _planar(shape):
    return perturb(PlanarFlow(shape[0], num_layers=4), scale=0.8)


def _radial(shape):
    return perturb(RadialFlow(shape[0], num_layers=4), scale=0.8)


class _Conditional(Flow):
    """Test wrapper: feeds a fixed context vector (the same for every row, so the
    brute-force Jacobian of one row sees what the batch saw) through the conditional path.
    That different contexts give different maps is tested per family."""

    def __init__(self, flow, context_dim=3, learn=False):
        super().__init__()
        self.flow = flow
        g = torch.Generator().manual_seed(7)
        ctx = torch.randn(1, context_dim, generator=g)
        if learn:  # fully amortized flows: the context is the parameter (an encoder's output)
            self.ctx = torch.nn.Parameter(ctx)
        else:
            self.register_buffer("ctx", ctx)

    def forward(self, x, context=None):
        return self.flow(x, self.ctx.expand(x.shape[0], -1))

    def inverse(self, z, context=None):
        return self.flow.inverse(z, self.ctx.expand(z.shape[0], -1))


IMAGE_SHAPES = ((2, 4, 4),)

CASES: dict[str, Case] = {
    "affine_coupling": Case(_coupling),
    "realnvp": Case(_realnvp),
    "realnvp_conditional": Case(
        lambda s: perturb(_Conditional(RealNVP(s[0], num_layers=3, hidden=16, context_dim=3)))),
    "chain": Case(_chain),
    "inverse": Case(_inverse),
    "actnorm": Case(_actnorm, shapes=((2,), (3,), (2, 3, 3)), inputs=_shifted_inputs),
    "multiscale": Case(_multiscale, shapes=((1, 4, 4), (2, 4, 4))),
    "iresnet_block": Case(lambda s: perturb(ResidualBlock(lipschitz_mlp(s[0], 16, coeff=0.9, act="elu"), "series"))),
    "resflow_block": Case(lambda s: perturb(ResidualBlock(lipschitz_mlp(s[0], 16, coeff=0.97), "roulette"))),
    "iresnet": Case(lambda s: perturb(IResNet(s[0], num_blocks=2, hidden=16)), inputs=_shifted_inputs),
    "resflow": Case(lambda s: perturb(ResidualFlow(s[0], num_blocks=2, hidden=16)), inputs=_shifted_inputs),
    "conv_resflow": Case(lambda s: perturb(ConvResidualFlow(s, num_scales=2, blocks_per_scale=1, hidden=8)), shapes=((1, 4, 4), (2, 4, 4))),
    "conv_coupling_checkerboard": Case(_conv_coupling("checkerboard"), shapes=((1, 4, 4), (2, 3, 3))),
    "conv_coupling_channel": Case(_conv_coupling("channel"), shapes=((2, 3, 3), (3, 2, 2))),
    "conv_coupling_image_context": Case(_conv_coupling_context, shapes=((1, 4, 4), (2, 3, 3))),
    "moving_batchnorm": Case(_moving_bn, inputs=_shifted_inputs),
    "cnf": Case(_cnf, shapes=((2,), (3,))),
    "cnf_hutchinson_learned_T": Case(_cnf_hutch_T, shapes=((2,),)),
    "ffjord": Case(_ffjord, shapes=((2,), (3,)), inputs=_shifted_inputs),
    "image_cnf": Case(_image_cnf, shapes=((2, 2, 2),)),
    "ffjord_multiscale": Case(_ffjord_multiscale, shapes=((1, 4, 4), (2, 4, 4)),
                              # brute-force Jacobian of a 32-D solve: 10 s at load 3.7
                              slow=("test_logdet_matches_brute_force_jacobian",)),
    # elementwise
    "elementwise_affine": Case(lambda s: perturb(ElementwiseAffine(s)), shapes=((3,), (2, 3, 3))),
    "leaky_relu": Case(_leaky_relu_chain),
    "piecewise_linear": Case(lambda s: perturb(PiecewiseLinear(s, bins=5, bound=2.0), scale=1.0),
                             inputs=_wide_inputs),
    # Logit has no parameters; the affine map after it gives the gradient test something to check
    "logit": Case(lambda s: perturb(Chain([Logit(alpha=0.05), ElementwiseAffine(s)])),
                  shapes=((2,), (1, 2, 2)), inputs=_unit_inputs),
    "sigmoid": Case(lambda s: Chain([ElementwiseAffine(s), Sigmoid()])),
    # linear
    "lu_linear": Case(lambda s: perturb(LULinear(s[0]))),
    "permutations": Case(lambda s: perturb(Chain([RandomPermutation(s[0], seed=3),
                                                  ElementwiseAffine(s), Reverse(s[0])]))),
    # planar / radial (numerical or closed-form inverses in float64)
    "planar": Case(_planar, inverse_atol=1e-9),
    "radial": Case(_radial),
    "planar_amortized": Case(lambda s: perturb(_Conditional(Planar(s[0], context_dim=3)), 0.8),
                             inverse_atol=1e-9),
    "radial_amortized": Case(lambda s: perturb(_Conditional(Radial(s[0], context_dim=3)), 0.8)),
    # fully amortized: the context is every parameter (VAE posteriors)
    "planar_fully_amortized": Case(
        lambda s: _Conditional(Planar(s[0], amortized=True), 2 * s[0] + 1, True), inverse_atol=1e-9),
    "radial_fully_amortized": Case(lambda s: _Conditional(Radial(s[0], amortized=True), s[0] + 2, True)),
    "sylvester_orthogonal": Case(
        lambda s: _Conditional(Sylvester(s[0]), Sylvester(s[0]).param_dim, True), inverse_atol=1e-9),
    "sylvester_householder": Case(
        lambda s: _Conditional(Sylvester(s[0], variant="householder", num_householder=2),
                               Sylvester(s[0], variant="householder", num_householder=2).param_dim,
                               True),
        inverse_atol=1e-9),
    # NICE
    "volume_preserving_additive_coupling": Case(
        lambda s: perturb(AdditiveCoupling(s[0], alternating_masks(s[0], 1)[0], hidden=16))),
    "nice": Case(lambda s: perturb(NICE(s[0], num_layers=4, hidden=16))),
    "diagonal_scaling": Case(lambda s: perturb(DiagonalScaling(s[0]))),
    # autoregressive
    "maf_layer": Case(lambda s: perturb(MaskedAffineAutoregressive(s[0], hidden=(16, 16)))),
    "maf": Case(lambda s: perturb(MAF(s[0], num_transforms=3, hidden=(16, 16)))),
    "iaf": Case(lambda s: perturb(IAF(s[0], num_transforms=3, hidden=(16, 16)))),
    "iaf_conditional": Case(lambda s: perturb(_Conditional(IAF(s[0], 2, (16, 16), context_dim=3)))),
    "iaf_gated_conditional": Case(lambda s: perturb(_Conditional(
        IAF(s[0], 2, (16, 16), context_dim=3, act="elu", gated=True)))),
    "maf_conditional": Case(lambda s: perturb(_Conditional(MAF(s[0], 2, (16, 16), context_dim=3)))),
    # neural spline flows; bound 2 so the wide inputs exercise the linear tails too
    "nsf_autoregressive_layer": Case(
        lambda s: perturb(RQSAutoregressive(s[0], bins=6, bound=2.0, hidden=(16, 16))),
        inputs=_wide_inputs),
    "nsf_autoregressive": Case(
        lambda s: perturb(NSF(s[0], num_transforms=3, bins=6, bound=2.0, hidden=(16, 16))),
        inputs=_wide_inputs),
    "nsf_coupling": Case(
        lambda s: perturb(NSF(s[0], num_transforms=3, bins=6, bound=2.0, hidden=(16,),
                              autoregressive=False)),
        inputs=_wide_inputs),
    "nsf_conditional": Case(
        lambda s: perturb(_Conditional(Chain([
            RQSAutoregressive(s[0], bins=4, bound=2.0, hidden=(16, 16), context_dim=3),
            RQSCoupling(s[0], alternating_masks(s[0], 1)[0], bins=4, bound=2.0, hidden=16,
                        context_dim=3)]))),
        inputs=_wide_inputs),
    # images
    "checkerboard_coupling": Case(
        lambda s: perturb(ImageAffineCoupling(s[0], "checkerboard", hidden=8), 0.1),
        shapes=IMAGE_SHAPES),
    "channel_coupling": Case(
        lambda s: perturb(ImageAffineCoupling(s[0], "channel", parity=1, hidden=8, scale="sigmoid"), 0.1),
        shapes=IMAGE_SHAPES),
    "realnvp_image": Case(lambda s: perturb(RealNVPImage(s, scales=2, hidden=8), 0.05),
                          shapes=((1, 4, 4), (2, 4, 4))),
    "invertible_conv1x1": Case(lambda s: perturb(InvertibleConv1x1(s[0])), shapes=IMAGE_SHAPES),
    "glow_image": Case(lambda s: perturb(Glow(s, scales=2, steps=2, hidden=8), 0.05),
                       shapes=IMAGE_SHAPES, inputs=_shifted_inputs),
    "glow_vector": Case(lambda s: perturb(Glow(s[0], steps=3, hidden=16)), inputs=_shifted_inputs),
}

# Flow++ (logistic-mixture CDF couplings; bisection inverse to 1e-12 in float64 + a Newton step)
def _flowpp(shape):
    from cnf.flows.flowpp import FlowPP

    return perturb(FlowPP(shape[0], num_layers=3, components=3, hidden=16, actnorm=True), 0.3)


def _flowpp_image(mask):
    from cnf.flows.flowpp import ImageMixtureLogisticCoupling

    return lambda s: perturb(ImageMixtureLogisticCoupling(s[0], mask, parity=1, components=3,
                                                          hidden=8), 0.1)


CASES["flowpp"] = Case(_flowpp, inputs=_wide_inputs, inverse_atol=1e-9)
CASES["flowpp_checkerboard"] = Case(_flowpp_image("checkerboard"), shapes=((1, 4, 4), (2, 3, 3)),
                                    inverse_atol=1e-9)
CASES["flowpp_channel"] = Case(_flowpp_image("channel"), shapes=IMAGE_SHAPES, inverse_atol=1e-9)
CASES["flowpp_image"] = Case(lambda s: perturb(__import__("cnf.flows.flowpp", fromlist=["x"])
                                               .FlowPPImage(s, scales=2, components=2, hidden=8), 0.05),
                             shapes=((1, 4, 4),), inputs=_shifted_inputs, inverse_atol=1e-9)

# Hamiltonian flow with a learned potential on (z, ρ): volume preserving (log-det exactly 0,
# hence the "volume_preserving" prefix the harness knows), also with the force limited
# (max_force 0.3: about half of these inputs' kicks are limited), and with tempering
# (log-det ≠ 0)
def _hamiltonian(tempering, max_force=None):
    from cnf.flows.hamiltonian import HamiltonianFlow

    return lambda s: perturb(HamiltonianFlow(s[0], steps=3, step_size=0.3, tempering=tempering,
                                             hidden=16, max_force=max_force), 0.3)


CASES["volume_preserving_hamiltonian"] = Case(_hamiltonian(False), shapes=((2,), (4,)))
CASES["volume_preserving_hamiltonian_force_limited"] = Case(_hamiltonian(False, 0.3),
                                                            shapes=((2,), (4,)))
CASES["hamiltonian_tempered"] = Case(_hamiltonian(True), shapes=((2,), (4,)))


def _hamiltonian_stack(shape):
    from cnf.flows.hamiltonian import HamiltonianStack

    return perturb(HamiltonianStack(shape[0], blocks=2, steps=2, step_size=0.3, hidden=16), 0.2)


CASES["hamiltonian_stack"] = Case(_hamiltonian_stack, shapes=((2,), (4,)))
