"""FLOP counts against analytic counts (a timm ViT block, an AIM block, a whole AIM model) and the peak table."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from aim_video.config import ModelConfig
from aim_video.models.aim import AIMBlock
from aim_video.models.build import build_model
from aim_video.profiling.flops import (
    count_flops,
    dtype_key,
    mfu,
    model_flops_per_clip,
    peak_info,
    table_peak_tflops,
)


def vit_block_flops(tokens: int, dim: int, mlp_ratio: float = 4.0) -> int:
    """Analytic FLOPs (2 per multiply-add) of one pre-norm ViT block on one sequence of `tokens` tokens.

    qkv 2*N*D*3D + q@k^T 2*N*N*D + attn@v 2*N*N*D + proj 2*N*D*D + MLP 2 * 2*N*D*(ratio*D).
    """
    n, d, hidden = tokens, dim, int(dim * mlp_ratio)
    return 6 * n * d * d + 4 * n * n * d + 2 * n * d * d + 4 * n * d * hidden


@pytest.mark.parametrize("tokens,dim", [(17, 64), (65, 32)])  # (65, 32): attention is a quarter of the block
def test_vit_block_matches_analytic_count(tokens: int, dim: int) -> None:
    block = Block(dim, num_heads=4).eval()
    x = torch.randn(3, tokens, dim)
    with torch.no_grad():
        counted = count_flops(lambda: block(x))
    analytic = 3 * vit_block_flops(tokens, dim)
    assert abs(counted - analytic) / analytic < 0.05
    assert counted == analytic  # the CPU attention kernel is counted exactly like the CUDA ones


def test_aim_block_matches_analytic_count() -> None:
    """AIM block on T frames of N tokens: the frozen block, temporal attention over T reusing its attention, and
    three bottleneck adapters (D -> D/4 -> D) on every token."""
    t, n, d = 8, 17, 64
    block = AIMBlock(Block(d, num_heads=4), ratio=0.25).eval()
    x = torch.randn(t, n, d)  # one clip: [B*T, N, D]
    with torch.no_grad():
        counted = count_flops(lambda: block(x, t))
    spatial = t * vit_block_flops(n, d)
    temporal = n * (8 * t * d * d + 4 * t * t * d)  # qkv + proj over every token, attention over the T axis
    adapters = 3 * t * n * (2 * 2 * d * (d // 4))
    analytic = spatial + temporal + adapters
    assert abs(counted - analytic) / analytic < 0.05
    assert counted == analytic


def test_model_flops_per_clip_forward_and_training() -> None:
    cfg = ModelConfig(
        arch="vit_base_patch16_clip_quickgelu_224",
        vit_kwargs=dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4),
        num_classes=5,
        drop_path_rate=0.0,
        head_dropout=0.0,
    )
    t, d, n = 4, 64, 17
    model = build_model(cfg, t)
    flops = model_flops_per_clip(model, t, 32, torch.device("cpu"), torch.float32)
    patch_embed = t * 2 * (3 * 8 * 8) * d * 16
    block = t * vit_block_flops(n, d) + n * (8 * t * d * d + 4 * t * t * d) + 3 * t * n * d * d
    head = 2 * d * 5
    assert flops["forward"] == patch_embed + 2 * block + head
    # the frozen backbone computes no weight gradients: a training step costs well under 3x the forward
    assert 1.5 * flops["forward"] < flops["train"] < 3 * flops["forward"]
    assert all(p.grad is None for p in model.parameters())  # counting leaves no gradients behind
    # gradient checkpointing recomputes each block's forward in the backward: the hardware's work, not the model's
    model.set_grad_checkpointing(True)
    assert model_flops_per_clip(model, t, 32, torch.device("cpu"), torch.float32) == flops
    assert model.grad_checkpointing  # and the model keeps it


def test_peak_table() -> None:
    assert table_peak_tflops("NVIDIA H100 80GB HBM3", torch.bfloat16) == 989.4
    assert table_peak_tflops("NVIDIA H100 PCIe", torch.bfloat16) == 756.5
    assert table_peak_tflops("NVIDIA A100-SXM4-80GB", torch.float16) == 312.0
    assert table_peak_tflops("NVIDIA A100-SXM4-80GB", torch.float32) == 19.5  # torch's default: no TF32
    assert table_peak_tflops("Some Future GPU", torch.bfloat16) is None


@pytest.mark.parametrize(
    "name,bf16",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),  # SXM5
        ("NVIDIA H100 PCIe", 756.5),
        ("NVIDIA H100 NVL", 835.5),  # was given the SXM5 figure
        ("NVIDIA H200", 989.4),
        ("NVIDIA H200 NVL", 835.5),  # was given the SXM figure
        ("NVIDIA A100-SXM4-40GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA L40S", 362.1),
        ("NVIDIA RTX A1000", None),  # was matched as an A100
        ("NVIDIA RTX A1000 6GB Laptop GPU", None),
        ("NVIDIA A10G", None),  # not on a data sheet: the measured peak is used
        ("NVIDIA GH200 480GB", None),
        ("NVIDIA L40", None),
        ("NVIDIA H100", None),  # no form factor in the name: SXM5 or not is unknown
        ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", None),  # a slice has a fraction of the peak
    ],
)
def test_peak_table_matches_whole_names_most_specific_first(name: str, bf16: float | None) -> None:
    assert table_peak_tflops(name, torch.bfloat16) == bf16


def test_v100_form_factors() -> None:
    assert table_peak_tflops("Tesla V100-SXM2-32GB", torch.float16) == 125.0
    assert table_peak_tflops("Tesla V100-PCIE-16GB", torch.float16) == 112.0
    assert table_peak_tflops("Tesla V100S-PCIE-32GB", torch.float16) is None
    assert table_peak_tflops("Tesla V100-SXM2-32GB", torch.bfloat16) is None  # no bf16 tensor cores


def test_dtype_key_reads_tf32_through_the_new_precision_api() -> None:
    """torch 2.14 raises RuntimeError on reading `torch.backends.cuda.matmul.allow_tf32` once code has set
    `fp32_precision` (the new API); the peak lookup must still tell TF32 from IEEE fp32."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        assert dtype_key(torch.float32) == "tf32"
        assert table_peak_tflops("NVIDIA A100-SXM4-80GB", torch.float32) == 156.0
        matmul.fp32_precision = "ieee"
        assert dtype_key(torch.float32) == "fp32"
    finally:
        matmul.fp32_precision = saved
    assert dtype_key(torch.bfloat16) == "bf16"


