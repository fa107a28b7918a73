"""FLOPs per clip from torch's FLOP counter, accelerator peaks and model FLOP utilisation (MFU).

`torch.utils.flop_counter.FlopCounterMode` counts the matrix products a forward (and backward) really runs:
linear layers, convolutions and scaled-dot-product attention, as 2 FLOPs per multiply-add. That is the convention
MFU is stated in (elementwise ops, norms and softmax are not counted). Papers often count multiply-adds and call them
FLOPs: the AIM paper's 202 GFLOPs per view of ViT-B/16 at 8x224 is the 404 GFLOP forward counted here. Two things
are added here:

- a formula for the CPU flash-attention kernel (`_scaled_dot_product_flash_attention_for_cpu` and its backward),
  which torch's registry lacks, so attention is counted on CPU as it is on CUDA (same `sdpa_flop_count`);
- the training count is measured, not assumed to be 3x the forward: AIM's frozen backbone computes no weight
  gradients, so one training step costs about 2x the forward, which a 3x rule would overstate by half.

Peaks are dense (no 2:4 sparsity) tensor-core figures from the vendors' data sheets, in TFLOP/s, by device name and
compute dtype (fp32 without TF32, as torch's default matmul precision); `profile.peak_tflops` overrides them, and on
a GPU the measured peak of a large matmul in the same dtype is reported beside them (and used when the device is
not in the table).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

aten = torch.ops.aten

# (pattern searched in torch.cuda.get_device_name(), case-insensitive, {dtype: dense TFLOP/s}); first match wins, so
# the most specific names come first. Word boundaries keep "RTX A1000" off A100, "A10G" off A10 and "GH200" off H200;
# names listed nowhere (A10G, GH200, a MIG slice, ...) get no table peak, and MFU is stated against the measured one.
# Data sheets state tensor-core peaks "with sparsity": the dense figures here are half of those.
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    (r"\bMIG\b", {}),  # a slice of a GPU: its share of the peak is not in any data sheet
    (r"\bH100 NVL\b", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"\bH100 PCIe\b", {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2}),
    (r"\bH100\b.*\b(HBM3|SXM5?)\b", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM5
    (r"\bH200 NVL\b", {"bf16": 835.5, "fp16": 835.5, "tf32": 417.5, "fp32": 60.0}),
    (r"\bH200\b", {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9}),  # SXM
    (r"\bA100\b", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),  # SXM4 and PCIe alike
    (r"\bL40S\b", {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6}),
    (r"\bA10\b", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"\bV100-SXM2\b", {"fp16": 125.0, "fp32": 15.7}),
    (r"\bV100-PCIE\b", {"fp16": 112.0, "fp32": 14.0}),
]
PEAK_SOURCE = (
    "vendor data sheets, dense tensor-core TFLOP/s (H100 SXM5/PCIe/NVL, H200/H200 NVL, A100, L40S, A10, V100 SXM2/PCIe)"
)


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


CPU_ATTENTION_FLOPS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of the matrix products `fn()` runs (forward and whatever backward it calls).

    Compiled code runs eagerly while counting, so that dynamo never meets the counter's dispatch mode. On torch 2.11
    (an H200, 2026-11-27) blocks compiled before the profiler counted FLOPs then ran no faster than eager code, and
    dynamo logged none of the recompilations a compiled model makes, while blocks compiled after counting ran a
    training step 1.49x faster.
    """
    with (
        torch.compiler.set_stance("force_eager"),
        FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS) as counter,
    ):
        fn()
    return int(counter.get_total_flops())


