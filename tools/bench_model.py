"""Training-step time and peak memory of (a) aim-video AIM, (b) an authors'-style AIM, (c) AIM all-trainable.

Side by side in one run, on the same weights: (b) is re-implemented here the way the authors' code computes
(sequence-first ``nn.MultiheadAttention``, LayerNorms that run in fp32 and cast back, ``[N, B*T, D]`` tokens),
sharing every parameter with (a); (c) is (a) with every parameter trainable (full fine-tuning of the space-time
model). Each runs with and without gradient checkpointing, in fp32 and bf16 autocast. One step = forward,
cross-entropy, backward, AdamW step over the trainable parameters. Peak memory: CUDA allocator statistics on a GPU;
on CPU (no allocator statistics) :class:`LiveTensorPeak`, a dispatch mode here, sums every live tensor storage. Step
FLOPs (forward + backward of one batch, 2 per multiply-add) are counted with gradient checkpointing off, so they are
the model's work, not the recomputed forward. Example (CPU, small batch):

    python tools/bench_model.py --batch 1 --steps 3 --json runs/bench_model_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import weakref
from collections import OrderedDict
from contextlib import nullcontext

# run from a checkout: the repo root on the path, tools/ off it (tools/profile.py would shadow the stdlib profile)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from einops import rearrange  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402
from torch.utils.checkpoint import checkpoint  # noqa: E402
from torch.utils.weak import WeakIdKeyDictionary  # noqa: E402

from aim_video.config import ModelConfig  # noqa: E402
from aim_video.models.aim import AIMBlock, AIMVisionTransformer  # noqa: E402
from aim_video.models.build import build_model  # noqa: E402
from aim_video.profiling.flops import count_flops  # noqa: E402


class LayerNormFP32(nn.LayerNorm):
    """CLIP's LayerNorm: computes in fp32 and casts back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


def _shared_ln(norm: nn.Module) -> nn.Module:
    if isinstance(norm, nn.Identity):
        return norm
    ln = LayerNormFP32(norm.weight.shape[0], eps=norm.eps)
    ln.weight, ln.bias = norm.weight, norm.bias  # the very same Parameters as (a)
    return ln


class AuthorsBlock(nn.Module):
    """The authors' block layout on ``[N, B*T, D]``, sharing the weights (and adapters) of an :class:`AIMBlock`."""

    def __init__(self, blk: AIMBlock, num_frames: int) -> None:
        super().__init__()
        dim, heads = blk.attn.qkv.in_features, blk.attn.num_heads
        self.attn = nn.MultiheadAttention(dim, heads)
        self.attn.in_proj_weight, self.attn.in_proj_bias = blk.attn.qkv.weight, blk.attn.qkv.bias
        self.attn.out_proj.weight, self.attn.out_proj.bias = blk.attn.proj.weight, blk.attn.proj.bias
        self.ln_1, self.ln_2 = _shared_ln(blk.norm1), _shared_ln(blk.norm2)
        self.mlp = nn.Sequential(OrderedDict(c_fc=blk.mlp.fc1, gelu=blk.mlp.act, c_proj=blk.mlp.fc2))
        self.T_Adapter_in, self.T_Adapter = blk.t_adapter_in, blk.t_adapter
        self.S_Adapter, self.MLP_Adapter = blk.s_adapter, blk.mlp_adapter
        self.scale, self.drop_path, self.num_frames = blk.mlp_adapter_scale, blk.drop_path, num_frames

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, need_weights=False)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        xt = rearrange(x, "n (b t) d -> t (b n) d", t=self.num_frames)  # time as the sequence axis
        xt = self.ln_1(xt)
        if self.T_Adapter_in is not None:
            xt = self.T_Adapter_in(xt)
        xt = self.T_Adapter(self.attention(xt))
        xt = rearrange(xt, "t (b n) d -> n (b t) d", n=n)
        x = x + self.drop_path(xt)
        x = x + self.S_Adapter(self.attention(self.ln_1(x)))
        xn = self.ln_2(x)
        return x + self.mlp(xn) + self.drop_path(self.scale * self.MLP_Adapter(xn))


