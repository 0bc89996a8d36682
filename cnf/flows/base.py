"""The one contract every flow keeps, and the structural flows built on it.

``forward`` is the normalizing direction (data ``x`` -> latent ``z``) and returns the
log-absolute-determinant of ``dz/dx`` per sample; ``inverse`` is the generative direction
(``z`` -> ``x``) and returns ``log|det dx/dz|``. So for a base density ``p_Z``::

    log p_X(x) = log p_Z(z) + logabsdet,        (z, logabsdet) = flow.forward(x)

Flows whose log-determinant is a stochastic estimate (Hutchinson traces in FFJORD, power
series in i-ResNet) set ``stochastic = True`` in that mode and expose ``exact`` mode for
evaluation; :func:`exact_logdet` switches every such sub-flow at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "Flow", "Chain", "Inverse", "Identity", "exact_logdet", "gather", "sum_except_batch",
    "amortized_params",
]


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum every dimension but the first: ``[B, ...] -> [B]``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def amortized_params(flow: nn.Module, x: Tensor, context: Tensor | None) -> Tensor:
    """The per-sample parameters of a fully amortized flow: ``context`` checked to be
    ``[B, flow.param_dim]`` for ``x`` ``[B, flow.dim]`` (:class:`cnf.errors.ShapeError` if not)."""
    from cnf.errors import ShapeError

    name, dim, param_dim = type(flow).__name__, flow.dim, flow.param_dim
    if x.dim() != 2 or x.shape[1] != dim:
        raise ShapeError(f"{name} was built for inputs [batch, {dim}], got {list(x.shape)}")
    if context is None or context.shape != (x.shape[0], param_dim):
        got = None if context is None else list(context.shape)
        raise ShapeError(f"this {name} is fully amortized: pass its parameters as context of "
                         f"shape [{x.shape[0]}, {param_dim}], got {got}")
    return context


class Flow(nn.Module):
    """A bijection with a tractable log-determinant, in both directions.

    Subclasses implement :meth:`forward` (data -> latent) and :meth:`inverse`
    (latent -> data). Both take an optional ``context`` tensor (``[B, C]``) for
    conditional flows and return ``(output, logabsdet)`` with ``logabsdet`` of shape ``[B]``.
    """

    #: whether ``logabsdet`` is a stochastic estimate in the flow's current mode. A flow
    #: with an estimator also has a boolean attribute ``exact`` that switches it to the exact
    #: computation (see :func:`exact_logdet`) and makes ``stochastic`` False.
    stochastic: bool = False

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def extra_losses(self) -> dict[str, Tensor]:
        """Loss terms produced by the last ``forward`` call, already weighted (e.g. RNODE's
        kinetic-energy and Jacobian-norm regularizers). The training module adds their sum to
        the NLL and logs each by name. Default: none."""
        return {}

    def stats(self) -> dict[str, float]:
        """Counters of this module alone from its last call (e.g. ``nfe_forward``). The
        training module sums them over all sub-modules with :func:`gather` and logs them."""
        return {}

    @property
    def logdet_is_estimate(self) -> bool:
        """True when any part of this flow returns a stochastic log-determinant."""
        return any(getattr(m, "stochastic", False) for m in self.modules())


class Identity(Flow):
    """The identity map; log-determinant zero. Useful as a placeholder in configs."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z, z.new_zeros(z.shape[0])


class Chain(Flow):
    """Composition ``f_K ∘ ... ∘ f_1``: ``forward`` applies the flows in order, ``inverse``
    in reverse order; log-determinants add.

    Example::

        >>> flow = Chain([AffineCoupling(2, mask=[1, 0]), AffineCoupling(2, mask=[0, 1])])
        >>> z, logdet = flow(torch.randn(8, 2))
    """

    def __init__(self, flows: Sequence[Flow]):
        super().__init__()
        if len(flows) == 0:
            raise ValueError("Chain needs at least one flow")
        self.flows = nn.ModuleList(flows)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for flow in self.flows:
            x, logdet = flow(x, context)
            total = total + logdet
        return x, total

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for flow in reversed(self.flows):
            z, logdet = flow.inverse(z, context)
            total = total + logdet
        return z, total

    def __len__(self) -> int:
        return len(self.flows)

    def __getitem__(self, i: int) -> Flow:
        return self.flows[i]


class Inverse(Flow):
    """Swap the directions of a flow: ``Inverse(f).forward == f.inverse``.

    Use it to put a flow whose cheap direction is ``forward`` (e.g. MAF) where sampling must
    be cheap (e.g. as IAF in a variational posterior).
    """

    def __init__(self, flow: Flow):
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.flow.inverse(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.flow(z, context)


@contextlib.contextmanager
def exact_logdet(module: nn.Module, exact: bool = True) -> Iterator[nn.Module]:
    """Within the block, every sub-flow that has an ``exact`` switch computes its
    log-determinant exactly (brute force where needed); restores the old modes on exit.

    Example::

        >>> from cnf.distributions import Density, StandardNormal
        >>> density = Density(IResNet(2, num_blocks=2), StandardNormal(2))
        >>> with exact_logdet(density):     # exact Jacobian log-dets instead of the series
        ...     nll = -density.log_prob(torch.randn(16, 2)).mean()
    """
    saved = []
    for m in module.modules():
        if hasattr(m, "exact") and isinstance(m.exact, bool):
            saved.append((m, m.exact))
            m.exact = exact
    try:
        yield module
    finally:
        for m, old in saved:
            m.exact = old


def gather(module: nn.Module, method: str = "stats") -> dict[str, Any]:
    """Sum ``method()`` (``"stats"`` or ``"extra_losses"``) over every sub-module that has it,
    key by key: a stack of CNF blocks reports the total NFE of the stack."""
    total: dict[str, Any] = {}
    for m in module.modules():
        fn = getattr(m, method, None)
        if fn is None or not isinstance(m, Flow):
            continue
        for key, value in fn().items():
            total[key] = total[key] + value if key in total else value
    return total


def as_tensor_shape(shape: int | Sequence[int]) -> torch.Size:
    """Normalize an event shape given as an int or a sequence to ``torch.Size``."""
    if isinstance(shape, int):
        return torch.Size([shape])
    return torch.Size(int(s) for s in shape)
