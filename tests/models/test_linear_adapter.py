"""The mergeable linear adapters: merge() gives the same outputs, a plain timm ViT's parameters and FLOPs."""

from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from aim_video.models.build import build_model
from aim_video.models.linear_adapter import AdaptedLinear, LinearAdapter
from aim_video.profiling.flops import model_flops_per_clip
from tests.models.conftest import NUM_FRAMES, perturb_adapters, random_vit, tiny_cfg


def _trained(method: str, **fields) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(tiny_cfg(method=method, **fields), NUM_FRAMES)
    model.backbone.load_state_dict(random_vit().state_dict(), strict=False)
    perturb_adapters(model, std=0.1)  # as if trained: every adapter far from its identity init
    return model.eval()


@pytest.mark.parametrize("method", ["linear_adapter", "lora"])
def test_merged_model_is_a_plain_vit_with_the_same_outputs(method: str) -> None:
    model = _trained(method)
    video = torch.randn(3, NUM_FRAMES, 3, 32, 32)
    with torch.no_grad():
        before = model(video)
    assert model.parameter_counts()[1] > sum(p.numel() for p in random_vit().parameters()) + 5 * 64 + 5
    merged = model.merge()
    with torch.no_grad():
        after = merged(video)
    assert (after - before).abs().max().item() < 1e-4
    assert not torch.allclose(before, build_model(tiny_cfg(method="linear_probe"), NUM_FRAMES).eval()(video))
    plain = random_vit()  # the image model: timm ViT without classifier
    head = 64 * 5 + 5
    assert merged.parameter_counts()[1] == sum(p.numel() for p in plain.parameters()) + head
    types = {name: type(m) for name, m in merged.backbone.named_modules()}
    assert types == {name: type(m) for name, m in plain.named_modules()}  # every wrapper folded away
    assert isinstance(merged.backbone, VisionTransformer)
    assert set(merged.backbone.state_dict()) == set(plain.state_dict())
    assert merged.trainable_parameter_names() == ["head.weight", "head.bias"]


def test_merged_inference_flops_equal_the_plain_vit() -> None:
    model = _trained("linear_adapter")
    probe = build_model(tiny_cfg(method="linear_probe"), NUM_FRAMES)
    cpu = torch.device("cpu")
    unmerged = model_flops_per_clip(model, NUM_FRAMES, 32, cpu, torch.float32)["forward"]
    plain = model_flops_per_clip(probe, NUM_FRAMES, 32, cpu, torch.float32)["forward"]
    merged = model_flops_per_clip(model.merge(), NUM_FRAMES, 32, cpu, torch.float32)["forward"]
    assert merged == plain < unmerged


def test_adapter_matrix_and_placement() -> None:
    adapter = LinearAdapter(6, rank=2)
    assert torch.equal(adapter.matrix(), torch.eye(6))  # identity at init
    with torch.no_grad():
        adapter.up.weight.normal_()
    x = torch.randn(4, 6)
    torch.testing.assert_close(adapter(x), x @ adapter.matrix().T)
    base = nn.Linear(6, 3)
    wrapped = AdaptedLinear(base, 2, before=True, after=True)
    assert wrapped.weight is base.weight and wrapped.bias is base.bias  # timm's keys, no copy
    perturb = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (wrapped.before.up.weight, wrapped.after.up.weight):
            p.copy_(torch.randn(p.shape, generator=perturb))
    torch.testing.assert_close(wrapped.merged()(x), wrapped(x), atol=1e-5, rtol=1e-5)


def test_merge_refuses_models_without_mergeable_modules() -> None:
    with pytest.raises(ValueError, match="cannot be merged"):
        build_model(tiny_cfg(method="vpt_shallow"), NUM_FRAMES).merge()
    with pytest.raises(ValueError, match="nothing to merge"):
        build_model(tiny_cfg(method="linear_probe"), NUM_FRAMES).merge()
