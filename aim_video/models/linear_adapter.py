"""Mergeable linear adapters in the spirit of ZeroI2V (Li et al., 2024): train like AIM, infer like a plain ViT.

Each adapter is purely linear, ``x + U D x`` (no activation, no bias), i.e. the matrix ``M = I + U D``. Placed on
the input or output of a frozen linear layer ``y = W x + b`` it folds into that layer after training:
input side ``W M``, output side ``M W`` and ``M b``. Per block (as ZeroI2V does): before the attention (input of
``attn.qkv``), after the attention (output of ``attn.proj``) and before the MLP (input of ``mlp.fc1``).
:meth:`AdaptedLinear.merged` returns the plain ``nn.Linear``; the model's ``merge()`` swaps them in, so the merged
model's parameter count and FLOPs are exactly the image model's (plus the video head).

ZeroI2V's second ingredient, temporal modelling by re-assigning attention heads across frames, is not part of this
baseline: like the other frame-by-frame baselines it is blind to frame order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from aim_video.models.adapter import init_trunc_normal


class LinearAdapter(nn.Module):
    """``x + up(down(x))`` with bias-free linear maps; ``up`` starts at zero (identity at init)."""

    def __init__(self, dim: int, rank: int) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"model.linear_adapter_rank must be >= 1, got {rank}")
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim, bias=False)
        init_trunc_normal(self.down.weight)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))  # [..., D] -> [..., r] -> [..., D]

    def matrix(self) -> torch.Tensor:
        """The adapter as one ``[D, D]`` matrix ``I + U D``."""
        eye = torch.eye(self.up.out_features, device=self.up.weight.device, dtype=self.up.weight.dtype)
        return eye + self.up.weight @ self.down.weight


class AdaptedLinear(nn.Module):
    """A frozen linear layer (its own ``weight``/``bias`` objects, timm's keys) with linear adapters around it."""

    def __init__(self, base: nn.Linear, rank: int, *, before: bool, after: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight
        self.bias = base.bias
        self.before = LinearAdapter(self.in_features, rank) if before else None
        self.after = LinearAdapter(self.out_features, rank) if after else None

    def adapter_params(self) -> list[str]:
        """The adapters' parameters (relative names); the frozen weight and bias are the image model's."""
        return [f"{side}.{name}" for side in ("before", "after") if getattr(self, side) is not None
                for name, _ in getattr(self, side).named_parameters()]  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.before is not None:
            x = self.before(x)
        y = F.linear(x, self.weight, self.bias)
        return self.after(y) if self.after is not None else y

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The plain ``nn.Linear`` with ``W' = M_after W M_before`` and ``b' = M_after b``: the same function."""
        weight, bias = self.weight, self.bias
        if self.before is not None:
            weight = weight @ self.before.matrix()  # [out, in] @ [in, in]
        if self.after is not None:
            weight = self.after.matrix() @ weight  # [out, out] @ [out, in]
            bias = self.after.matrix() @ bias if bias is not None else None
        out = nn.Linear(self.in_features, self.out_features, bias=bias is not None)
        out.to(device=weight.device, dtype=weight.dtype)
        out.weight.copy_(weight)
        if bias is not None:
            out.bias.copy_(bias)
        return out


def apply_linear_adapters(backbone: VisionTransformer, rank: int) -> None:
    """Adapters before the attention (``attn.qkv`` input), after it (``attn.proj`` output) and before the MLP."""
    for blk in backbone.blocks:
        blk.attn.qkv = AdaptedLinear(blk.attn.qkv, rank, before=True, after=False)
        blk.attn.proj = AdaptedLinear(blk.attn.proj, rank, before=False, after=True)
        blk.mlp.fc1 = AdaptedLinear(blk.mlp.fc1, rank, before=True, after=False)
