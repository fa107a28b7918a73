"""Frame-by-frame (space-only) baselines around a timm ViT: linear probe, full fine-tuning, LoRA, VPT, linear adapters.

Every frame goes through the image model on its own; the video's logits come from the mean over frames of the
per-frame CLS token after the final norm (dropout, then a linear head with std 0.01), exactly AIM's read-out.
There is no temporal embedding and no exchange between frames, so these models are blind to frame order by
construction (the demo's temporal pairs show it).

The interface is :class:`~aim_video.models.aim.AIMVisionTransformer`'s (``forward``, ``forward_features``,
``forward_head``, ``trainable_parameter_names``, ``new_parameter_names``, and through
:class:`~aim_video.models.video_model.VideoModelMixin` ``freeze``, ``parameter_counts``, ``set_grad_checkpointing``,
``compile_blocks``), so the engine, evaluation, export and profiler run unchanged.
The trainable set is explicit: the head, the parameters each added module declares in ``adapter_params()``
(LoRA, prompts, linear adapters) and, for full fine-tuning only, the whole backbone.
"""

from __future__ import annotations

import torch
from einops import rearrange
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.checkpoint import checkpoint

from aim_video.models.video_model import VideoModelMixin, check_backbone
from aim_video.models.vpt import VisualPrompts


class FrameViT(VideoModelMixin, nn.Module):
    """Video classifier from an image ViT applied per frame; ``[B, T, C, H, W]`` -> logits ``[B, num_classes]``.

    ``train_backbone`` makes every backbone parameter trainable (full fine-tuning); ``prompts`` adds VPT tokens.
    Modules inside ``backbone`` that define ``adapter_params()`` (LoRA, linear adapters) are trainable too.
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        num_frames: int,
        num_classes: int,
        *,
        train_backbone: bool = False,
        prompts: VisualPrompts | None = None,
        head_dropout: float = 0.5,
    ) -> None:
        super().__init__()
        check_backbone(backbone)
        backbone.reset_classifier(0)
        self.backbone = backbone
        self.num_frames = num_frames
        self.num_classes = num_classes
        self.train_backbone = train_backbone
        self.prompts = prompts
        self.add_head(backbone.embed_dim, num_classes, head_dropout)
        self.grad_checkpointing = False
        self.freeze()

    # -- trainable set -------------------------------------------------------------------------------------------
    def new_parameter_names(self) -> list[str]:
        """Parameters the method adds to the image model (absent from its checkpoint): adapters, prompts, head."""
        new = {"head.weight", "head.bias"}
        for prefix, module in self.named_modules():
            if hasattr(module, "adapter_params"):
                new |= {f"{prefix}.{name}" for name in module.adapter_params()}
        return [name for name, _ in self.named_parameters() if name in new]

    def trainable_parameter_names(self) -> list[str]:
        """The new parameters, plus every backbone parameter under full fine-tuning, in ``named_parameters`` order."""
        trainable = set(self.new_parameter_names())
        if self.train_backbone:
            trainable |= {f"backbone.{name}" for name, _ in self.backbone.named_parameters()}
        return [name for name, _ in self.named_parameters() if name in trainable]

    @torch.no_grad()
    def merge(self) -> FrameViT:
        """Fold every mergeable module (``merged()``: LoRA, linear adapters) into a plain ``nn.Linear``, in place.

        Afterwards the backbone is a plain timm ViT: the same outputs, the image model's parameter count plus the
        head, and its inference FLOPs. Returns ``self``. VPT prompts are extra tokens, not weights: they cannot fold.
        """
        if self.prompts is not None:
            raise ValueError("VPT prompts are extra tokens in every block; they cannot be merged into the weights")
        targets = [name for name, m in self.backbone.named_modules() if hasattr(m, "merged")]
        if not targets:
            raise ValueError("this model has nothing to merge (only model.method=lora or linear_adapter can merge)")
        for name in targets:
            parent, _, child = name.rpartition(".")
            owner = self.backbone.get_submodule(parent) if parent else self.backbone
            setattr(owner, child, getattr(owner, child).merged())
        self.freeze()
        return self

    # -- forward ------------------------------------------------------------------------------------------------
    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, T, C, H, W]`` -> final-norm tokens ``[B, T, N, D]``, each frame computed on its own."""
        if video.ndim != 5:
            raise ValueError(f"expected video [B, T, C, H, W], got shape {tuple(video.shape)}")
        num_frames = video.shape[1]
        vit = self.backbone
        x = rearrange(video, "b t c h w -> (b t) c h w")  # frames are independent images
        x = vit.patch_embed(x)  # [B*T, HW, D]
        x = vit._pos_embed(x)  # [B*T, N, D]: CLS prepended, spatial position embedding added
        x = vit.patch_drop(x)
        x = vit.norm_pre(x)
        for i, blk in enumerate(vit.blocks):
            if self.prompts is not None:
                x = self.prompts(x, i)  # [B*T, N + P, D]
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        if self.prompts is not None:
            x = self.prompts.remove(x)  # [B*T, N, D]
        x = vit.norm(x)
        return rearrange(x, "(b t) n d -> b t n d", t=num_frames)
