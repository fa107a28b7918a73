"""``build_model(cfg.model, num_frames)``: the one place that reads ModelConfig and assembles a video model.

``model.method`` picks the method on the same frozen timm backbone: ``aim`` (the default; its spatial, temporal and
joint adapters and the temporal embedding switch on and off through their own flags) or one of the frame-by-frame
baselines of :mod:`aim_video.models.frame_vit`: ``linear_probe`` (head only), ``full_finetune`` (every backbone
parameter), ``lora`` (attention projections), ``vpt_shallow`` / ``vpt_deep`` (prompt tokens per frame) and
``linear_adapter`` (ZeroI2V-style adapters that ``merge()`` folds into the weights).

A setting that the chosen method does not read (:data:`READ_BY`) is refused unless it keeps its default, so that no
run silently trains something other than what its config says.
"""

from __future__ import annotations

import logging
from typing import Any

import timm
import torch
from timm.models.vision_transformer import VisionTransformer

from aim_video.config import ConfigError, ModelConfig
from aim_video.models.aim import AIMVisionTransformer, DropPath
from aim_video.models.frame_vit import FrameViT
from aim_video.models.linear_adapter import apply_linear_adapters
from aim_video.models.lora import apply_lora
from aim_video.models.pretrained import load_pretrained
from aim_video.models.vpt import VisualPrompts

METHODS = ("aim", "linear_probe", "full_finetune", "lora", "vpt_shallow", "vpt_deep", "linear_adapter")
VideoModel = AIMVisionTransformer | FrameViT

log = logging.getLogger(__name__)

AIM_ONLY = ("adapter_ratio", "adapter_layers", "spatial_adapter", "temporal_adapter", "joint_adapter",
            "num_temporal_adapters", "mlp_adapter_scale", "temporal_embedding", "temporal_attention")  # fmt: skip
# ModelConfig keys that only some methods read (every other key is read by every method)
READ_BY: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(AIM_ONLY, ("aim",)),
    "drop_path_rate": ("aim", "full_finetune"),  # the frozen-backbone baselines run their ViT without stochastic depth
    "lora_rank": ("lora",),
    "lora_alpha": ("lora",),
    "prompt_tokens": ("vpt_shallow", "vpt_deep"),
    "linear_adapter_rank": ("linear_adapter",),
}
# what a method that does not read the key behaves as; accepted besides the schema default
UNREAD_VALUE: dict[str, Any] = {"drop_path_rate": 0.0}


def parse_adapter_layers(spec: str, depth: int) -> list[int]:
    """Block indices that get adapters: ``all``, ``none``, ``top:K`` (the K blocks nearest the output),
    ``bottom:K`` (the first K), ``every:K`` (blocks 0, K, 2K, ...) or a comma-separated index list."""
    spec = spec.strip().lower()
    bad = ValueError(
        f"model.adapter_layers={spec!r} is not one of all | none | top:K | bottom:K | every:K | i,j,... "
        f"(with 1 <= K <= depth={depth} and indices in [0, {depth - 1}])"
    )
    if spec == "all":
        return list(range(depth))
    if spec in ("none", ""):
        return []
    if ":" in spec:
        kind, _, value = spec.partition(":")
        if not value.strip().isdigit() or not 1 <= int(value) <= depth:
            raise bad
        k = int(value)
        choices = {"top": range(depth - k, depth), "bottom": range(k), "every": range(0, depth, k)}
        if kind not in choices:
            raise bad
        return list(choices[kind])
    try:
        indices = sorted({int(part) for part in spec.split(",")})
    except ValueError:
        raise bad from None
    if not all(0 <= i < depth for i in indices):
        raise bad
    return indices


