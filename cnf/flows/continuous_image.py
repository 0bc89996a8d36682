"""Continuous normalizing flows on images: ``ImageCNF`` and FFJORD's multi-scale model.

``ImageCNF`` is one :class:`cnf.flows.continuous.CNF` block whose dynamics is a conv net
(:class:`cnf.ode.conv.ConvODENet`) on images ``[B, C, H, W]``::

    dz/dt = f(t, z),  z(0) = x,  log|det ∂z/∂x| = ∫₀ᵀ tr(∂f/∂z) dt

``FFJORDMultiscale`` is FFJORD's ``ODENVP`` (Grathwohl et al., 2019, "FFJORD", App. B.1 and
``lib/odenvp.py``): per scale ``blocks_per_scale`` CNF blocks, a squeeze (``C, H, W ->
4C, H/2, W/2``), ``blocks_per_scale`` more blocks on the squeezed image, then half of the
channels factored out to the base distribution; the last scale has only the first group of
blocks. ``z`` keeps ``x``'s shape (the factored-out parts are put back in place, see
:mod:`cnf.flows.multiscale`), so any base over ``[C, H, W]`` works.

Both directions cost one ODE solve per block; the inverse is numerical (accurate to the
solver tolerance). Training uses Hutchinson's trace (``divergence="hutchinson"``, FFJORD uses
Rademacher probes for images); ``exact = True`` (e.g. :func:`cnf.flows.base.exact_logdet`)
switches every block to the exact trace, computed by forward-mode products over all ``D``
pixels of the block's state (affordable for small images: ``D = 64`` for 8×8 digits).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch import Tensor

from cnf.errors import ConfigError, ShapeError
from cnf.flows.base import Chain, Flow, Inverse
from cnf.flows.continuous import CNF
from cnf.flows.multiscale import FactorOut, Squeeze
from cnf.ode import SolverConfig
from cnf.ode.conv import ConvODENet
from cnf.ode.solve import legacy_solver_error

__all__ = ["ImageCNF", "FFJORDMultiscale"]


class ImageCNF(Flow):
    """One CNF block on images of shape ``(C, H, W)`` with a :class:`ConvODENet` as dynamics.

    Args:
        shape: ``(C, H, W)`` of the images this block sees.
        hidden, layer_type, act, kernel: the conv ODE net (FFJORD images: ``(64, 64, 64)``,
            ``concat``, ``softplus``, 3).
        **cnf_args: everything else of :class:`CNF` (``T``, ``divergence``, ``solver``, ...;
            not ``context_dim``: the conv field takes no context).

    Example::

        >>> block = ImageCNF((1, 4, 4), hidden=(8,), divergence="hutchinson", probe="rademacher")
        >>> z, logdet = block(torch.randn(3, 1, 4, 4))
        >>> z.shape, logdet.shape
        (torch.Size([3, 1, 4, 4]), torch.Size([3]))
    """

    def __init__(
        self,
        shape: Sequence[int],
        hidden: Sequence[int] = (64, 64, 64),
        layer_type: str = "concat",
        act: str = "softplus",
        kernel: int = 3,
        **cnf_args,
    ):
        super().__init__()
        if cnf_args.get("context_dim"):
            raise ConfigError("ImageCNF takes no context (its conv field has no context input)")
        net = ConvODENet(shape, hidden, layer_type, act, kernel)
        self.shape = net.shape
        self.cnf = CNF(net.dim, net=net, **cnf_args)

    @property
    def stochastic(self) -> bool:  # type: ignore[override]
        return self.cnf.stochastic

    def _run(self, x: Tensor, context: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[1:]) != self.shape:
            dims = ", ".join(map(str, self.shape))
            raise ShapeError(f"ImageCNF{self.shape} expects [batch, {dims}], got {list(x.shape)}")
        flat = x.reshape(x.shape[0], -1)
        z, logdet = self.cnf.inverse(flat, context) if reverse else self.cnf(flat, context)
        return z.reshape(x.shape), logdet

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data → latent: integrate from 0 to T."""
        return self._run(x, context, reverse=False)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent → data: integrate from T back to 0."""
        return self._run(z, context, reverse=True)


class FFJORDMultiscale(Chain):
    """FFJORD's multi-scale image model (``ODENVP``), see the module docstring.

    Args:
        input_shape: ``(C, H, W)``; ``H`` and ``W`` divisible by ``2^(scales-1)``.
        scales: number of scales (FFJORD: 3 for MNIST, 4 for CIFAR-10).
        blocks_per_scale: CNF blocks before (and, except on the last scale, after) each
            squeeze (FFJORD: 2).
        hidden, layer_type, act, kernel: each block's :class:`ConvODENet`.
        T, train_T: integration time per block (FFJORD images: 1.0, learned).
        divergence, probe, n_probes, divergence_impl, solver, eval_solver,
        kinetic_weight, jacobian_weight: as in :class:`CNF`, for every block (``solver`` and
            ``eval_solver`` are :class:`cnf.ode.SolverConfig` objects).

    Example::

        >>> flow = FFJORDMultiscale((1, 4, 4), scales=2, blocks_per_scale=1, hidden=(8,))
        >>> z, logdet = flow(torch.randn(2, 1, 4, 4))
        >>> z.shape
        torch.Size([2, 1, 4, 4])
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        scales: int = 2,
        blocks_per_scale: int = 2,
        hidden: Sequence[int] = (64, 64, 64),
        layer_type: str = "concat",
        act: str = "softplus",
        kernel: int = 3,
        T: float = 1.0,
        train_T: bool = True,
        divergence: Literal["exact", "hutchinson"] = "hutchinson",
        probe: Literal["gaussian", "rademacher"] = "rademacher",
        n_probes: int = 1,
        divergence_impl: Literal["auto", "autograd", "jvp"] = "auto",
        solver: SolverConfig | None = None,
        eval_solver: SolverConfig | None = None,
        kinetic_weight: float = 0.0,
        jacobian_weight: float = 0.0,
        **legacy: Any,
    ):
        if legacy or isinstance(solver, str) or isinstance(eval_solver, str):
            raise legacy_solver_error(type(self).__name__, legacy, solver, eval_solver)
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != 3:
            raise ConfigError(f"input_shape must be (C, H, W), got {list(input_shape)}")
        if scales < 1 or blocks_per_scale < 1:
            raise ConfigError(f"scales and blocks_per_scale must be >= 1, got {scales}, "
                              f"{blocks_per_scale}")
        c, h, w = shape
        f = 2 ** (scales - 1)
        if h % f or w % f:
            raise ConfigError(f"{scales} scales squeeze {scales - 1} times: H and W must be "
                              f"divisible by {f}, got {h}x{w}; use fewer scales")
        block_args = dict(
            hidden=hidden, layer_type=layer_type, act=act, kernel=kernel, T=T, train_T=train_T,
            divergence=divergence, probe=probe, n_probes=n_probes,
            divergence_impl=divergence_impl, solver=solver, eval_solver=eval_solver,
            kinetic_weight=kinetic_weight, jacobian_weight=jacobian_weight,
        )

        def blocks(s: tuple[int, int, int]) -> list[Flow]:
            return [ImageCNF(s, **block_args) for _ in range(blocks_per_scale)]

        # innermost scale first: shape (C·2^(L-1), H/2^(L-1), W/2^(L-1))
        shapes = [(c * 2 ** i, h // 2 ** i, w // 2 ** i) for i in range(scales)]
        inner: Flow = Chain(blocks(shapes[-1]))
        for s in reversed(shapes[:-1]):
            squeezed = (4 * s[0], s[1] // 2, s[2] // 2)
            inner = Chain([*blocks(s), Squeeze(), *blocks(squeezed), FactorOut(inner),
                           Inverse(Squeeze())])
        super().__init__(inner.flows)
        self.input_shape = shape
        self.scales = scales

    @property
    def blocks(self) -> list[CNF]:
        """Every CNF block, outermost scale first."""
        return [m for m in self.modules() if isinstance(m, CNF)]