def model_flops_per_clip(
    model: nn.Module, num_frames: int, input_size: int, device: torch.device, dtype: torch.dtype
) -> dict[str, int]:
    """FLOPs of one clip [1, T, 3, S, S]: `forward` (inference) and `train` (forward + backward, measured; without
    the forward that gradient checkpointing repeats in the backward).

    The model keeps its mode and its trainable set; gradients the count leaves behind are dropped.
    """
    was_training = model.training
    clip = torch.randn(1, num_frames, 3, input_size, input_size, device=device, dtype=dtype)
    label = torch.zeros(1, dtype=torch.int64, device=device)
    model.eval()
    with torch.no_grad():
        forward = count_flops(lambda: model(clip))
    model.train()

    def step() -> None:
        F.cross_entropy(model(clip).float(), label).backward()

    # the model's FLOPs, not the hardware's: gradient checkpointing's second forward in the backward is not counted
    # (it adds about 45%), so MFU stays comparable with and without it
    checkpointing = getattr(model, "grad_checkpointing", False)
    if checkpointing:
        model.set_grad_checkpointing(False)
    try:
        train = count_flops(step)
    finally:
        if checkpointing:
            model.set_grad_checkpointing(True)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {"forward": forward, "train": train}


def dtype_key(dtype: torch.dtype) -> str:
    """Peak-table column of a compute dtype (fp32 reads as tf32 when torch lets matmuls use TF32)."""
    if dtype == torch.bfloat16:
        return "bf16"
    if dtype == torch.float16:
        return "fp16"
    return "tf32" if _matmul_allows_tf32() else "fp32"


def _matmul_allows_tf32() -> bool:
    """Whether float32 CUDA matmuls may use TF32.

    torch >= 2.9 reads it from `torch.backends.cuda.matmul.fp32_precision` ("tf32", "ieee", or "none": the global
    `torch.backends.fp32_precision`, which the getter already resolves). The legacy `allow_tf32` raises a
    RuntimeError on torch 2.14 once code has set the new API, so it is read only where the new one is missing.
    """
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is not None:
        return precision == "tf32"
    return bool(matmul.allow_tf32)


def table_peak_tflops(device_name: str, dtype: torch.dtype) -> float | None:
    """Dense peak of `device_name` in `dtype` from :data:`PEAK_TFLOPS`, or None when the device is not listed."""
    for pattern, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return peaks.get(dtype_key(dtype))
    return None


def measured_peak_tflops(device: torch.device, dtype: torch.dtype, n: int = 8192, iters: int = 20) -> float:
    """Achieved TFLOP/s of an n x n x n matmul in `dtype` on a CUDA device (warm-up, then synchronised timing)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    del a, b
    return 2 * n**3 * iters / elapsed / 1e12


def peak_info(device: torch.device, dtype: torch.dtype, override_tflops: float = 0.0) -> dict[str, Any]:
    """The peak MFU is stated against: the override, else the table, else the measured matmul peak (GPU only).

    On CPU there is no peak (MFU is reported as null; achieved TFLOP/s still are).
    """
    info: dict[str, Any] = {"dtype": dtype_key(dtype) if device.type == "cuda" else str(dtype).replace("torch.", "")}
    if device.type != "cuda":
        info.update(peak_tflops=override_tflops or None, source="profile.peak_tflops" if override_tflops else None)
        return info
    name = torch.cuda.get_device_name(device)
    table = table_peak_tflops(name, dtype)
    measured = measured_peak_tflops(device, dtype)
    info.update(device_name=name, table_tflops=table, measured_matmul_tflops=round(measured, 1))
    if override_tflops > 0:
        info.update(peak_tflops=override_tflops, source="profile.peak_tflops")
    elif table is not None:
        info.update(peak_tflops=table, source=PEAK_SOURCE)
    else:
        info.update(peak_tflops=measured, source="measured: 8192^3 matmul in the compute dtype")
    return info


def mfu(flops_per_clip: int, clips_per_s: float, peak_tflops: float | None) -> float | None:
    """Model FLOP utilisation: achieved FLOP/s over the peak (None without a peak)."""
    if not peak_tflops:
        return None
    return flops_per_clip * clips_per_s / (peak_tflops * 1e12)