def test_mfu_and_cpu_peak() -> None:
    assert mfu(10**12, 100.0, 400.0) == pytest.approx(0.25)
    assert mfu(10**12, 100.0, None) is None
    cpu = peak_info(torch.device("cpu"), torch.float32)
    assert cpu["peak_tflops"] is None
    assert peak_info(torch.device("cpu"), torch.float32, override_tflops=2.0)["peak_tflops"] == 2.0


def test_counting_a_compiled_model_counts_it_eagerly_and_leaves_it_compiled() -> None:
    from torch._dynamo.utils import counters

    cfg = ModelConfig(
        arch="vit_base_patch16_clip_quickgelu_224",
        vit_kwargs=dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4),
        num_classes=5,
    )
    torch.manual_seed(0)
    eager = build_model(cfg, 4)
    torch.manual_seed(0)
    compiled = build_model(cfg, 4)
    compiled.compile_blocks(backend="eager")  # dynamo only: no code generation
    video = torch.randn(2, 4, 3, 32, 32)
    torch._dynamo.reset()
    counters.clear()
    assert count_flops(lambda: compiled(video).sum().backward()) == count_flops(lambda: eager(video).sum().backward())
    assert counters["stats"]["unique_graphs"] == 0  # nothing traced while counting
    compiled(video).sum().backward()
    assert counters["stats"]["unique_graphs"] == 1  # one graph, shared by both blocks


def test_counting_keeps_the_models_mode() -> None:
    """The doc: "The model keeps its mode": an evaluation model counted for its FLOPs (compare's run_method) must
    not come back in training mode (dropout, drop path on)."""
    cfg = ModelConfig(arch="vit_base_patch16_clip_quickgelu_224", num_classes=5,
                      vit_kwargs=dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4))  # fmt: skip
    model = build_model(cfg, 4).eval()
    model_flops_per_clip(model, 4, 32, torch.device("cpu"), torch.float32)
    assert not model.training and not any(m.training for m in model.modules())
    model.train()
    model_flops_per_clip(model, 4, 32, torch.device("cpu"), torch.float32)
    assert model.training


def test_cpu_attention_backward_is_counted() -> None:
    """The CPU flash-attention backward is counted with torch's CUDA formula (`sdpa_backward_flop_count`: five
    N x N x D products, the scores recomputed), after the forward's two: without it, CPU training FLOPs (and the
    TFLOP/s the profiler reports) leave out every attention backward."""
    from torch.utils.flop_counter import sdpa_backward_flop_count

    b, h, n, d = 2, 4, 17, 16
    q, k, v = (torch.randn(b, h, n, d, requires_grad=True) for _ in range(3))
    forward = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert forward == 4 * b * h * n * n * d
    counted = count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert counted == forward + sdpa_backward_flop_count(q.shape, q.shape, k.shape, v.shape) == 14 * b * h * n * n * d
