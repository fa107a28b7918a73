"""Forward + backward time of AIM's two attention calls per scaled-dot-product-attention backend (GPU).

AIM runs each block's frozen attention twice: over the N patch tokens of a frame (spatial: batch B*T, sequence N)
and over the T frames of a token (temporal: batch B*N, sequence T = 8). The temporal call is thousands of very
short sequences, a shape the fused kernels are not tuned for. This times both shapes, side by side in one run, for
each backend torch offers (those that refuse a shape are reported as such):

    python tools/bench_attention.py --batch 32 --frames 8 --tokens 197 --heads 12 --head-dim 64
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import nullcontext

# run from a checkout: tools/ off the path (tools/profile.py would shadow the stdlib profile that torch imports)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

BACKENDS = {
    "default": None,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}


def time_call(batch: int, heads: int, seq: int, head_dim: int, backend, dtype, iters: int) -> float:
    """Milliseconds per forward + backward of one attention call on [batch, heads, seq, head_dim] inputs."""
    shape = (batch, heads, seq, head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(shape, device="cuda", dtype=dtype)

    def step() -> None:
        with sdpa_kernel(backend) if backend is not None else nullcontext():
            out = F.scaled_dot_product_attention(q, k, v)
        out.backward(grad)

    for _ in range(3):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="clips")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=197, help="tokens per frame, CLS included (224 px, patch 16)")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16"])
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention.py times CUDA kernels: run it on a machine with a GPU")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    shapes = {
        "spatial": (args.batch * args.frames, args.tokens),
        "temporal": (args.batch * args.tokens, args.frames),
    }
    results: dict = {"device": torch.cuda.get_device_name(), "args": vars(args), "ms": {}}
    for name, backend in BACKENDS.items():
        row = {}
        for shape_name, (batch, seq) in shapes.items():
            try:
                row[shape_name] = round(time_call(batch, args.heads, seq, args.head_dim, backend, dtype, args.iters), 3)
            except RuntimeError as err:  # a backend that cannot run this shape or dtype
                row[shape_name] = f"refused: {str(err).splitlines()[0][:80]}"
        results["ms"][name] = row
        print(json.dumps({"backend": name, **row}), flush=True)
    return results


if __name__ == "__main__":
    main()