def create_backbone(cfg: ModelConfig, input_size: int | None = None) -> VisionTransformer:
    """The timm ViT named by ``cfg.arch`` with ``cfg.vit_kwargs``, random weights (never downloaded), for frames of
    ``input_size`` pixels (data.input_size; the position embeddings of a checkpoint are resampled to it)."""
    kwargs = dict(cfg.vit_kwargs)
    for key, value in kwargs.items():  # timm drops None kwargs: `{depth:2}` (no space) would build the full ViT
        if value is None and ":" in str(key):
            raise ConfigError(
                f"model.vit_kwargs: YAML read {key!r} as a key with no value: write "
                f"{{{key.replace(':', ': ', 1)}}} with a space after the colon, e.g. "
                "model.vit_kwargs='{embed_dim: 64, depth: 2}'"
            )
        if value is None:
            raise ConfigError(f"model.vit_kwargs.{key} has no value: give it one or remove it")
    for key in ("pretrained", "num_classes", "drop_path_rate"):
        if key in kwargs:
            raise ValueError(
                f"model.vit_kwargs.{key} is set by aim-video (use model.pretrained, model.num_classes, "
                "model.drop_path_rate); remove it from model.vit_kwargs"
            )
    if input_size is not None:
        given = kwargs.setdefault("img_size", input_size)
        if given != input_size:
            raise ConfigError(
                f"model.vit_kwargs.img_size={given} but data.input_size={input_size}: the frames are cropped to "
                "data.input_size; remove model.vit_kwargs.img_size (the model follows data.input_size)"
            )
    if not timm.is_model(cfg.arch):
        raise ValueError(
            f"model.arch={cfg.arch!r} is not a timm architecture; e.g. vit_base_patch16_clip_quickgelu_224 "
            "(OpenAI CLIP weights) or vit_base_patch16_224"
        )
    try:
        # drop_path stays off in timm's blocks: AIM puts it on its own branches, full fine-tuning adds it below
        backbone = timm.create_model(cfg.arch, pretrained=False, num_classes=0, drop_path_rate=0.0, **kwargs)
    except (TypeError, ValueError, AssertionError) as err:  # an unknown keyword; width not divisible by heads, ...
        raise ConfigError(f"model.vit_kwargs={dict(cfg.vit_kwargs)} does not fit timm's {cfg.arch}: {err}") from None
    if not isinstance(backbone, VisionTransformer):
        raise ValueError(f"model.arch={cfg.arch!r} builds a {type(backbone).__name__}; AIM needs a ViT")
    return backbone


def unread_settings(method: str) -> dict[str, Any]:
    """The ModelConfig keys ``method`` does not read, each with the value it behaves as (see :data:`READ_BY`)."""
    defaults = ModelConfig()
    return {
        key: UNREAD_VALUE.get(key, getattr(defaults, key)) for key, methods in READ_BY.items() if method not in methods
    }


def check_method(cfg: ModelConfig) -> None:
    """``model.method`` is known and every setting it does not read keeps its default (else it is silently ignored)."""
    if cfg.method not in METHODS:
        raise ConfigError(f"model.method={cfg.method!r} is not one of {', '.join(METHODS)}")
    defaults = ModelConfig()
    ignored = [
        f"model.{key}={getattr(cfg, key)!r} only applies to model.method={' or '.join(READ_BY[key])}, "
        f"not model.method={cfg.method}"
        for key, value in unread_settings(cfg.method).items()
        if getattr(cfg, key) not in (getattr(defaults, key), value)
    ]
    if ignored:
        raise ConfigError("; ".join(ignored) + ": remove these settings or leave them at their defaults")


def add_drop_path(backbone: VisionTransformer, rate: float) -> None:
    """Stochastic depth on every timm block's attention and MLP branches, rising linearly from 0 to ``rate`` over
    depth (timm's schedule), for full fine-tuning. AIM's :class:`DropPath` (rate in a tensor) instead of timm's, so
    that ``model.compile`` traces every block to one graph, as for AIM."""
    depth = len(backbone.blocks)
    for i, blk in enumerate(backbone.blocks):
        blk_rate = rate * i / max(depth - 1, 1)
        blk.drop_path1, blk.drop_path2 = DropPath(blk_rate), DropPath(blk_rate)


