"""LoRA (Hu et al., 2022) on a frozen timm ViT's attention projections: ``W x + (alpha / r) * B A x``.

A short module of ours rather than peft: peft is not a dependency here, and the whole method is the class below.
:class:`LoRALinear` *takes over* the frozen ``nn.Linear``'s own ``weight`` and ``bias`` parameters (same objects),
so the state-dict keys stay timm's ``blocks.{i}.attn.qkv.weight`` and pretrained weights load unchanged; the new
keys are ``lora_down.weight`` (A, ``[r, in]``) and ``lora_up.weight`` (B, ``[out, r]``, zero at init, so a fresh
model computes exactly the image model). :meth:`LoRALinear.merged` folds the update into a plain ``nn.Linear``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class LoRALinear(nn.Module):
    """A frozen linear layer plus a trainable rank-``rank`` update scaled by ``alpha / rank``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"model.lora_rank must be >= 1, got {rank}")
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the frozen layer's own parameters: timm's key names, no copy
        self.bias = base.bias
        self.lora_down = nn.Linear(self.in_features, rank, bias=False)  # A
        self.lora_up = nn.Linear(rank, self.out_features, bias=False)  # B
        self.scale = alpha / rank
        # as in the paper (and peft): A Kaiming-uniform, B zero, so the update starts at exactly zero
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)

    def adapter_params(self) -> list[str]:
        """The parameters LoRA adds (relative names); the frozen weight and bias are the image model's."""
        return ["lora_down.weight", "lora_up.weight"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [..., in] -> [..., out]; the low-rank path goes through [..., r]
        return F.linear(x, self.weight, self.bias) + self.scale * self.lora_up(self.lora_down(x))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing the same function: ``W + scale * B A`` (inference costs a plain ViT)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        out.to(device=self.weight.device, dtype=self.weight.dtype)
        out.weight.copy_(self.weight + self.scale * self.lora_up.weight @ self.lora_down.weight)
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, rank={self.lora_down.out_features}, scale={self.scale}"


def apply_lora(backbone: VisionTransformer, rank: int, alpha: float) -> None:
    """Put LoRA on every block's ``attn.qkv`` and ``attn.proj`` in place (the usual choice for ViTs)."""
    for blk in backbone.blocks:
        blk.attn.qkv = LoRALinear(blk.attn.qkv, rank, alpha)
        blk.attn.proj = LoRALinear(blk.attn.proj, rank, alpha)
