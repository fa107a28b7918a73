"""``build_model(cfg.model, num_frames)``: the one place that reads ModelConfig and assembles an AIM model."""

from __future__ import annotations

import logging

import timm
from timm.models.vision_transformer import VisionTransformer

from aim_video.config import ModelConfig
from aim_video.models.aim import AIMVisionTransformer
from aim_video.models.pretrained import load_pretrained

log = logging.getLogger(__name__)


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


def create_backbone(cfg: ModelConfig) -> VisionTransformer:
    """The timm ViT named by ``cfg.arch`` with ``cfg.vit_kwargs``, random weights (never downloaded)."""
    kwargs = dict(cfg.vit_kwargs)
    for key in ("pretrained", "num_classes", "drop_path_rate"):
        if key in kwargs:
            raise ValueError(
                f"model.vit_kwargs.{key} is set by aim-video (use model.pretrained, model.num_classes, "
                "model.drop_path_rate); remove it from model.vit_kwargs"
            )
    if not timm.is_model(cfg.arch):
        raise ValueError(
            f"model.arch={cfg.arch!r} is not a timm architecture; e.g. vit_base_patch16_clip_quickgelu_224 "
            "(OpenAI CLIP weights) or vit_base_patch16_224"
        )
    try:
        # drop_path stays off in the frozen branches; AIM puts it on its own temporal and MLP-adapter branches
        backbone = timm.create_model(cfg.arch, pretrained=False, num_classes=0, drop_path_rate=0.0, **kwargs)
    except TypeError as err:
        raise ValueError(f"model.vit_kwargs does not fit timm's {cfg.arch}: {err}") from None
    if not isinstance(backbone, VisionTransformer):
        raise ValueError(f"model.arch={cfg.arch!r} builds a {type(backbone).__name__}; AIM needs a ViT")
    return backbone


def build_model(cfg: ModelConfig, num_frames: int) -> AIMVisionTransformer:
    """AIM model for clips of ``num_frames``: backbone, adapters, pretrained weights, checkpointing, compile.

    Input float ``[B, T, C, H, W]`` -> logits ``[B, cfg.num_classes]``; only the trainable set requires grad.
    """
    backbone = create_backbone(cfg)
    model = AIMVisionTransformer(
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
    )
    if cfg.pretrained:
        load_pretrained(model, cfg.pretrained)
    else:
        log.warning("model.pretrained is empty: the frozen backbone keeps its RANDOM initialisation")
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    if cfg.compile:
        model.compile_blocks()
    trainable, total = model.parameter_counts()
    log.info(
        "AIM %s, %d frames: %.3f M trainable of %.3f M parameters (%d tensors trainable)",
        cfg.arch,
        num_frames,
        trainable / 1e6,
        total / 1e6,
        len(model.trainable_parameter_names()),
    )
    return model