class AuthorsAIM(nn.Module):
    """(b): the authors' network layout (CLIP-style visual tower), all parameters shared with model (a)."""

    def __init__(self, aim: AIMVisionTransformer) -> None:
        super().__init__()
        vit = aim.backbone
        self.conv1, self.class_embedding, self.positional_embedding = vit.patch_embed.proj, vit.cls_token, vit.pos_embed
        self.temporal_embedding, self.num_frames = aim.temporal_embed, aim.num_frames
        self.ln_pre, self.ln_post = _shared_ln(vit.norm_pre), _shared_ln(vit.norm)
        self.blocks = nn.ModuleList(AuthorsBlock(blk, aim.num_frames) for blk in vit.blocks)
        self.dropout, self.fc = aim.head_drop, aim.head
        self.grad_checkpointing = False

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        b = video.shape[0]
        x = self.conv1(rearrange(video, "b t c h w -> (b t) c h w"))
        x = rearrange(x, "bt d h w -> bt (h w) d")
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # [B*T, N, D]
        n = x.shape[1]
        x = rearrange(x, "(b t) n d -> (b n) t d", t=self.num_frames) + self.temporal_embedding.to(x.dtype)
        x = rearrange(x, "(b n) t d -> (b t) n d", n=n)
        x = self.ln_pre(x).permute(1, 0, 2)  # NLD -> LND, as CLIP
        for blk in self.blocks:
            x = checkpoint(blk, x, use_reentrant=False) if self.grad_checkpointing else blk(x)
        x = self.ln_post(x.permute(1, 0, 2))[:, 0]  # per-frame CLS [B*T, D]
        x = rearrange(x, "(b t) d -> b t d", b=b).mean(dim=1)
        return self.fc(self.dropout(x))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, video, labels, dtype) -> None:
    optimizer.zero_grad(set_to_none=True)
    autocast = torch.autocast(video.device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    with autocast:
        loss = F.cross_entropy(model(video).float(), labels)
    loss.backward()
    optimizer.step()


def measure(model, params, video, labels, dtype, steps: int, warmup: int) -> tuple[float, float]:
    """(seconds per step, peak MiB): timed steps after warm-up, then one step under the memory tracker."""
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    cuda = video.device.type == "cuda"
    for _ in range(warmup):
        train_step(model, optimizer, video, labels, dtype)
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(model, optimizer, video, labels, dtype)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    optimizer.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        train_step(model, optimizer, video, labels, dtype)
        peak = torch.cuda.max_memory_allocated()
    else:
        state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
        with LiveTensorPeak([*model.parameters(), *state, video, labels]) as tracker:
            train_step(model, optimizer, video, labels, dtype)
        peak = tracker.peak
    return seconds, peak / 2**20


class LiveTensorPeak(TorchDispatchMode):
    """Peak bytes of live tensor storages (existing ones plus every op's outputs) while the mode is on.

    CPU has no allocator statistics; torch's MemTracker hooks every parameter and fails on frozen ones.
    """

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self.sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.current = self.peak = 0
        for tensor in existing:
            self._add(tensor.untyped_storage())

    def _add(self, storage: torch.UntypedStorage) -> None:
        if storage in self.sizes:
            return
        nbytes = storage.nbytes()
        self.sizes[storage] = nbytes
        self.current += nbytes
        self.peak = max(self.peak, self.current)
        weakref.finalize(storage, self._free, nbytes)

    def _free(self, nbytes: int) -> None:
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in tree_flatten(out)[0]:
            if isinstance(item, torch.Tensor) and item.device.type != "meta":
                self._add(item.untyped_storage())
        return out


def step_flops(model: nn.Module, video, labels) -> int:
    """FLOPs of one forward + backward of the batch over the model's current trainable set.

    `count_flops` counts eagerly even when compiled and counts the CPU flash-attention kernel, which torch's own
    table lacks. Checkpointing is switched off for the count (and restored): the model's FLOPs, as the profiler
    counts them, whatever flag an earlier timing left behind.
    """
    checkpointing = model.grad_checkpointing
    model.set_grad_checkpointing(False)
    try:
        flops = count_flops(lambda: F.cross_entropy(model(video), labels).backward())
    finally:
        model.set_grad_checkpointing(checkpointing)
    model.zero_grad(set_to_none=True)
    return flops


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_base_patch16_clip_quickgelu_224")
    parser.add_argument("--vit-kwargs", default="{}", help="JSON, e.g. a tiny ViT for tests")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--dtypes", default="fp32,bf16")
    parser.add_argument("--variants", default="a,b,c")
    parser.add_argument("--compile", action="store_true", help="compile (a) and (c) as model.compile=true does")
    parser.add_argument(
        "--temporal-attention",
        default="sdpa",
        help="comma-separated model.temporal_attention values: (a) and (c) are timed with each, side by side",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="", help="write the results here too")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = ModelConfig(arch=args.arch, vit_kwargs=json.loads(args.vit_kwargs), num_classes=400, drop_path_rate=0.0)
    aim = build_model(cfg, args.frames).to(device)
    with torch.no_grad():  # move adapters off their zero init so every branch contributes
        for name, p in aim.named_parameters():
            if name in set(aim.trainable_parameter_names()):
                p.add_(0.02 * torch.randn_like(p))
    authors = AuthorsAIM(aim)
    video = torch.randn(args.batch, args.frames, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, 400, (args.batch,), device=device)
    aim.eval()
    with torch.no_grad():
        diff = (aim(video) - authors(video)).abs().max().item()
    aim.train()
    trainable = [p for n, p in aim.named_parameters() if n in set(aim.trainable_parameter_names())]
    flops = {"a": step_flops(aim, video, labels)}
    if args.compile:
        aim.compile_blocks()
    results = {"config": vars(args), "device": str(device), "max_abs_diff_a_b_fp32": diff, "rows": []}
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    impls = args.temporal_attention.split(",")
    for variant in args.variants.split(","):
        model, params = (authors, trainable) if variant == "b" else (aim, trainable)
        if variant == "c":
            params = list(aim.parameters())
            for p in params:
                p.requires_grad_(True)
            for blk in aim.backbone.blocks:  # counted as (a) was: `sdpa`, not what (a)'s last timing left
                blk.temporal_attention = "sdpa"
            flops["c"] = step_flops(aim, video, labels)
        for impl in ["-"] if variant == "b" else impls:  # (b) computes its attention its own way
            for blk in aim.backbone.blocks:
                blk.temporal_attention = impl if impl != "-" else "sdpa"
            for dtype_name in args.dtypes.split(","):
                for ckpt in (False, True):
                    model.set_grad_checkpointing(ckpt)
                    seconds, peak = measure(model, params, video, labels, dtypes[dtype_name], args.steps, args.warmup)
                    row = dict(variant=variant, attn=impl, dtype=dtype_name, ckpt=ckpt)
                    row.update(step_s=round(seconds, 4), peak_mib=peak)
                    results["rows"].append(row)
                    print(json.dumps(row), flush=True)
        aim.freeze()
    results["ratios"] = _ratios(results["rows"])
    results["step_flops"] = flops
    results["step_gflops"] = {k: round(v / 1e9, 1) for k, v in flops.items()}
    results["step_gflops_counted"] = "forward + backward of one batch, 2 FLOPs per multiply-add, checkpointing off"
    keys = ("max_abs_diff_a_b_fp32", "step_gflops", "step_gflops_counted", "ratios")
    print(json.dumps({k: results[k] for k in keys}, indent=1))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(f"{args.json}.tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(f"{args.json}.tmp", args.json)
    return results


def _ratios(rows: list[dict]) -> dict[str, float]:
    """a/b and a/c time and memory per (dtype, ckpt), a and c with the same temporal attention; each temporal
    attention's (a) time against the first one's; checkpointing's memory ratio per (variant, dtype)."""
    by = {(r["variant"], r["attn"], r["dtype"], r["ckpt"]): r for r in rows}
    first = next((r["attn"] for r in rows if r["variant"] == "a"), None)
    out = {}
    for (variant, attn, dtype, ckpt), row in by.items():
        tag = f"{dtype},ckpt={'on' if ckpt else 'off'}" + ("" if attn in ("-", "sdpa") else f",{attn}")
        for other, other_attn in (("b", "-"), ("c", attn)):
            if variant == "a" and (other, other_attn, dtype, ckpt) in by:
                ref = by[(other, other_attn, dtype, ckpt)]
                out[f"time a/{other} {tag}"] = round(row["step_s"] / ref["step_s"], 3)
                out[f"peak a/{other} {tag}"] = round(row["peak_mib"] / ref["peak_mib"], 3)
        if variant == "a" and attn != first and ("a", first, dtype, ckpt) in by:
            ref = by[("a", first, dtype, ckpt)]
            out[f"time a {attn}/{first} {dtype},ckpt={'on' if ckpt else 'off'}"] = round(
                row["step_s"] / ref["step_s"], 3
            )
        if ckpt and (variant, attn, dtype, False) in by:
            out[f"peak ckpt on/off {variant},{attn},{dtype}"] = round(
                row["peak_mib"] / by[(variant, attn, dtype, False)]["peak_mib"], 3
            )
    return out


if __name__ == "__main__":
    main()
