"""tools/bench_model.py: the authors'-style model (b) computes what aim-video's model (a) computes."""

from __future__ import annotations

import json

import pytest
import torch

from aim_video.config import ModelConfig
from aim_video.models.build import build_model
from aim_video.profiling.flops import model_flops_per_clip
from tests.models.conftest import CLIP_ARCH, NUM_FRAMES, perturb_adapters, tiny_cfg
from tools.bench_model import AuthorsAIM, LiveTensorPeak, main, step_flops

TINY = '{"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 4}'


@pytest.mark.parametrize("variant", [{}, {"num_temporal_adapters": 2, "mlp_adapter_scale": 1.0}])
def test_authors_layout_matches_aim_and_shares_weights(variant: dict) -> None:
    torch.manual_seed(0)
    aim = build_model(tiny_cfg(**variant), NUM_FRAMES).eval()
    perturb_adapters(aim, std=0.1)
    authors = AuthorsAIM(aim).eval()
    video = torch.randn(2, NUM_FRAMES, 3, 32, 32)
    with torch.no_grad():
        diff = (aim(video) - authors(video)).abs().max().item()
        assert diff <= 1e-4
        aim.backbone.blocks[1].t_adapter.fc2.bias.add_(1.0)  # one shared weight changes both models alike
        assert (aim(video) - authors(video)).abs().max().item() <= 1e-4
        assert (aim(video) - authors(video.flip(1))).abs().max().item() > 1e-3  # frame order matters to both
    shared = {id(p) for p in aim.parameters()}
    assert all(id(p) in shared for p in authors.parameters())


def test_step_flops_are_the_profilers_count_whatever_checkpointing_was_left_on() -> None:
    """(c)'s FLOPs were counted after (a)'s timing loop had left checkpointing on, so they held the recomputed
    forward (ViT-B/16 8x224: 1613 instead of 1217 GFLOP per clip), and by a bare FlopCounterMode, which on CPU
    misses the flash-attention kernel (816 instead of 858 for (a))."""
    torch.manual_seed(0)
    aim = build_model(tiny_cfg(), NUM_FRAMES).train()
    video, labels = torch.randn(2, NUM_FRAMES, 3, 32, 32), torch.tensor([0, 3])

    def per_clip() -> int:
        return model_flops_per_clip(aim, NUM_FRAMES, 32, torch.device("cpu"), torch.float32)["train"]

    adapters = per_clip()
    assert step_flops(aim, video, labels) == 2 * adapters  # attention counted: the profiler's count, per clip
    for p in aim.parameters():  # (c): every parameter trainable
        p.requires_grad_(True)
    full = per_clip()
    assert full > adapters  # weight gradients of the backbone
    aim.set_grad_checkpointing(True)  # as (a)'s last timed configuration leaves it
    assert step_flops(aim, video, labels) == 2 * full
    assert aim.grad_checkpointing and all(p.grad is None for p in aim.parameters())


def test_live_tensor_peak_counts_activations_and_grads() -> None:
    layer = torch.nn.Linear(256, 1024)
    x = torch.randn(128, 256)
    with LiveTensorPeak([*layer.parameters(), x]) as tracker:
        layer(x).relu().sum().backward()
    params, inputs, act = (256 * 1024 + 1024) * 4, 128 * 256 * 4, 128 * 1024 * 4
    assert tracker.peak >= params * 2 + inputs + act  # weights, their grads, input, one [128, 1024] activation
    assert tracker.peak <= params * 2 + inputs + 3 * act


@pytest.mark.slow  # 18 timed training steps of a tiny model: ~20 s alone, minutes on a loaded machine
def test_bench_runs_end_to_end_and_reports_ratios(tmp_path) -> None:
    out = tmp_path / "bench.json"
    args = ["--vit-kwargs", TINY, "--img-size", "32", "--frames", "4", "--batch", "2", "--steps", "1"]
    results = main(
        [*args, "--warmup", "0", "--dtypes", "fp32", "--json", str(out), "--temporal-attention", "sdpa,reduce"]
    )
    assert out.exists() and results["max_abs_diff_a_b_fp32"] <= 1e-4
    # (a) and (c) with each temporal attention, (b) its own way; checkpointing off/on
    assert [(r["variant"], r["attn"]) for r in results["rows"][::2]] == [
        ("a", "sdpa"), ("a", "reduce"), ("b", "-"), ("c", "sdpa"), ("c", "reduce")
    ]  # fmt: skip
    rows = {(r["variant"], r["ckpt"]): r for r in results["rows"] if r["attn"] in ("sdpa", "-")}
    assert rows[("a", True)]["peak_mib"] < rows[("a", False)]["peak_mib"]
    assert rows[("a", False)]["peak_mib"] < rows[("c", False)]["peak_mib"]  # grads + AdamW state for all weights
    assert results["step_flops"]["a"] < results["step_flops"]["c"]  # exact counts: a tiny model rounds to 0.1 GFLOP
    # (c) is counted after (a)'s timing left checkpointing on, yet without the recomputed forward, as (a) is
    cfg = ModelConfig(arch=CLIP_ARCH, vit_kwargs=json.loads(TINY), num_classes=400, drop_path_rate=0.0)
    model = build_model(cfg, 4)
    counted = {"a": model_flops_per_clip(model, 4, 32, torch.device("cpu"), torch.float32)["train"]}
    for p in model.parameters():
        p.requires_grad_(True)
    counted["c"] = model_flops_per_clip(model, 4, 32, torch.device("cpu"), torch.float32)["train"]
    assert results["step_flops"] == {k: 2 * v for k, v in counted.items()}  # batch 2
    assert "time a/b fp32,ckpt=off" in results["ratios"] and "time a/c fp32,ckpt=off,reduce" in results["ratios"]
    assert "time a reduce/sdpa fp32,ckpt=off" in results["ratios"]
