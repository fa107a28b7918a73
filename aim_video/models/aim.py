"""AIM (Yang et al., ICLR 2023) around a timm VisionTransformer: a frozen image model adapted to video.

Each timm ``Block`` becomes an :class:`AIMBlock` that *takes over* the block's own ``norm1``, ``attn``, ``ls1``,
``norm2``, ``mlp`` and ``ls2`` modules (the same objects, so the state-dict keys stay timm's
``blocks.{i}.norm1.weight`` ...). Per block, in the paper's order:

1. temporal adaptation: the block's own frozen ``norm1`` and ``attn`` run over the time axis
   (``(b t) n d -> (b n) t d``), then a no-skip adapter; added back through drop_path;
2. spatial adaptation: ``x + S_adapter(attn(norm1(x)))``, the adapter with a skip;
3. joint adaptation: ``x + mlp(h) + drop_path(scale * MLP_adapter(h))`` with ``h = norm2(x)``.

The network adds a zero-initialised temporal embedding before ``norm_pre``, keeps the final norm trainable and
classifies the mean over frames of the per-frame CLS token (dropout, then a linear head with std 0.01).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from einops import rearrange
from timm.models.vision_transformer import Attention, Block, VisionTransformer
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.checkpoint import checkpoint

from aim_video.models.adapter import Adapter
from aim_video.models.video_model import VideoModelMixin, check_backbone

log = logging.getLogger(__name__)


class DropPath(nn.Module):
    """Per-sample stochastic depth as timm's ``DropPath``, with the rate held in a tensor instead of a Python float.

    In AIM's blocks a sample is a frame (tokens are ``[(B T), N, D]``): each frame keeps or drops the temporal and
    MLP-adapter branches on its own. The authors' code fed timm's module sequence-first tensors, so its mask was per
    token position, shared by the batch; textbook stochastic depth would drop per clip. The spec names the rate (0.2)
    but not the unit; this choice is not measured against the others.

    ``torch.compile`` specialises on Python floats: with timm's module every block of a depth-scaled schedule
    (0, 0.018, 0.036, ...) compiled its own graph, and past dynamo's recompile limit (8) the remaining blocks silently
    ran uncompiled. With the rate in a (non-persistent) buffer all blocks share one graph.
    """

    def __init__(self, rate: float) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop-path rate must be in [0, 1), got {rate}")
        self.register_buffer("rate", torch.tensor(float(rate)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.rate.to(x.dtype)
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * (mask / keep)

    def extra_repr(self) -> str:
        return f"rate={self.rate.item():.3f}"


# How the temporal branch computes its attention over T frames (the same frozen weights and result every way, up to
# rounding in bf16/fp16, where "matmul" rounds the scores to the input dtype before its float32 softmax): the
# block's own module with torch's default SDPA kernel ("sdpa"), the same under SDPA's math backend ("math"), or the
# softmax written out over the module's projections, as batched matmuls ("matmul") or as broadcast products summed
# over the head dimension ("reduce"). Sequences of 8 tokens by the thousand are a shape the fused kernels are not
# built for: on an H200 the temporal call took 3.7x the spatial one with SDPA and 0.53x that with "matmul", which
# made the ViT-B/16 8-frame training step 1.19x faster compiled, 1.08x eager, and about even at 16 frames; at 32
# frames eager it was 3-6% slower (docs/benchmarks.md). The 8-frame ViT-B recipes set it; "sdpa" stays the default.
TEMPORAL_ATTENTION = ("sdpa", "math", "matmul", "reduce")


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v as two batched matmuls, the softmax in float32 (scale: 1/sqrt(d) if None); the
    scores come out of the matmul in the input dtype (bf16 under mixed precision: kept so for the speed measured)."""
    q = q * (q.shape[-1] ** -0.5 if scale is None else scale)
    return (q @ k.transpose(-2, -1)).float().softmax(-1).to(v.dtype) @ v


