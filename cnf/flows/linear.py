"""Linear flows acting on dimension 1 (features of ``[B, D]`` or channels of ``[B, C, ...]``).

- :class:`Permutation` (fixed), :class:`RandomPermutation` (seeded), :class:`Reverse`:
  ``z = x[:, perm]``, ``log|det| = 0``.
- :class:`LULinear`: ``z = W x + b`` with ``W = P L U`` (Kingma & Dhariwal, 2018, "Glow";
  the LU parameterization of the invertible 1×1 convolution). ``P`` is a fixed permutation,
  ``L`` unit lower triangular, ``U`` upper triangular with diagonal ``sign · exp(log_s)``,
  so ``log|det W| = Σ log_s`` costs O(D) and the inverse is two triangular solves.

Both directions of every flow here are cheap (closed form).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnf.errors import ConfigError, ShapeError
from cnf.flows.base import Flow

__all__ = ["Permutation", "RandomPermutation", "Reverse", "LULinear"]


class Permutation(Flow):
    """Fixed permutation of dimension 1: ``z[:, i] = x[:, perm[i]]``; ``log|det| = 0``.

    Example::

        >>> z, _ = Permutation([2, 0, 1])(torch.randn(4, 3))
    """

    def __init__(self, perm: Sequence[int] | Tensor):
        super().__init__()
        perm_t = torch.as_tensor(perm, dtype=torch.long)
        if perm_t.dim() != 1 or not torch.equal(perm_t.sort().values, torch.arange(perm_t.numel())):
            raise ConfigError(f"{list(perm_t.tolist())} is not a permutation of 0..{perm_t.numel() - 1}")
        self.register_buffer("perm", perm_t)
        self.register_buffer("inv_perm", torch.argsort(perm_t))

    def _check(self, x: Tensor) -> None:
        if x.shape[1] != self.perm.numel():
            raise ShapeError(f"the permutation has {self.perm.numel()} entries but the input has "
                             f"{x.shape[1]} features/channels in dimension 1; build it with that size")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        return z[:, self.inv_perm], z.new_zeros(z.shape[0])


class RandomPermutation(Permutation):
    """A random permutation of ``dim`` entries drawn once from ``seed`` and stored as a
    buffer (a reloaded model keeps it)."""

    def __init__(self, dim: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        super().__init__(torch.randperm(dim, generator=g))


class Reverse(Permutation):
    """Reverse the order of dimension 1 (the usual permutation between MAF/coupling layers)."""

    def __init__(self, dim: int):
        super().__init__(torch.arange(dim - 1, -1, -1))


class LULinear(Flow):
    """Invertible linear map ``z = W x + b`` on dimension 1 with ``W = P L U``.

    ``P`` (fixed permutation) and ``sign(diag U)`` are buffers taken from the LU decomposition
    of a random orthogonal matrix at construction (as in Glow); ``L`` (strictly lower part),
    ``U`` (strictly upper part) and ``log_s = log|diag U|`` are learned::

        log|det dz/dx| = (Π spatial) · Σ log_s

    Both directions are cheap: forward is one matmul, inverse two triangular solves. Works on
    ``[B, D]`` vectors; for images, :class:`cnf.flows.glow.InvertibleConv1x1` applies it per
    pixel.

    Example::

        >>> flow = LULinear(4)
        >>> z, logdet = flow(torch.randn(8, 4))
    """

    def __init__(self, dim: int, bias: bool = True, seed: int = 0):
        super().__init__()
        if dim < 1:
            raise ConfigError(f"LULinear needs dim >= 1, got {dim}")
        self.dim = dim
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
        p, lower, upper = torch.linalg.lu(q)
        s = torch.diagonal(upper)
        self.register_buffer("perm_matrix", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(dim, dim), -1))
        self.register_buffer("eye", torch.eye(dim))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(s.abs()))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def _factors(self) -> tuple[Tensor, Tensor]:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.t() + torch.diag(self.sign_s * self.log_s.exp())
        return lower, upper

    def weight(self) -> Tensor:
        """The matrix ``W = P L U`` (``[D, D]``)."""
        lower, upper = self._factors()
        return self.perm_matrix @ lower @ upper

    def inverse_weight(self) -> Tensor:
        """``W⁻¹ = U⁻¹ L⁻¹ Pᵀ`` from two triangular solves (``[D, D]``)."""
        lower, upper = self._factors()
        eye = self.eye
        l_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
        u_inv = torch.linalg.solve_triangular(upper, eye, upper=True)
        return u_inv @ l_inv @ self.perm_matrix.t()

    def _logdet(self, x: Tensor) -> Tensor:
        spatial = int(x[0, 0].numel())
        return (self.log_s.sum() * spatial).expand(x.shape[0])

    def _check(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.dim:
            raise ShapeError(f"LULinear was built for {self.dim} features in dimension 1 but got "
                             f"input of shape {list(x.shape)}")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x)
        return F.linear(x, self.weight(), self.bias), self._logdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(z)
        if self.bias is not None:
            z = z - self.bias
        return F.linear(z, self.inverse_weight()), -self._logdet(z)
