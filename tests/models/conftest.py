"""Tiny ViTs and checkpoints in the real OpenAI CLIP / timm layouts, built at test time (no downloads)."""

from __future__ import annotations

import copy
import warnings

import pytest
import timm
import torch
from torch import nn

from aim_video.config import ModelConfig
from aim_video.models.aim import AIMVisionTransformer
from aim_video.models.build import build_model

TINY_CLIP = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
CLIP_ARCH = "vit_base_patch16_clip_quickgelu_224"
TIMM_ARCH = "vit_tiny_patch16_224"
NUM_FRAMES = 4


def tiny_cfg(arch: str = CLIP_ARCH, **overrides) -> ModelConfig:
    fields = dict(arch=arch, vit_kwargs=dict(TINY_CLIP), num_classes=5, drop_path_rate=0.0, head_dropout=0.0)
    fields.update(overrides)
    return ModelConfig(**fields)


def random_vit(arch: str = CLIP_ARCH, seed: int = 0, **kwargs) -> nn.Module:
    """A frozen-backbone stand-in whose every weight (norms, biases, embeddings too) is non-trivial."""
    torch.manual_seed(seed)
    vit = timm.create_model(arch, pretrained=False, num_classes=0, **{**TINY_CLIP, **kwargs})
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return vit.eval()


def aim_from(vit: nn.Module, **kwargs) -> AIMVisionTransformer:
    """AIM around a deep copy of `vit` (same weights), for frame-by-frame comparisons."""
    kwargs = {"num_frames": NUM_FRAMES, "num_classes": 5, "drop_path_rate": 0.0, "head_dropout": 0.0, **kwargs}
    return AIMVisionTransformer(copy.deepcopy(vit), **kwargs)


def perturb_adapters(model: AIMVisionTransformer, seed: int = 1, std: float = 0.05) -> None:
    """Move every trainable tensor away from its init (zero second layers, zero temporal embedding)."""
    gen = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in model.trainable_parameter_names():
            params[name].add_(std * torch.randn(params[name].shape, generator=gen).to(params[name].device))


def openai_visual_state(vit: nn.Module, prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """The OpenAI CLIP visual-tower keys and shapes for a timm CLIP ViT's weights, written out by hand."""
    sd = vit.state_dict()
    out = {
        "conv1.weight": sd["patch_embed.proj.weight"],
        "class_embedding": sd["cls_token"][0, 0],
        "positional_embedding": sd["pos_embed"][0],
        "ln_pre.weight": sd["norm_pre.weight"],
        "ln_pre.bias": sd["norm_pre.bias"],
        "ln_post.weight": sd["norm.weight"],
        "ln_post.bias": sd["norm.bias"],
        "proj": torch.randn(sd["norm.weight"].shape[0], 32),  # [D, embed]: CLIP's projection, unused by AIM
    }
    for i in range(len(vit.blocks)):
        src, dst = f"blocks.{i}.", f"transformer.resblocks.{i}."
        pairs = {
            "ln_1": "norm1",
            "attn.in_proj_": "attn.qkv.",
            "attn.out_proj.": "attn.proj.",
            "ln_2": "norm2",
            "mlp.c_fc": "mlp.fc1",
            "mlp.c_proj": "mlp.fc2",
        }
        for clip_part, timm_part in pairs.items():
            for key, value in sd.items():
                if key.startswith(src + timm_part):
                    out[dst + clip_part + key[len(src + timm_part) :]] = value
    return {prefix + k: v for k, v in out.items()}


def openai_full_state(vit: nn.Module) -> dict[str, torch.Tensor]:
    """Whole-CLIP state dict as in OpenAI's .pt: visual tower, a text tower and integer entries, all fp16."""
    width = 32
    state = {k: v.half() for k, v in openai_visual_state(vit).items()}
    state.update(
        {
            "positional_embedding": torch.randn(77, width).half(),
            "text_projection": torch.randn(width, 32).half(),
            "logit_scale": torch.tensor(4.6).half(),
            "token_embedding.weight": torch.randn(100, width).half(),
            "transformer.resblocks.0.attn.in_proj_weight": torch.randn(3 * width, width).half(),
            "transformer.resblocks.0.ln_1.weight": torch.ones(width).half(),
            "ln_final.weight": torch.ones(width).half(),
            "input_resolution": torch.tensor(224),
            "context_length": torch.tensor(77),
            "vocab_size": torch.tensor(49408),
        }
    )
    return state


class _Node(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_torchscript(state: dict[str, torch.Tensor], path: str) -> None:
    """A TorchScript archive whose state_dict() is `state`, like OpenAI's released ViT-B-16.pt."""
    root = _Node()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        node = root
        for part in parents:
            if not hasattr(node, part):
                node.add_module(part, _Node())
            node = getattr(node, part)
        if value.is_floating_point():
            node.register_parameter(leaf, nn.Parameter(value.clone(), requires_grad=False))
        else:
            node.register_buffer(leaf, value.clone())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, yet it is OpenAI's file format
        torch.jit.save(torch.jit.script(root), path)


@pytest.fixture
def tiny_model() -> AIMVisionTransformer:
    return build_model(tiny_cfg(), NUM_FRAMES)
