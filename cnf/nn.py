"""Activations by name and their forward-mode derivatives: the one table both
:mod:`cnf.flows` and :mod:`cnf.ode` use (a leaf module: it imports only torch and
:mod:`cnf.errors`).

=============== =========================== ======================================
name            module                      derivative ``a'(u)`` (forward mode)
=============== =========================== ======================================
``tanh``        ``nn.Tanh``                 ``1 - tanh(u)²``
``softplus``    ``nn.Softplus``             ``σ(u)``
``swish/silu``  ``nn.SiLU``                 ``σ(u) (1 + u (1 - σ(u)))``
``elu``         ``nn.ELU``                  ``1`` for ``u > 0``, ``elu(u) + 1`` else
``relu``        ``nn.ReLU``                 ``[u > 0]``
``gelu``        ``nn.GELU``                 (no closed form here: autograd only)
``leaky_relu``  ``nn.LeakyReLU``            (autograd only)
=============== =========================== ======================================

Example::

    >>> act = activation("tanh")
    >>> y, jv = activation_jvp(act, torch.zeros(2), torch.ones(2))
    >>> jv.tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from cnf.errors import ConfigError

__all__ = ["ACTIVATIONS", "FUNCTIONAL", "activation", "activation_jvp", "has_jvp"]

#: activation modules by config name
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}

#: the same activations as plain functions (for hand-written forward passes)
FUNCTIONAL: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu,
    "elu": F.elu,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "swish": F.silu,
    "silu": F.silu,
    "gelu": F.gelu,
    "leaky_relu": F.leaky_relu,
}


def activation(name: str) -> nn.Module:
    """An activation module by name (``relu``, ``elu``, ``tanh``, ``softplus``, ``swish``...)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


def has_jvp(act: nn.Module) -> bool:
    """Whether :func:`activation_jvp` has a closed form for ``act``."""
    if isinstance(act, nn.Softplus):
        return act.beta == 1 and act.threshold == 20
    if isinstance(act, nn.ELU):
        return act.alpha == 1.0
    return isinstance(act, (nn.Tanh, nn.SiLU, nn.ReLU))


def activation_jvp(act: nn.Module, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(a(u), a'(u) · v)``: the activation and its Jacobian-vector product for tangents
    ``v`` (any shape broadcasting against ``u``, e.g. ``[K, B, H]`` against ``[B, H]``)."""
    if isinstance(act, nn.Tanh):
        y = torch.tanh(u)
        return y, v * (1 - y * y)
    if isinstance(act, nn.Softplus) and act.beta == 1 and act.threshold == 20:
        return F.softplus(u), v * torch.sigmoid(u)
    if isinstance(act, nn.SiLU):
        s = torch.sigmoid(u)
        return u * s, v * (s * (1 + u * (1 - s)))
    if isinstance(act, nn.ELU) and act.alpha == 1.0:
        y = F.elu(u)
        return y, v * torch.where(u > 0, torch.ones_like(u), y + 1)
    if isinstance(act, nn.ReLU):
        return torch.relu(u), v * (u > 0).to(u.dtype)
    raise ConfigError(f"no forward-mode derivative for {type(act).__name__}; use "
                      f"divergence_impl='autograd' or one of tanh, softplus, swish, elu, relu")
