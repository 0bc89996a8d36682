"""Flows whose parameters come from outside, per sample: the posteriors of VAEs with flows.

In the Sylvester-flows setup (van den Berg et al., 2018) the encoder's linear heads output
every flow parameter for each data point. That parameter vector is the flow's ``context``;
the fully amortized families live in their own modules — ``Planar(dim, amortized=True)``,
``Radial(dim, amortized=True)``, :class:`cnf.flows.sylvester.Sylvester` — and
:class:`AmortizedChain` splits one context vector among layers. ``IAF(context_dim=...)``
(:mod:`cnf.flows.autoregressive`) and ``CNF(dim, context_dim=...)``
(:mod:`cnf.flows.continuous`) condition on encoder features instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from cnf.errors import ConfigError
from cnf.flows.base import Flow, amortized_params

__all__ = ["AmortizedChain"]


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
