"""Every method of build_model on a depth-2 tiny ViT: the exact trainable set (names and count), identity at init,
gradients reaching exactly the trainable set, pretrained loading, checkpointing and config errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from aim_video.models.build import METHODS, build_model
from aim_video.models.frame_vit import FrameViT
from tests.models.conftest import NUM_FRAMES, perturb_adapters, random_vit, tiny_cfg

D, K, DEPTH = 64, 5, 2  # tiny ViT width, classes, blocks (tests/models/conftest.py)
HEAD = ["head.weight", "head.bias"]
HEAD_NUMEL = D * K + K


def _aim_adapter(block: int, name: str) -> list[str]:
    return [f"backbone.blocks.{block}.{name}.{p}" for p in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")]


def _per_block(*parts: str) -> list[str]:
    return [f"backbone.blocks.{i}.{p}" for i in range(DEPTH) for p in parts]


ADAPTER_NUMEL = 2 * D * (D // 4) + D // 4 + D  # AIM adapter at ratio 0.25
FINAL_NORM = ["backbone.norm.weight", "backbone.norm.bias"]
# method name -> (config fields, exact trainable names in named_parameters order, trainable numel)
EXPECTED = {
    "aim_spatial": (
        dict(temporal_adapter=False, joint_adapter=False, temporal_embedding=False),
        [n for i in range(DEPTH) for n in _aim_adapter(i, "s_adapter")] + FINAL_NORM + HEAD,
        DEPTH * ADAPTER_NUMEL + 2 * D + HEAD_NUMEL,
    ),
    "aim_spatial_temporal": (
        dict(joint_adapter=False),
        ["temporal_embed"]
        + [n for i in range(DEPTH) for a in ("t_adapter", "s_adapter") for n in _aim_adapter(i, a)]
        + FINAL_NORM
        + HEAD,
        NUM_FRAMES * D + 2 * DEPTH * ADAPTER_NUMEL + 2 * D + HEAD_NUMEL,
    ),
    "aim": (
        {},
        ["temporal_embed"]
        + [n for i in range(DEPTH) for a in ("t_adapter", "s_adapter", "mlp_adapter") for n in _aim_adapter(i, a)]
        + FINAL_NORM
        + HEAD,
        NUM_FRAMES * D + 3 * DEPTH * ADAPTER_NUMEL + 2 * D + HEAD_NUMEL,
    ),
    "linear_probe": (dict(method="linear_probe"), HEAD, HEAD_NUMEL),
    "lora": (
        dict(method="lora", lora_rank=4),
        _per_block(*(f"attn.{m}.lora_{s}.weight" for m in ("qkv", "proj") for s in ("down", "up"))) + HEAD,
        DEPTH * ((4 * D + 3 * D * 4) + (4 * D + D * 4)) + HEAD_NUMEL,
    ),
    "vpt_shallow": (dict(method="vpt_shallow", prompt_tokens=3), ["prompts.tokens"] + HEAD, 3 * D + HEAD_NUMEL),
    "vpt_deep": (dict(method="vpt_deep", prompt_tokens=3), ["prompts.tokens"] + HEAD, DEPTH * 3 * D + HEAD_NUMEL),
    "linear_adapter": (
        dict(method="linear_adapter", linear_adapter_rank=8),
        _per_block(
            "attn.qkv.before.down.weight",
            "attn.qkv.before.up.weight",
            "attn.proj.after.down.weight",
            "attn.proj.after.up.weight",
            "mlp.fc1.before.down.weight",
            "mlp.fc1.before.up.weight",
        )
        + HEAD,
        DEPTH * 3 * (2 * D * 8) + HEAD_NUMEL,
    ),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_exact_trainable_set_names_and_count(name: str) -> None:
    fields, names, numel = EXPECTED[name]
    model = build_model(tiny_cfg(**fields), NUM_FRAMES)
    assert model.trainable_parameter_names() == names
    trainable, total = model.parameter_counts()
    assert trainable == numel
    assert [n for n, p in model.named_parameters() if p.requires_grad] == names


def test_full_finetune_trains_every_backbone_parameter_and_the_head() -> None:
    model = build_model(tiny_cfg(method="full_finetune"), NUM_FRAMES)
    backbone = [f"backbone.{n}" for n, _ in model.backbone.named_parameters()]
    assert model.trainable_parameter_names() == backbone + HEAD
    trainable, total = model.parameter_counts()
    plain = sum(p.numel() for p in random_vit().parameters())
    assert trainable == total == plain + HEAD_NUMEL


@pytest.mark.parametrize("method", [m for m in METHODS if m != "aim"])
def test_baselines_start_as_the_image_model_frame_by_frame(method: str) -> None:
    """LoRA, linear adapters start at zero updates, so only VPT (extra tokens) changes the features at init."""
    vit = random_vit()
    model = build_model(tiny_cfg(method=method), NUM_FRAMES).eval()
    model.backbone.load_state_dict(vit.state_dict(), strict=False)
    video = torch.randn(2, NUM_FRAMES, 3, 32, 32)
    with torch.no_grad():
        cls = model.forward_features(video)[:, :, 0]  # [B, T, D]
        frames = torch.stack([vit.forward_features(video[:, t])[:, 0] for t in range(NUM_FRAMES)], dim=1)
    if method.startswith("vpt"):
        assert not torch.allclose(cls, frames, atol=1e-3)
    else:
        torch.testing.assert_close(cls, frames, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "aim"])
def test_gradients_reach_exactly_the_trainable_set_with_checkpointing_too(method: str) -> None:
    video = torch.randn(2, NUM_FRAMES, 3, 32, 32)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = build_model(tiny_cfg(method=method, grad_checkpointing=ckpt), NUM_FRAMES)
        perturb_adapters(model)  # zero-initialised up-projections would give their partners zero gradients
        model(video).square().sum().backward()
        got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        assert sorted(got) == sorted(model.trainable_parameter_names())
        assert all(g.abs().sum() > 0 for g in got.values())
        grads.append(got)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "aim"])
def test_pretrained_backbone_loads_strictly_apart_from_the_new_keys(method: str, tmp_path) -> None:
    vit = random_vit()
    path = str(tmp_path / "vit.safetensors")
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    model = build_model(tiny_cfg(method=method, pretrained=path), NUM_FRAMES)
    own = model.backbone.state_dict()
    for key, value in vit.state_dict().items():
        torch.testing.assert_close(own[key], value, atol=0, rtol=0)
    assert isinstance(model, FrameViT)


def test_unknown_method_and_aim_only_settings_fail_naming_the_key() -> None:
    with pytest.raises(ValueError, match=r"model.method='prompt' is not one of aim, linear_probe, full_finetune"):
        build_model(tiny_cfg(method="prompt"), NUM_FRAMES)
    with pytest.raises(ValueError, match=r"model.adapter_layers='top:1' only applies to model.method=aim"):
        build_model(tiny_cfg(method="lora", adapter_layers="top:1"), NUM_FRAMES)
    with pytest.raises(ValueError, match=r"model.temporal_attention='reduce' only applies to model.method=aim"):
        build_model(tiny_cfg(method="linear_probe", temporal_attention="reduce"), NUM_FRAMES)
    with pytest.raises(ValueError, match=r"model.lora_rank must be >= 1"):
        build_model(tiny_cfg(method="lora", lora_rank=0), NUM_FRAMES)
    with pytest.raises(ValueError, match=r"model.prompt_tokens must be >= 1"):
        build_model(tiny_cfg(method="vpt_deep", prompt_tokens=0), NUM_FRAMES)
    with pytest.raises(ValueError, match=r"model.linear_adapter_rank must be >= 1"):
        build_model(tiny_cfg(method="linear_adapter", linear_adapter_rank=0), NUM_FRAMES)


def test_frame_models_ignore_frame_order() -> None:
    """No temporal embedding, no exchange between frames: reversing the clip leaves the logits unchanged."""
    for method in ("linear_probe", "vpt_deep", "lora"):
        model = build_model(tiny_cfg(method=method), NUM_FRAMES).eval()
        perturb_adapters(model)
        video = torch.randn(2, NUM_FRAMES, 3, 32, 32)
        with torch.no_grad():
            torch.testing.assert_close(model(video.flip(1)), model(video), atol=1e-5, rtol=1e-5)
