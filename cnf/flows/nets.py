"""Small networks that flows use as conditioners (pure PyTorch)."""

from __future__ import annotations

from torch import Tensor, nn

from cnf.errors import ConfigError

__all__ = ["MLP", "activation"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "swish": nn.SiLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    """An activation module by name (``relu``, ``elu``, ``tanh``, ``softplus``, ``swish``...)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


class MLP(nn.Sequential):
    """``in_features -> hidden x depth -> out_features`` with an activation between layers.

    ``zero_init_last`` starts the output layer at zero, so a coupling built on it starts as
    the identity map (the usual trick for stable flow training).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 64,
        depth: int = 2,
        act: str = "relu",
        zero_init_last: bool = True,
    ):
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), activation(act)]
            width = hidden
        last = nn.Linear(width, out_features)
        if zero_init_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        super().__init__(*layers)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 (typed passthrough)
        return super().forward(x)
