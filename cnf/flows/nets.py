"""Small networks that flows use as conditioners (pure PyTorch)."""

from __future__ import annotations

from torch import Tensor, nn

from cnf.errors import ConfigError
from cnf.nn import activation

__all__ = ["MLP", "ConvNet", "activation"]

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


class ConvNet(nn.Sequential):
    """Image conditioner ``[B, in, H, W] -> [B, out, H, W]``: a 3×3 convolution, ``depth - 1``
    1×1 convolutions (each followed by the activation), and a 3×3 output convolution, as in
    Glow's coupling networks. ``zero_init_last`` makes a coupling start as the identity.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: int = 64,
        depth: int = 2,
        act: str = "relu",
        zero_init_last: bool = True,
    ):
        if depth < 1:
            raise ConfigError(f"ConvNet needs depth >= 1, got {depth}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, hidden, 3, padding=1), activation(act)]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(hidden, hidden, 1), activation(act)]
        last = nn.Conv2d(hidden, out_channels, 3, padding=1)
        if zero_init_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        layers.append(last)
        super().__init__(*layers)
