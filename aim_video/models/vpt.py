"""Visual Prompt Tuning (Jia et al., 2022) per frame: learnable tokens joined to every frame's token sequence.

*Shallow*: one set of ``num_tokens`` prompts inserted after the class (and register) tokens before the first block.
*Deep*: a fresh set per block: before block ``i > 0`` the previous block's prompt outputs are replaced by block
``i``'s own prompts. The prompts are the same for every frame (a frame-by-frame image method) and are removed
before the final norm, so the per-frame CLS read-out is unchanged. Initialisation as in the paper: uniform in
``[-v, v]`` with ``v = sqrt(6 / (3 * patch_area + dim))``.
"""

from __future__ import annotations

import math

import torch
from einops import repeat
from torch import nn


class VisualPrompts(nn.Module):
    """``depth`` sets of ``num_tokens`` prompt tokens (1 set: shallow VPT; one per block: deep VPT)."""

    def __init__(self, dim: int, num_tokens: int, depth: int, patch_area: int, num_prefix_tokens: int = 1) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"model.prompt_tokens must be >= 1, got {num_tokens}")
        self.num_tokens = num_tokens
        self.offset = num_prefix_tokens  # prompts sit right after CLS (and any register tokens)
        self.tokens = nn.Parameter(torch.empty(depth, num_tokens, dim))  # [L, P, D]
        bound = math.sqrt(6.0 / float(3 * patch_area + dim))
        nn.init.uniform_(self.tokens, -bound, bound)

    @property
    def depth(self) -> int:
        return self.tokens.shape[0]

    def adapter_params(self) -> list[str]:
        return ["tokens"]

    def forward(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Tokens entering block ``layer``: ``[F, N, D]`` -> ``[F, N + P, D]`` at layer 0; deep: same shape after."""
        if layer >= self.depth:
            return x  # shallow VPT: the prompts inserted at layer 0 flow on through the later blocks
        prompts = repeat(self.tokens[layer], "p d -> f p d", f=x.shape[0]).to(x.dtype)  # [F, P, D]
        o = self.offset
        rest = x[:, o:] if layer == 0 else x[:, o + self.num_tokens :]  # deep: drop the previous block's prompts
        return torch.cat([x[:, :o], prompts, rest], dim=1)

    def remove(self, x: torch.Tensor) -> torch.Tensor:
        """``[F, N + P, D]`` -> ``[F, N, D]``: the prompt outputs go, prefix and patch tokens stay."""
        return torch.cat([x[:, : self.offset], x[:, self.offset + self.num_tokens :]], dim=1)