def _build_frame_model(cfg: ModelConfig, backbone: VisionTransformer, num_frames: int) -> FrameViT:
    """The frame-by-frame baseline named by ``cfg.method`` (its added modules go in before the wrapper freezes)."""
    prompts = None
    if cfg.method == "full_finetune" and cfg.drop_path_rate > 0:
        add_drop_path(backbone, cfg.drop_path_rate)
    if cfg.method == "lora":
        apply_lora(backbone, cfg.lora_rank, cfg.lora_alpha)
    elif cfg.method == "linear_adapter":
        apply_linear_adapters(backbone, cfg.linear_adapter_rank)
    elif cfg.method in ("vpt_shallow", "vpt_deep"):
        patch_h, patch_w = backbone.patch_embed.patch_size
        prompts = VisualPrompts(
            backbone.embed_dim,
            cfg.prompt_tokens,
            depth=len(backbone.blocks) if cfg.method == "vpt_deep" else 1,
            patch_area=patch_h * patch_w,
            num_prefix_tokens=backbone.num_prefix_tokens,
        )
    return FrameViT(
        backbone,
        num_frames=num_frames,
        num_classes=cfg.num_classes,
        train_backbone=cfg.method == "full_finetune",
        prompts=prompts,
        head_dropout=cfg.head_dropout,
    )


def assemble_model(cfg: ModelConfig, num_frames: int, input_size: int | None = None) -> VideoModel:
    """The ``cfg.method`` architecture with fresh weights: checks, backbone, added modules; nothing loaded."""
    check_method(cfg)
    backbone = create_backbone(cfg, input_size)
    if cfg.method != "aim":
        return _build_frame_model(cfg, backbone, num_frames)
    return AIMVisionTransformer(
        backbone,
        num_frames=num_frames,
        num_classes=cfg.num_classes,
        adapter_blocks=parse_adapter_layers(cfg.adapter_layers, len(backbone.blocks)),
        ratio=cfg.adapter_ratio,
        spatial=cfg.spatial_adapter,
        temporal=cfg.temporal_adapter,
        joint=cfg.joint_adapter,
        num_temporal_adapters=cfg.num_temporal_adapters,
        mlp_adapter_scale=cfg.mlp_adapter_scale,
        temporal_embedding=cfg.temporal_embedding,
        drop_path_rate=cfg.drop_path_rate,
        head_dropout=cfg.head_dropout,
        temporal_attention=cfg.temporal_attention,
    )


def check_model_config(cfg: ModelConfig, num_frames: int, input_size: int | None = None) -> None:
    """Raise what :func:`build_model` would raise for ``cfg`` (apart from loading ``cfg.pretrained``), in a moment:
    the architecture is built on the meta device, with no memory for its weights."""
    with torch.device("meta"):
        assemble_model(cfg, num_frames, input_size)


def build_model(cfg: ModelConfig, num_frames: int, input_size: int | None = None) -> VideoModel:
    """The ``cfg.method`` model for clips of ``num_frames`` frames of ``input_size`` pixels (None: the size
    ``cfg.arch`` / ``cfg.vit_kwargs`` give): backbone, added modules, pretrained weights, switches.

    Input float ``[B, T, C, H, W]`` -> logits ``[B, cfg.num_classes]``; only the trainable set requires grad.
    """
    model = assemble_model(cfg, num_frames, input_size)
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
    else:
        log.warning("model.pretrained is empty: the frozen backbone keeps its RANDOM initialisation")
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    if cfg.compile:
        model.compile_blocks()
    trainable, total = model.parameter_counts()
    log.info(
        "%s %s, %d frames: %.3f M trainable of %.3f M parameters (%d tensors trainable)",
        cfg.method,
        cfg.arch,
        num_frames,
        trainable / 1e6,
        total / 1e6,
        len(model.trainable_parameter_names()),
    )
    return model
