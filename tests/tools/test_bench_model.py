"""tools/bench_model.py: the authors'-style model (b) computes what aim-video's model (a) computes."""

from __future__ import annotations

import pytest
import torch

from aim_video.models.build import build_model
from tests.models.conftest import NUM_FRAMES, perturb_adapters, tiny_cfg
from tools.bench_model import AuthorsAIM, LiveTensorPeak, main

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
    assert results["step_gflops"]["a"] < results["step_gflops"]["c"]
    assert "time a/b fp32,ckpt=off" in results["ratios"] and "time a/c fp32,ckpt=off,reduce" in results["ratios"]
    assert "time a reduce/sdpa fp32,ckpt=off" in results["ratios"]