def reduce_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The same as broadcast products summed over the head dimension, then over the keys, all in float32 (a
    compiler fuses them into a few kernels; eager materialises [.., N, N, d])."""
    q = q.float() * (q.shape[-1] ** -0.5 if scale is None else scale)
    probs = (q.unsqueeze(-2) * k.float().unsqueeze(-3)).sum(-1).softmax(-1)  # [.., N, N]
    return (probs.unsqueeze(-1) * v.float().unsqueeze(-3)).sum(-2).to(v.dtype)


WRITTEN_OUT = {"matmul": matmul_attention, "reduce": reduce_attention}


def attend_written_out(attn: Attention, x: torch.Tensor, core: str) -> torch.Tensor:
    """``attn(x)`` for timm's plain ``Attention`` with the softmax written out (``core``: matmul | reduce).

    The softmax in float32 (the scores too with "reduce"); everything else as timm computes it (qkv, q/k norms,
    output norm, proj).
    """
    b, n, _ = x.shape
    q, k, v = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    out = WRITTEN_OUT[core](attn.q_norm(q), attn.k_norm(k), v, attn.scale)  # [B, H, N, d]
    out = attn.norm(out.transpose(1, 2).reshape(b, n, attn.attn_dim))
    return attn.proj_drop(attn.proj(out))


class AIMBlock(nn.Module):
    """A frozen pre-norm timm ``Block`` with AIM's temporal, spatial and joint adapters around it.

    Adapters that are switched off are absent (no parameters); with all of them off the block computes exactly the
    original timm block. ``num_temporal_adapters=2`` is the SSv2 variant: one more skip adapter right after
    ``norm1`` on the temporal branch.
    """

    def __init__(
        self,
        block: Block,
        *,
        spatial: bool = True,
        temporal: bool = True,
        joint: bool = True,
        ratio: float = 0.25,
        num_temporal_adapters: int = 1,
        mlp_adapter_scale: float = 0.5,
        drop_path: float | None = None,
        temporal_attention: str = "sdpa",
    ) -> None:
        super().__init__()
        if temporal_attention not in TEMPORAL_ATTENTION:
            raise ValueError(
                f"model.temporal_attention must be one of {', '.join(TEMPORAL_ATTENTION)}, got {temporal_attention!r}"
            )
        if type(block) is not Block:
            raise TypeError(
                f"AIM adapts timm's pre-norm vision_transformer.Block, got {type(block).__name__}; "
                "pick a ViT architecture built from plain Blocks (e.g. vit_base_patch16_clip_quickgelu_224)"
            )
        if num_temporal_adapters not in (1, 2):
            raise ValueError(f"model.num_temporal_adapters must be 1 or 2 (SSv2 variant), got {num_temporal_adapters}")
        dim = block.norm1.weight.shape[0]
        # the block's own frozen modules: same objects, no copies, timm's key names
        self.norm1 = block.norm1
        self.attn = block.attn
        self.ls1 = block.ls1
        self.norm2 = block.norm2
        self.mlp = block.mlp
        self.ls2 = block.ls2
        # new trainable modules
        self.t_adapter_in = Adapter(dim, ratio, skip=True) if temporal and num_temporal_adapters == 2 else None
        self.t_adapter = Adapter(dim, ratio, skip=False) if temporal else None
        self.s_adapter = Adapter(dim, ratio, skip=True) if spatial else nn.Identity()
        self.mlp_adapter = Adapter(dim, ratio, skip=False) if joint else None
        self.mlp_adapter_scale = mlp_adapter_scale
        self.temporal_attention = temporal_attention
        if temporal_attention in ("matmul", "reduce") and (
            type(self.attn) is not Attention or getattr(self.attn, "gate", None) is not None or self.attn.attn_drop.p
        ):
            drop = getattr(getattr(self.attn, "attn_drop", None), "p", 0)
            raise ValueError(
                f"model.temporal_attention={temporal_attention} writes out timm's plain Attention without gate or "
                f"attention dropout; this backbone's is {type(self.attn).__name__}"
                + (f" with attention dropout {drop}" if drop else "")
                + ": set model.temporal_attention=sdpa (the ViT-B/16 8-frame recipes set matmul)"
            )
        # None: no stochastic depth; a rate (0 too, so every block of a scheduled model shares one compiled graph)
        self.drop_path = DropPath(drop_path) if drop_path is not None else nn.Identity()

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x``: tokens ``[B*T, N, D]`` (frame-major within each clip) -> same shape."""
        if self.t_adapter is not None:
            n = x.shape[1]
            xt = rearrange(x, "(b t) n d -> (b n) t d", t=num_frames)  # [B*N, T, D]: each token over time
            xt = self.norm1(xt)
            if self.t_adapter_in is not None:
                xt = self.t_adapter_in(xt)
            xt = self.t_adapter(self.temporal_attend(xt))  # the block's own frozen attention over the T axis
            xt = rearrange(xt, "(b n) t d -> (b t) n d", n=n)  # [B*T, N, D]
            x = x + self.drop_path(xt)
        x = x + self.ls1(self.s_adapter(self.attn(self.norm1(x))))  # spatial: over the N axis, adapter with skip
        h = self.norm2(x)
        if self.mlp_adapter is not None:
            x = x + self.ls2(self.mlp(h)) + self.drop_path(self.mlp_adapter_scale * self.mlp_adapter(h))
        else:
            x = x + self.ls2(self.mlp(h))
        return x

    def temporal_attend(self, xt: torch.Tensor) -> torch.Tensor:
        """The block's frozen attention over ``xt`` [B*N, T, D], computed the `temporal_attention` way."""
        if self.temporal_attention == "sdpa":
            return self.attn(xt)
        if self.temporal_attention == "math":
            with sdpa_kernel(SDPBackend.MATH):
                return self.attn(xt)
        return attend_written_out(self.attn, xt, self.temporal_attention)


