"""Bijections with the one contract (``forward``: data -> latent, ``inverse``: latent -> data,
each returning ``(output, log|det|)`` per sample); one file per family.

Every public class is importable from here, so configs may write the short class path
(``class_path: cnf.flows.RealNVP``)::

    >>> from cnf.flows import RealNVP, Planar
    >>> z, logdet = RealNVP(2)(torch.randn(4, 2))
    >>> logdet.shape
    torch.Size([4])

Names load on first use (a config naming one flow does not import the ODE machinery of the
CNFs); a class of a module not listed below is found by its module's ``__all__``.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

_HOMES: dict[str, str] = {
    "AmortizedChain": "amortized",
    "MADE": "autoregressive", "AutoregressiveLayer": "autoregressive",
    "MaskedAffineAutoregressive": "autoregressive", "MAF": "autoregressive",
    "IAF": "autoregressive",
    "Flow": "base", "Chain": "base", "Inverse": "base", "Identity": "base",
    "CNF": "continuous", "FFJORD": "continuous",
    "ImageCNF": "continuous_image", "FFJORDMultiscale": "continuous_image",
    "AffineCoupling": "coupling", "RealNVP": "coupling", "ImageAffineCoupling": "coupling",
    "RealNVPImage": "coupling",
    "ElementwiseAffine": "elementwise", "LeakyReLU": "elementwise",
    "PiecewiseLinear": "elementwise", "Logit": "elementwise", "Sigmoid": "elementwise",
    "InvertibleConv1x1": "glow", "Glow": "glow",
    "ConvAffineCoupling": "image_coupling",
    "Permutation": "linear", "RandomPermutation": "linear", "Reverse": "linear",
    "LULinear": "linear",
    "SpectralNorm": "lipschitz", "SpectralLinear": "lipschitz", "SpectralConv2d": "lipschitz",
    "LipSwish": "lipschitz",
    "LogDetEstimator": "logdet", "ExactLogDet": "logdet", "SeriesLogDet": "logdet",
    "RouletteLogDet": "logdet",
    "Squeeze": "multiscale", "FactorOut": "multiscale",
    "MLP": "nets", "ConvNet": "nets",
    "AdditiveCoupling": "nice", "DiagonalScaling": "nice", "NICE": "nice",
    "ActNorm": "normalization", "MovingBatchNorm": "normalization",
    "Planar": "planar", "PlanarFlow": "planar",
    "Radial": "radial", "RadialFlow": "radial",
    "ResidualBlock": "residual", "IResNet": "residual", "ResidualFlow": "residual",
    "ConvResidualFlow": "residual",
    "RQSAutoregressive": "spline", "RQSCoupling": "spline", "NSF": "spline",
    "Sylvester": "sylvester",
}


def modules() -> list[str]:
    """The family modules of this package (short names)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def _find(name: str) -> str | None:
    for module in modules():
        if name in getattr(importlib.import_module(f"{__name__}.{module}"), "__all__", ()):
            return module
    return None


def __getattr__(name: str) -> Any:
    if name.startswith("_"):
        raise AttributeError(name)
    module = _HOMES.get(name) or _find(name)
    if module is None:
        raise AttributeError(f"module 'cnf.flows' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__all__ = sorted(_HOMES)
