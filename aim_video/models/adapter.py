"""The AIM bottleneck adapter: ``Linear(D, D*ratio) -> GELU -> Linear(D*ratio, D)``, with or without a skip.

The second linear layer starts at zero (weight and bias), so a freshly built adapter either returns its input
(with skip) or zero (without): at step 0 the adapted network computes exactly the frozen image model.
"""

from __future__ import annotations

import torch
from timm.layers import trunc_normal_
from torch import nn


def init_trunc_normal(weight: torch.Tensor, std: float = 0.02) -> None:
    """Normal(0, std) cut at 3 std (std 0.0197 in effect). The authors' call, timm's `trunc_normal_(w, std=0.02)`,
    cuts at +-2 absolute, 100 std out: there the inverse-CDF sampling saturates in float32 and puts a weight at
    exactly -2.0 about once per 16 million (pytorch#155588), one in each ViT-L model. Cutting at 3 std keeps it
    off the saturated ends."""
    trunc_normal_(weight, std=std, a=-3 * std, b=3 * std)


class Adapter(nn.Module):
    """Bottleneck MLP used for the spatial (skip), temporal (no skip) and joint/MLP (no skip) adapters.

    No norm and no dropout inside, as in the paper. ``hidden = int(dim * ratio)``: 192 for ViT-B at 0.25.
    """

    def __init__(self, dim: int, ratio: float = 0.25, skip: bool = True) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        if hidden < 1:
            raise ValueError(f"adapter ratio {ratio} gives an empty bottleneck for width {dim}; use a larger ratio")
        self.skip = skip
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """First layer trunc-normal(0.02) with zero bias; second layer all zero (identity / zero at init)."""
        init_trunc_normal(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc2(self.act(self.fc1(x)))  # [..., D] -> [..., D*ratio] -> [..., D]
        return x + out if self.skip else out

    def extra_repr(self) -> str:
        return f"skip={self.skip}"
