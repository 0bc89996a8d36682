"""Base distributions and ``Density``: a flow pushed onto a base distribution.

``Density(flow, base)`` is what every LightningModule trains and evaluates::

    log p(x) = base.log_prob(z) + logabsdet,     (z, logabsdet) = flow.forward(x)
    x ~ p    <=>   x = flow.inverse(z)[0],  z ~ base (optionally at a temperature)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnf.errors import NonFiniteError, ShapeError
from cnf.flows.base import Flow, as_tensor_shape, sum_except_batch

__all__ = ["BaseDistribution", "StandardNormal", "StandardLogistic", "Density"]


class BaseDistribution(nn.Module):
    """A fixed, parameter-free distribution over events of ``event_shape``."""

    def __init__(self, shape: int | Sequence[int]):
        super().__init__()
        self.event_shape = as_tensor_shape(shape)
        # a buffer so the distribution follows the module's device and dtype
        self.register_buffer("_ref", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        """Log-density of ``z`` (``[B, *event_shape]``) summed over the event: ``[B]``."""
        raise NotImplementedError

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        """``n`` samples, ``[n, *event_shape]``; ``temperature`` scales the spread."""
        raise NotImplementedError

    @property
    def dim(self) -> int:
        return int(math.prod(self.event_shape))


class StandardNormal(BaseDistribution):
    """Standard normal ``N(0, I)``; at temperature ``T`` samples come from ``N(0, T² I)``."""

    def log_prob(self, z: Tensor) -> Tensor:
        return sum_except_batch(-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi))

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        return temperature * torch.randn(n, *self.event_shape, device=self._ref.device,
                                         dtype=self._ref.dtype)


class StandardLogistic(BaseDistribution):
    """Standard logistic, ``log p(z) = -Σ (softplus(z) + softplus(-z))``, as in NICE."""

    def log_prob(self, z: Tensor) -> Tensor:
        return -sum_except_batch(nn.functional.softplus(z) + nn.functional.softplus(-z))

    def sample(self, n: int, temperature: float = 1.0) -> Tensor:
        u = torch.rand(n, *self.event_shape, device=self._ref.device, dtype=self._ref.dtype)
        u = u.clamp(1e-7, 1 - 1e-7)
        return temperature * (torch.log(u) - torch.log1p(-u))


class Density(nn.Module):
    """A normalizing-flow density: ``flow`` maps data to the ``base`` distribution.

    Shapes: ``x`` is ``[B, *event_shape]``; ``log_prob`` returns ``[B]`` (nats).

    Example::

        >>> from cnf.flows.coupling import RealNVP
        >>> d = Density(RealNVP(2), StandardNormal(2))
        >>> d.log_prob(torch.randn(5, 2)).shape
        torch.Size([5])
        >>> x = d.sample(100, temperature=0.8)
    """

    def __init__(self, flow: Flow, base: BaseDistribution):
        super().__init__()
        self.flow = flow
        self.base = base

    @property
    def event_shape(self) -> torch.Size:
        return self.base.event_shape

    def check_input(self, x: Tensor) -> None:
        """Raise ``ShapeError`` / ``NonFiniteError`` with a fix when ``x`` cannot be scored."""
        if tuple(x.shape[1:]) != tuple(self.event_shape):
            raise ShapeError(
                f"the model expects data of shape [batch, {', '.join(map(str, self.event_shape))}]"
                f" but got {list(x.shape)}; set the model's dimension (e.g. the base "
                f"distribution's `shape` and the flow's `dim`) to match the data, or pick a "
                f"dataset with that dimension"
            )
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).nonzero().flatten()
            raise NonFiniteError(
                f"the batch contains NaN or inf values (rows {bad[:10].tolist()}); "
                f"clean or impute the data before training"
            )

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``log p(x)``, shape ``[B]``."""
        self.check_input(x)
        z, logabsdet = self.flow(x, context)
        return self.base.log_prob(z) + logabsdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.log_prob(x, context)

    def sample(self, n: int, temperature: float = 1.0, context: Tensor | None = None) -> Tensor:
        """``n`` samples ``[n, *event_shape]``; ``temperature < 1`` concentrates them."""
        z = self.base.sample(n, temperature)
        x, _ = self.flow.inverse(z, context)
        return x

    def sample_and_log_prob(
        self, n: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples and their log-density from the generative pass alone:
        ``log q(x) = log p_base(z) - log|det dx/dz|``."""
        z = self.base.sample(n)
        x, logabsdet = self.flow.inverse(z, context)
        return x, self.base.log_prob(z) - logabsdet