class AIMVisionTransformer(VideoModelMixin, nn.Module):
    """Video classifier: a timm ViT (frozen) with AIM blocks, temporal embedding, trainable final norm and head.

    Input float ``[B, T, C, H, W]`` (normalised frames) -> logits ``[B, num_classes]``. The backbone lives in
    ``self.backbone`` with timm's own key names; everything but :meth:`trainable_parameter_names` is frozen here.
    """

    def __init__(
        self,
        backbone: VisionTransformer,
        num_frames: int,
        num_classes: int,
        *,
        adapter_blocks: Sequence[int] | None = None,
        ratio: float = 0.25,
        spatial: bool = True,
        temporal: bool = True,
        joint: bool = True,
        num_temporal_adapters: int = 1,
        mlp_adapter_scale: float = 0.5,
        temporal_embedding: bool = True,
        drop_path_rate: float = 0.2,
        head_dropout: float = 0.5,
        temporal_attention: str = "sdpa",
    ) -> None:
        super().__init__()
        check_backbone(backbone)
        depth = len(backbone.blocks)
        adapted = set(range(depth) if adapter_blocks is None else adapter_blocks)
        # drop_path rises linearly over depth, as in the paper (0 at the first block); None: off in every block
        rates = [drop_path_rate * i / max(depth - 1, 1) if drop_path_rate > 0 else None for i in range(depth)]
        backbone.blocks = nn.Sequential(
            *[
                AIMBlock(
                    blk,
                    spatial=spatial and i in adapted,
                    temporal=temporal and i in adapted,
                    joint=joint and i in adapted,
                    ratio=ratio,
                    num_temporal_adapters=num_temporal_adapters,
                    mlp_adapter_scale=mlp_adapter_scale,
                    drop_path=rates[i],
                    temporal_attention=temporal_attention,
                )
                for i, blk in enumerate(backbone.blocks)
            ]
        )
        backbone.reset_classifier(0)  # the image classifier (CLIP's proj) is unused; the video head is below
        self.backbone = backbone
        self.num_frames = num_frames
        self.num_classes = num_classes
        dim = backbone.embed_dim
        self.temporal_embed = nn.Parameter(torch.zeros(1, num_frames, dim)) if temporal_embedding else None
        self.add_head(dim, num_classes, head_dropout)
        self.grad_checkpointing = False
        self.freeze()

    # -- trainable set -------------------------------------------------------------------------------------------
    def new_parameter_names(self) -> list[str]:
        """Parameters AIM adds to the image model (adapters, temporal embedding, head): absent from its checkpoint."""
        adapter_prefixes = tuple(f"{name}." for name, m in self.named_modules() if isinstance(m, Adapter))
        return [
            name
            for name, _ in self.named_parameters()
            if name.startswith(adapter_prefixes) or name == "temporal_embed" or name.startswith("head.")
        ]

    def trainable_parameter_names(self) -> list[str]:
        """Adapters, temporal embedding, final norm and head, in ``named_parameters`` order."""
        trainable = set(self.new_parameter_names()) | {
            f"backbone.norm.{n}" for n, _ in self.backbone.norm.named_parameters()
        }
        return [name for name, _ in self.named_parameters() if name in trainable]

    # -- forward ------------------------------------------------------------------------------------------------
    def forward_features(self, video: torch.Tensor) -> torch.Tensor:
        """``[B, T, C, H, W]`` -> final-norm tokens ``[B, T, N, D]`` (N includes CLS and any register tokens)."""
        if video.ndim != 5:
            raise ValueError(f"expected video [B, T, C, H, W], got shape {tuple(video.shape)}")
        num_frames = video.shape[1]
        if self.temporal_embed is not None and num_frames != self.num_frames:
            raise ValueError(f"model was built for {self.num_frames} frames, got clips of {num_frames}")
        vit = self.backbone
        x = rearrange(video, "b t c h w -> (b t) c h w")  # frames through the image stem one by one
        x = vit.patch_embed(x)  # [B*T, HW, D]
        x = vit._pos_embed(x)  # [B*T, N, D]: CLS prepended, spatial position embedding added
        x = vit.patch_drop(x)
        if self.temporal_embed is not None:
            x = rearrange(x, "(b t) n d -> b t n d", t=num_frames)
            x = x + self.temporal_embed[:, :, None, :].to(x.dtype)  # frame t's embedding on all its tokens
            x = rearrange(x, "b t n d -> (b t) n d")
        x = vit.norm_pre(x)
        for blk in vit.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(blk, x, num_frames, use_reentrant=False)
            else:
                x = blk(x, num_frames)
        x = vit.norm(x)
        return rearrange(x, "(b t) n d -> b t n d", t=num_frames)
