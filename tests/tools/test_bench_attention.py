"""tools/bench_attention.py: the explicit formulations compute attention, and the tool times both AIM shapes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tools.bench_attention import main, matmul_attention, reduce_attention


def test_explicit_formulations_match_sdpa_values_and_gradients() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(6, 2, 8, 16, requires_grad=True) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for attend in (matmul_attention, reduce_attention):
        out = attend(q, k, v)
        assert torch.allclose(out, ref, atol=1e-5)
        for got, want in zip(torch.autograd.grad(out.square().sum(), (q, k, v)), ref_grads, strict=True):
            assert torch.allclose(got, want, atol=1e-4)
    assert not torch.allclose(reduce_attention(q, k, v.flip(-2)), ref, atol=1e-3)  # the values' order matters


def test_cpu_run_times_both_shapes_for_every_implementation() -> None:
    r = main(["--device", "cpu", "--dtype", "fp32", "--batch", "1", "--frames", "4", "--tokens", "5", "--heads", "2",
              "--head-dim", "8", "--iters", "1"])  # fmt: skip
    assert set(r["ms"]) == {"sdpa default", "sdpa math", "matmul", "reduce"}
    for impl, row in r["ms"].items():
        assert row["spatial"] > 0 and row["temporal"] > 0, impl
        assert max(r["max_abs_error"][impl].values()) < 1e-5, impl
