"""Flows whose parameters come from outside, per sample: the posteriors of VAEs with flows.

In the Sylvester-flows setup (van den Berg et al., 2018) the encoder's linear heads output
every flow parameter for each data point. That parameter vector is the flow's ``context``;
the fully amortized families live in their own modules — ``Planar(dim, amortized=True)``,
``Radial(dim, amortized=True)``, :class:`cnf.flows.sylvester.Sylvester` — and
:class:`AmortizedChain` splits one context vector among layers. ``IAF(context_dim=...)``
(:mod:`cnf.flows.autoregressive`) and ``ConditionalCNF`` (FFJORD with the context carried as
frozen state coordinates) condition on encoder features instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cnf.errors import ConfigError, ShapeError
from cnf.flows.base import Flow, amortized_params

__all__ = ["AmortizedChain", "ConditionalCNF"]


class AmortizedChain(Flow):
    """Composition of fully amortized flows (each with ``dim`` and ``param_dim``): ``context``
    ``[B, param_dim]`` is split among them in order (``param_dim`` is the sum). Generative
    order: ``inverse`` applies ``flows[0]`` first.

    Example::

        >>> from cnf.flows import Planar, Radial, Sylvester
        >>> flow = AmortizedChain([Planar(4, amortized=True), Radial(4, amortized=True),
        ...                        Sylvester(4, num_columns=2)])
        >>> params = torch.randn(8, flow.param_dim)          # from an encoder head
        >>> zk, logdet = flow.inverse(torch.randn(8, 4), params)
    """

    def __init__(self, flows: Sequence[Flow]):
        super().__init__()
        if not flows:
            raise ConfigError("AmortizedChain needs at least one flow")
        dims = {f.dim for f in flows}
        if len(dims) != 1:
            raise ConfigError(f"all flows of an AmortizedChain need the same dim, got {sorted(dims)}")
        self.flows = nn.ModuleList(flows)
        self.dim = dims.pop()
        self.param_dim = sum(f.param_dim for f in flows)
        self._sizes = [f.param_dim for f in flows]

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        parts = amortized_params(self, z, context).split(self._sizes, dim=1)
        total = z.new_zeros(z.shape[0])
        for flow, p in zip(self.flows, parts):
            z, ld = flow.inverse(z, p)
            total = total + ld
        return z, total

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        parts = amortized_params(self, x, context).split(self._sizes, dim=1)
        total = x.new_zeros(x.shape[0])
        for flow, p in zip(reversed(self.flows), reversed(parts)):
            x, ld = flow(x, p)
            total = total + ld
        return x, total

    def __len__(self) -> int:
        return len(self.flows)


# -- conditional CNF -----------------------------------------------------------------------
class _FrozenContextNet(nn.Module):
    """``[z, c] -> [f(t, z, c), 0]``: an :class:`cnf.ode.ODENet` on the augmented state whose
    context coordinates do not move."""

    def __init__(self, dim: int, context_dim: int, hidden: Sequence[int], layer_type: str,
                 act: str):
        super().__init__()
        from cnf.ode.nets import ODENet

        self.inner = ODENet(dim + context_dim, hidden, layer_type, act)
        self.dim = dim

    def _mask(self, f: Tensor) -> Tensor:
        return torch.cat([f[..., :self.dim], torch.zeros_like(f[..., self.dim:])], dim=-1)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self._mask(self.inner(t, y))

    @property
    def supports_jvp(self) -> bool:
        return self.inner.supports_jvp

    def forward_jvp(self, t: Tensor, y: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        f, jv = self.inner.forward_jvp(t, y, v)
        return self._mask(f), self._mask(jv)


class ConditionalCNF(Flow):
    """A CNF (FFJORD, :class:`cnf.flows.continuous.CNF`) conditioned on a context by state
    augmentation: the context is projected to ``k`` features ``c`` and carried as extra
    state coordinates with zero velocity::

        d[z, c]/dt = [f(t, z, c), 0]

    The Jacobian of the augmented map is block triangular with an identity block for ``c``,
    so the CNF's log-determinant is exactly ``log|det ∂z(T)/∂z(0)|`` for the given context,
    and gradients reach the context through the initial state. Both directions cost one ODE
    solve. ``exact_logdet`` reaches the inner CNF's ``exact`` switch.

    Args:
        dim: D. context_dim: width of the context (e.g. encoder features).
        context_features: k, the projected context width (default: D).
        hidden, layer_type, act: the ODE network on ``D + k`` inputs.
        **cnf_kwargs: any other :class:`CNF` argument (T, divergence, solver, rtol, ...).
    """

    def __init__(self, dim: int, context_dim: int, context_features: int | None = None,
                 hidden: Sequence[int] = (64, 64), layer_type: str = "concatsquash",
                 act: str = "tanh", **cnf_kwargs):
        super().__init__()
        from cnf.flows.continuous import CNF

        k = dim if context_features is None else int(context_features)
        if context_dim < 1 or k < 1:
            raise ConfigError("ConditionalCNF needs context_dim >= 1 and context_features >= 1")
        self.dim, self.context_dim, self.k = dim, context_dim, k
        self.proj = nn.Linear(context_dim, k)
        self.cnf = CNF(dim + k, net=_FrozenContextNet(dim, k, hidden, layer_type, act),
                       **cnf_kwargs)

    def _augment(self, x: Tensor, context: Tensor | None) -> Tensor:
        if context is None or context.shape != (x.shape[0], self.context_dim):
            got = None if context is None else list(context.shape)
            raise ShapeError(f"ConditionalCNF needs context [{x.shape[0]}, {self.context_dim}]; "
                             f"got {got}")
        return torch.cat([x, self.proj(context)], dim=1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, logdet = self.cnf(self._augment(x, context))
        return y[:, :self.dim], logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y, logdet = self.cnf.inverse(self._augment(z, context))
        return y[:, :self.dim], logdet
