"""Forward + backward time of AIM's two attention calls per implementation (SDPA backends, explicit formulations).

AIM runs each block's frozen attention twice: over the N patch tokens of a frame (spatial: batch B*T, sequence N)
and over the T frames of a token (temporal: batch B*N, sequence T = 8). The temporal call is thousands of very
short sequences, a shape the fused kernels are not tuned for (on an H200 it took 3.7x the spatial call's time).
This times both shapes, side by side in one run, for each scaled-dot-product-attention backend torch offers and for
two explicit formulations a short-sequence attention could use: batched matmuls, and broadcast products reduced
over the head dimension (which the compiler can fuse into a few kernels; `--compile` adds that compiled). Every
implementation's output is checked against the math backend. Backends that refuse a shape are reported as such:

    python tools/bench_attention.py --batch 32 --frames 8 --tokens 197 --heads 12 --head-dim 64 [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

# run from a checkout: tools/ off the path (tools/profile.py would shadow the stdlib profile that torch imports)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from aim_video.models.aim import matmul_attention, reduce_attention  # noqa: E402  (what the model computes)

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdpa_with(backend: SDPBackend | None) -> Attention:
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return attend


def implementations(device: str, compile_: bool) -> dict[str, Attention]:
    impls: dict[str, Attention] = {"sdpa default": sdpa_with(None)}
    if device == "cuda":
        impls.update(
            {
                "sdpa cudnn": sdpa_with(SDPBackend.CUDNN_ATTENTION),
                "sdpa flash": sdpa_with(SDPBackend.FLASH_ATTENTION),
                "sdpa efficient": sdpa_with(SDPBackend.EFFICIENT_ATTENTION),
            }
        )
    impls.update({"sdpa math": sdpa_with(SDPBackend.MATH), "matmul": matmul_attention, "reduce": reduce_attention})
    if compile_:
        impls["reduce compiled"] = torch.compile(reduce_attention)
        impls["matmul compiled"] = torch.compile(matmul_attention)
    return impls


def time_call(attend: Attention, shape: tuple[int, ...], device: str, dtype, iters: int) -> tuple[float, float]:
    """(ms per forward + backward, max abs difference from the math backend) of one call on inputs of `shape`."""
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=gen).requires_grad_() for _ in range(3))
    grad = torch.randn(shape, device=device, dtype=dtype, generator=gen)
    with torch.no_grad():
        error = (attend(q, k, v).float() - sdpa_with(SDPBackend.MATH)(q, k, v).float()).abs().max().item()

    def step() -> None:
        attend(q, k, v).backward(grad)

    for _ in range(3):
        step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    return (time.perf_counter() - start) * 1000 / iters, error


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="clips")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=197, help="tokens per frame, CLS included (224 px, patch 16)")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also time the explicit formulations compiled")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    shapes = {
        "spatial": (args.batch * args.frames, args.heads, args.tokens, args.head_dim),
        "temporal": (args.batch * args.tokens, args.heads, args.frames, args.head_dim),
    }
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    results: dict = {"device": name, "args": vars(args), "ms": {}, "max_abs_error": {}}
    for impl_name, attend in implementations(args.device, args.compile).items():
        row, errors = {}, {}
        for shape_name, shape in shapes.items():
            try:
                ms, err = time_call(attend, shape, args.device, dtype, args.iters)
                row[shape_name], errors[shape_name] = round(ms, 3), err
            except RuntimeError as exc:  # a backend that cannot run this shape or dtype
                row[shape_name] = f"refused: {str(exc).splitlines()[0][:80]}"
        results["ms"][impl_name], results["max_abs_error"][impl_name] = row, errors
        print(json.dumps({"impl": impl_name, **row, "max_abs_error": errors}), flush=True)
    return results


if __name__ == "__main__":
    main()
