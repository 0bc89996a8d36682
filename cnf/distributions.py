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

from cnf.errors import ConfigError, NonFiniteError, ShapeError
from cnf.flows.base import Flow, as_tensor_shape, sum_except_batch

__all__ = ["BaseDistribution", "StandardNormal", "StandardLogistic", "Density"]


class BaseDistribution(nn.Module):
    """A fixed, parameter-free distribution over events of ``event_shape``.

    ``shape=None`` leaves the shape to :class:`Density`, which takes the flow's ``dim`` (so
    a config names the dimension once, or not at all when the data module provides it)."""

    def __init__(self, shape: int | Sequence[int] | None = None):
        super().__init__()
        self.event_shape = as_tensor_shape(shape) if shape is not None else None
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

    Conditional: a flow built with ``context_dim`` models ``p(x | c)``::

        >>> from cnf.flows.spline import NSF
        >>> cd = Density(NSF(2, num_transforms=2, context_dim=3), StandardNormal(2))
        >>> cd.log_prob(torch.randn(5, 2), torch.randn(5, 3)).shape
        torch.Size([5])
        >>> cd.sample(7, context=torch.zeros(3)).shape
        torch.Size([7, 2])
    """

    def __init__(self, flow: Flow, base: BaseDistribution):
        super().__init__()
        flow_dim = getattr(flow, "dim", None)
        flow_dim = flow_dim if isinstance(flow_dim, int) else None
        if base.event_shape is None:
            if flow_dim is None:
                raise ConfigError(f"{type(base).__name__} has no `shape` and the flow "
                                  f"{type(flow).__name__} has no `dim` to take it from; set the "
                                  f"base distribution's shape")
            base.event_shape = as_tensor_shape(flow_dim)
        elif flow_dim is not None and len(base.event_shape) == 1 and base.event_shape[0] != flow_dim:
            raise ConfigError(
                f"the flow has dim={flow_dim} but the base distribution has shape "
                f"{list(base.event_shape)}; make them equal (or leave the base's shape out: "
                f"it follows the flow's dim)")
        self.flow = flow
        self.base = base

    @property
    def event_shape(self) -> torch.Size:
        return self.base.event_shape

    @property
    def context_dim(self) -> int | None:
        """The context width the flow's layers declare (``context_dim``), ``None`` when no
        layer declares one."""
        if not hasattr(self, "_context_dim"):
            dims = {int(m.context_dim) for m in self.flow.modules()
                    if isinstance(getattr(m, "context_dim", None), int)}
            self._context_dim = max(dims) if dims else None
        return self._context_dim

    def check_input(self, x: Tensor, context: Tensor | None = None) -> None:
        """Raise ``ShapeError`` / ``NonFiniteError`` with a fix when ``x`` (and ``context``)
        cannot be scored: wrong shape, a floating dtype other than the model's, NaN / inf."""
        if tuple(x.shape[1:]) != tuple(self.event_shape):
            raise ShapeError(
                f"the model expects data of shape [batch, {', '.join(map(str, self.event_shape))}]"
                f" but got {list(x.shape)}; set the model's dimension (e.g. the base "
                f"distribution's `shape` and the flow's `dim`) to match the data, or pick a "
                f"dataset with that dimension"
            )
        model_dtype = self.base._ref.dtype
        for name, t in (("data", x), ("context", context)):
            if t is not None and t.is_floating_point() and t.dtype != model_dtype:
                raise ShapeError(
                    f"the {name} is {str(t.dtype).removeprefix('torch.')} but the model is "
                    f"{str(model_dtype).removeprefix('torch.')}; convert one to the other "
                    f"(e.g. `x.to({model_dtype})`, or `density.to({t.dtype})`; in a run: "
                    f"--trainer.precision 64 for a float64 model)"
                )
        if context is not None and (context.dim() != 2 or context.shape[0] != x.shape[0]):
            raise ShapeError(
                f"context must be [batch, context_dim] with the batch of x ({x.shape[0]}), got "
                f"{list(context.shape)}"
            )
        wanted = self.context_dim
        if wanted is not None:
            got = 0 if context is None else context.shape[1]
            if got != wanted:
                raise ShapeError(
                    f"the flow was built with context_dim={wanted} but got "
                    f"{'no context' if context is None else f'context of width {got}'}; "
                    + ("pass context [batch, context_dim] (a data module with context_columns)"
                       if context is None else f"build the flow with context_dim={got}")
                )
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(1).nonzero().flatten()
            raise NonFiniteError(
                f"the batch contains NaN or inf values (rows {bad[:10].tolist()} of this batch); "
                f"clean or impute the data before training (cnf.data.files.FileDataModule "
                f"names the file row: nan_policy raise or drop)"
            )

    def expand_context(self, context: Tensor | None, n: int) -> Tensor | None:
        """``context`` ``[C]`` or ``[1, C]`` repeated for ``n`` samples, or ``[n, C]`` as is."""
        if context is None:
            return None
        if context.dim() == 1:
            context = context[None]
        if context.dim() != 2 or context.shape[0] not in (1, n):
            raise ShapeError(
                f"context for {n} samples must be [context_dim], [1, context_dim] or "
                f"[{n}, context_dim], got {list(context.shape)}"
            )
        return context.expand(n, -1) if context.shape[0] == 1 else context

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``log p(x)`` or ``log p(x | context)`` (``context`` ``[B, C]``), shape ``[B]``."""
        self.check_input(x, context)
        z, logabsdet = self.flow(x, context)
        return self.base.log_prob(z) + logabsdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.log_prob(x, context)

    def sample(self, n: int, temperature: float = 1.0, context: Tensor | None = None) -> Tensor:
        """``n`` samples ``[n, *event_shape]``; ``temperature < 1`` concentrates them.
        ``context``: one ``[C]`` for all samples, or ``[n, C]``, one per sample."""
        z = self.base.sample(n, temperature)
        x, _ = self.flow.inverse(z, self.expand_context(context, n))
        return x

    def sample_and_log_prob(
        self, n: int, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples and their log-density from the generative pass alone:
        ``log q(x) = log p_base(z) - log|det dx/dz|``."""
        z = self.base.sample(n)
        x, logabsdet = self.flow.inverse(z, self.expand_context(context, n))
        return x, self.base.log_prob(z) - logabsdet
