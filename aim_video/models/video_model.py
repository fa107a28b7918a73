"""What every video model here shares: it names its trainable set (freezing and counting follow from that) and
classifies the mean over frames of the per-frame CLS token.

:class:`VideoModelMixin` gives :class:`~aim_video.models.aim.AIMVisionTransformer` and
:class:`~aim_video.models.frame_vit.FrameViT` one implementation of ``freeze``, ``parameter_counts``,
``set_grad_checkpointing``, ``compile_blocks``, ``add_head``, ``forward_head`` and ``forward``; each model defines
``trainable_parameter_names`` and ``forward_features`` (which reads ``self.grad_checkpointing``).
:func:`check_backbone` checks the backbone has what that read-out needs.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn


class VideoModelMixin:
    """For an ``nn.Module`` with ``self.backbone`` (a timm ViT), ``trainable_parameter_names()`` and
    ``forward_features()``; it calls ``add_head`` in its ``__init__``."""

    grad_checkpointing: bool = False

    def trainable_parameter_names(self) -> list[str]:
        raise NotImplementedError

    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def add_head(self, dim: int, num_classes: int, dropout: float) -> None:
        """The video head: dropout, then a linear layer with weights N(0, 0.01) and zero bias (AIM's init)."""
        self.head_drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, num_classes)
        nn.init.normal_(self.head.weight, std=0.01)
        nn.init.zeros_(self.head.bias)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, T, N, D]`` -> logits ``[B, K]``: per-frame CLS, mean over T, dropout, linear."""
        cls = features[:, :, 0].mean(dim=1)  # [B, D]
        return self.head(self.head_drop(cls))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, T, C, H, W]`` normalised frames -> logits ``[B, K]``."""
        return self.forward_head(self.forward_features(video))

    def freeze(self) -> None:
        """``requires_grad`` on exactly the trainable set, off everywhere else."""
        trainable = set(self.trainable_parameter_names())
        for name, param in self.named_parameters():  # type: ignore[attr-defined]
            param.requires_grad_(name in trainable)

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        trainable = set(self.trainable_parameter_names())
        params = list(self.named_parameters())  # type: ignore[attr-defined]
        return sum(p.numel() for n, p in params if n in trainable), sum(p.numel() for _, p in params)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (non-reentrant, so gradients pass a frozen stem)."""
        self.grad_checkpointing = enable

    def compile_blocks(self, **kwargs) -> None:
        """``torch.compile`` each block in place: parameter names and checkpointing stay as they are."""
        for blk in self.backbone.blocks:  # type: ignore[attr-defined]
            blk.compile(**kwargs)


def check_backbone(backbone: nn.Module) -> None:
    """The video models classify the per-frame CLS token after the final norm (token pooling)."""
    if not isinstance(backbone, VisionTransformer):
        raise TypeError(f"AIM wraps a timm VisionTransformer, got {type(backbone).__name__}")
    if not backbone.has_class_token:
        raise ValueError("AIM classifies the per-frame CLS token: this ViT has no class token (class_token=False)")
    if backbone.attn_pool is not None or not isinstance(backbone.fc_norm, nn.Identity):
        raise ValueError(
            f"this ViT pools with global_pool={backbone.global_pool!r}; AIM needs token pooling: "
            "add global_pool: token to model.vit_kwargs"
        )
