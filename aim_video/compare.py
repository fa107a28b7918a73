"""Fair method comparisons: every method trained on one split with the same config, seed, schedule and loader.

:func:`prepare_methods` builds each method's config and checks its model (on the meta device) before anything
trains: a setting a method does not read (``build.READ_BY``: AIM's adapter settings, LoRA's rank, ...) is reset to
what that method behaves as, so that a recipe tuned for AIM runs every baseline instead of failing after hours.
:func:`run_method` trains one method with :func:`aim_video.engine.fit.fit` in this process (a world of one: the
same DeepSpeed engine, loader and recipe as ``tools/train.py``), evaluates the exported weights with the multi-view
protocol (a model that can merge is merged first, so its row is the plain-ViT model it ships as) and measures its
cost on synthetic clips of the training shape: tunable parameters, inference FLOPs per clip, training clips/s of the
optimizer step and peak training memory. :func:`write_outputs` writes the table as Markdown, JSON and a PNG chart.

Every method trains with the config's recipe (lr, weight decay, schedule): for the recipe configs that is AIM's,
so ``full_finetune`` is full fine-tuning under AIM's recipe, not the paper's full fine-tuning baseline (TimeSformer
with its own recipe). FLOPs are ``FlopCounterMode``'s, 2 per multiply-add; the AIM paper's "GFLOPs" are
multiply-adds (GMACs here: AIM ViT-B/16 at 8 frames counts 404 GFLOPs = 202 GMACs per view, the paper's 606 for
3 views).

The measured step is DeepSpeed's for ``train.precision`` (:func:`build_train_step`): in bf16/fp16 the model is
held in that precision with fp32 master copies, gradient buffers and AdamW moments of the trainable parameters. Peak
memory is ``torch.cuda.max_memory_allocated`` on a GPU, minus what was allocated when the measurement started
(earlier models are freed first). On a CPU (no allocator statistics; the process RSS is mostly the interpreter) it
is the training step's accounted memory (:func:`accounted_training_memory`): parameters + gradients + master
weights and their gradients + AdamW states + the activations autograd saves for the backward pass (distinct
storages, counted once).
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from aim_video.config import Config, load_config
from aim_video.data.transforms import normalize
from aim_video.profiling.throughput import build_train_step

# name -> config overrides on top of the common config: AIM's component ablations and the baselines
METHODS: dict[str, list[str]] = {
    "aim_spatial": [
        "model.method=aim",
        "model.temporal_adapter=false",
        "model.joint_adapter=false",
        "model.temporal_embedding=false",
    ],
    "aim_spatial_temporal": ["model.method=aim", "model.joint_adapter=false"],
    "aim": ["model.method=aim"],
    "linear_probe": ["model.method=linear_probe"],
    "full_finetune": ["model.method=full_finetune"],
    "lora": ["model.method=lora"],
    "vpt_shallow": ["model.method=vpt_shallow"],
    "vpt_deep": ["model.method=vpt_deep"],
    "linear_adapter": ["model.method=linear_adapter"],
}
DESCRIPTIONS = {
    "aim_spatial": "AIM, spatial adapters only, no temporal embedding",
    "aim_spatial_temporal": "AIM, spatial + temporal adapters",
    "aim": "AIM, spatial + temporal + joint adapters",
    "linear_probe": "linear probe (frozen backbone, mean of per-frame CLS)",
    "full_finetune": "full fine-tuning, space-only (frames averaged), with the config's (AIM) recipe: lr, weight decay",
    "lora": "LoRA on attn.qkv and attn.proj, merged for inference",
    "vpt_shallow": "VPT shallow (prompt tokens per frame)",
    "vpt_deep": "VPT deep (prompt tokens per frame and block)",
    "linear_adapter": "linear adapters, merged for inference (ZeroI2V-style)",
}
COLUMNS = [  # (key, header, format)
    ("method", "method", "{}"),
    ("tunable_params", "tunable params", "{:,}"),
    ("gflops_per_clip", "GFLOPs / clip (inference, 2 per MAC)", "{:.4f}"),
    ("gmacs_per_clip", "GMACs / clip (the paper's GFLOPs)", "{:.4f}"),
    ("train_clips_per_s", "train clips/s (step)", "{:.1f}"),
    ("peak_memory_mib", "peak train memory (MiB)", "{:.1f}"),
    ("top1", "top-1 (%)", "{:.1f}"),
    ("top5", "top-5 (%)", "{:.1f}"),
    ("temporal_pairs_top1", "temporal pairs top-1 (%)", "{:.1f}"),
    ("num_evaluated", "videos scored", "{}"),  # fewer than listed: some missing or unreadable (compare.json's rows)
]
NOTES = [
    "every method trains with this config's recipe (lr, weight decay, schedule), AIM's for the recipe configs: "
    "full_finetune is not the paper's full fine-tuning baseline (TimeSformer, its own recipe)",
    "GFLOPs count 2 FLOPs per multiply-add; the AIM paper's GFLOPs are GMACs (one per multiply-add)",
    "settings a method does not read (aim_video/models/build.py READ_BY) are reset for it",
]


def method_config(name: str, config_path: str | None, overrides: list[str], output_dir: str) -> Config:
    """The common config with ``name``'s overrides; the run goes to ``output_dir/name``.

    Settings the method does not read are reset to what it behaves as (``build.unread_settings``): a recipe's
    ``model.temporal_attention=matmul`` or ``model.lora_rank=4`` among the overrides reaches only the methods that
    read it, where ``build_model`` would otherwise refuse the baselines.
    """
    from aim_video.models.build import unread_settings

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}: choose from {', '.join(METHODS)}")
    cfg = load_config(config_path, [*overrides, *METHODS[name]])
    cfg.output_dir = os.path.join(output_dir, name)  # set, not a second override: "given twice" warned per method
    if os.path.isfile(cfg.output_dir):  # as load_config checks output_dir
        raise ValueError(f"output_dir of method {name}: {cfg.output_dir} is a file; choose another output_dir")
    cfg.model = dataclasses.replace(cfg.model, **unread_settings(cfg.model.method))
    return cfg


def prepare_methods(
    names: list[str], config_path: str | None, overrides: list[str], output_dir: str, split: str = "val"
) -> dict[str, Config]:
    """Every method's config, its model checked on the meta device, and the evaluation list `split` read: a bad
    setting or list fails here, before any training (a missing val list failed after the first method trained)."""
    from aim_video.data.loader import load_split
    from aim_video.engine.checkpoint_io import latest_checkpoint
    from aim_video.models.build import check_model_config

    configs = {}
    for name in names:
        cfg = method_config(name, config_path, [*overrides, "train.eval_every=-1"], output_dir)
        try:
            check_model_config(cfg.model, cfg.data.num_frames, cfg.data.input_size)
        except ValueError as err:
            raise ValueError(f"method {name}: {err}") from None
        # what fit refuses: a complete checkpoint (a save killed before its `latest` counts, an unusable `latest`
        # does not), read without touching the folder (a run may be saving there)
        earlier = latest_checkpoint(os.path.join(cfg.output_dir, "checkpoints")) is not None
        if earlier and not cfg.train.resume:  # fit would refuse it, later (train.resume=auto finishes that one)
            raise ValueError(
                f"method {name}: {cfg.output_dir} holds the run of an earlier comparison: choose another output_dir "
                "(or delete that folder), or finish that comparison with train.resume=auto"
            )
        configs[name] = cfg
    if configs:
        first = next(iter(configs.values()))
        if first.model.init_trainable:  # one method's trained weights: every other method refuses them, after
            raise ValueError(  # the first one trained
                f"model.init_trainable={first.model.init_trainable}: a comparison trains every method from the "
                "same start; leave it empty (it would start each method from one method's trained weights)"
            )
        load_split(first, split)  # the same data settings for every method
    return configs


def free_memory(device: torch.device) -> None:
    """Collect garbage (models kept by reference cycles) and hand the CUDA cache back, before a measurement."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def accounted_training_memory(
    model: nn.Module, optimizer: torch.optim.Optimizer, step: Callable[[], None]
) -> dict[str, int]:
    """Bytes one training step holds (``step()`` runs forward + backward + optimizer step), by kind: the model's
    parameters, their gradients (the trainable ones, in the model's precision), the optimizer's fp32 master weights
    with their gradient buffers (mixed precision), the AdamW states and the activations saved for the backward."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    params = {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}
    masters = [p for g in optimizer.param_groups for p in g["params"] if p.untyped_storage().data_ptr() not in params]
    return {
        "parameters": sum(params.values()),
        "gradients": sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad),
        "master_weights": sum(2 * p.numel() * p.element_size() for p in masters),  # weights + gradient buffers
        "optimizer_states": sum(
            t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values() if t.ndim > 0
        ),
        "activations": sum(n for ptr, n in saved.items() if ptr not in params),
    }


def training_memory_mib(
    model: nn.Module, optimizer: torch.optim.Optimizer, step: Callable[[], None], device: torch.device, base: int
) -> float:
    """Peak memory of training, see the module doc; on CUDA since the peak statistics were reset with ``base``
    bytes allocated (before the model was built), so leftovers of earlier work do not count."""
    if device.type == "cuda":
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return sum(accounted_training_memory(model, optimizer, step).values()) / 2**20


def measure_cost(cfg: Config, device: torch.device, warmup: int = 3, steps: int = 15) -> dict[str, Any]:
    """Tunable parameters, training clips/s (median optimizer step) and peak memory of ``cfg``'s model on synthetic
    clips (batch of ``data.batch_size``, the training shape), with training's AdamW groups and DeepSpeed's mixed
    precision (:func:`build_train_step`); the same clips for all."""
    from aim_video.engine.deepspeed_setup import model_dtype
    from aim_video.models.build import build_model
    from aim_video.profiling.throughput import synchronize

    free_memory(device)
    base = 0
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    torch.manual_seed(cfg.train.seed)
    d = cfg.data
    model = build_model(cfg.model, d.num_frames, d.input_size).train()  # fp32 on the CPU; build_train_step casts it
    gen = torch.Generator().manual_seed(cfg.train.seed)
    raw = torch.randint(0, 256, (d.batch_size, d.num_frames, 3, d.input_size, d.input_size), generator=gen)
    video = normalize(raw.to(torch.uint8).to(device), d.mean, d.std).to(model_dtype(cfg))  # [B, T, C, H, W]
    label = torch.randint(0, cfg.model.num_classes, (d.batch_size,), generator=gen).to(device)
    optimizer, train = build_train_step(cfg, model, device)
    accum = max(1, cfg.train.grad_accum_steps)

    def step() -> None:  # one optimizer step: train.grad_accum_steps micro-batches, then AdamW (its moments count)
        for _ in range(accum):
            train(video, label)

    # whole optimizer steps: about as many micro-batches as asked for, at least one warm-up and two timed steps
    warmup, steps = max(1, -(-warmup // accum)), max(2, -(-steps // accum))
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):  # the median step: robust to the other processes of a shared machine
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    elapsed = statistics.median(times)
    # one micro-batch more (its saved activations, counted once); the optimizer's states exist from the steps above
    memory = training_memory_mib(model, optimizer, lambda: train(video, label), device, base)
    trainable, total = model.parameter_counts()
    return {
        "tunable_params": trainable,
        "total_params": total,
        "train_clips_per_s": d.batch_size * accum / elapsed,
        "peak_memory_mib": memory,
    }


def pair_accuracy(per_video: list[dict[str, int]], pairs: list[tuple[int, int]]) -> float:
    """Top-1 in percent over the videos whose class belongs to one of ``pairs`` (the demo's temporal-order pairs)."""
    classes = {c for pair in pairs for c in pair}
    videos = [v for v in per_video if v["label"] in classes]
    if not videos:
        raise ValueError(f"no evaluated video belongs to the classes {sorted(classes)} of the temporal pairs")
    return 100.0 * sum(v["pred"] == v["label"] for v in videos) / len(videos)


def can_merge(model: nn.Module) -> bool:
    """Whether ``model.merge()`` folds it into a plain ViT: mergeable modules (LoRA, linear adapters), no prompts."""
    has_mergeable = any(hasattr(m, "merged") for m in model.modules())
    return hasattr(model, "merge") and has_mergeable and getattr(model, "prompts", None) is None


def run_method(
    name: str, cfg: Config, split: str = "val", temporal_pairs: list[tuple[int, int]] | None = None
) -> dict[str, Any]:
    """Train ``name`` with its config from :func:`prepare_methods`, evaluate it (merged when it can merge) and
    measure its cost; returns its table row."""
    from aim_video.data.loader import build_eval_loader
    from aim_video.engine.distributed import device_and_backend
    from aim_video.engine.fit import fit
    from aim_video.eval.loading import load_model
    from aim_video.eval.multiview import apply_protocol, evaluate
    from aim_video.profiling.flops import model_flops_per_clip

    started = time.time()
    summary = fit(cfg)
    device, _ = device_and_backend(0)  # the device training used: DS_ACCELERATOR=cpu on a GPU node is the CPU
    model = load_model(cfg, summary["paths"]["model_trainable"], device)
    merged = can_merge(model)  # the variants that ship merged are evaluated as the plain ViT they become
    if merged:
        model.merge()
    apply_protocol(cfg)
    result = evaluate(model, build_eval_loader(cfg, split, 0, 1), cfg, device, progress=False)
    flops = model_flops_per_clip(model, cfg.data.num_frames, cfg.data.input_size, device, torch.float32)
    inference_params = sum(p.numel() for p in model.parameters())
    # neither this fp32 evaluation model nor fit's (kept by reference cycles until collected) may count in the
    # training peak that measure_cost reads
    del model
    free_memory(device)
    row: dict[str, Any] = {
        "method": name,
        "description": DESCRIPTIONS[name],
        "model_method": cfg.model.method,
        "merged_for_eval": merged,
        "gflops_per_clip": flops["forward"] / 1e9,
        "gmacs_per_clip": flops["forward"] / 2e9,  # FlopCounterMode counts 2 FLOPs per multiply-add
        "inference_params": inference_params,
        **measure_cost(cfg, device),
        "top1": float(result["top1"]),
        "top5": float(result["top5"]),
        "mean_class_acc": float(result["mean_class_acc"]),
        "num_evaluated": result["num_evaluated"],
        "protocol": result["protocol"],
        "train_steps": summary["steps"],
        "train_wall_s": summary["wall_s"],
        "train_loader_clips_per_s": summary["clips_per_s"],
        "final_loss": summary["final_loss"],
        "wall_s": time.time() - started,
        "run_dir": cfg.output_dir,
    }
    if temporal_pairs:
        row["temporal_pairs_top1"] = pair_accuracy(result["per_video"], temporal_pairs)
    return row


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table (columns absent from every row are left out)."""
    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt.format(row[key]) if key in row else "n/a" for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: str, title: str) -> str:
    """Bars of top-1 (and temporal-pair top-1) per method, with tunable parameters on a log axis beside them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in rows]
    fig, (ax_acc, ax_par) = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 1.8), sharey=True)
    ys = range(len(rows))
    has_pairs = any("temporal_pairs_top1" in r for r in rows)
    height = 0.4 if has_pairs else 0.8
    ax_acc.barh([y - height / 2 * has_pairs for y in ys], [r["top1"] for r in rows], height, label="top-1")
    if has_pairs:
        pairs = [r.get("temporal_pairs_top1", 0.0) for r in rows]
        ax_acc.barh([y + height / 2 for y in ys], pairs, height, label="temporal pairs top-1")
        ax_acc.axvline(50, color="grey", ls=":", lw=1, label="chance within a pair")
    ax_acc.set_xlim(0, 100)
    ax_acc.set_xlabel("accuracy (%)")
    ax_acc.legend(fontsize=8, loc="lower right")
    ax_acc.set_yticks(list(ys), names)
    ax_acc.invert_yaxis()
    ax_par.barh(list(ys), [r["tunable_params"] for r in rows], 0.6, color="tab:green")
    ax_par.set_xscale("log")
    ax_par.set_xlabel("tunable parameters (log)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120, format="png")  # the format by name: the path may be a temporary one
    plt.close(fig)
    return path


def machine_description() -> str:
    from aim_video.engine.distributed import device_and_backend

    device, _ = device_and_backend(0)  # what the methods ran on: DS_ACCELERATOR=cpu on a GPU node is the CPU
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def _replace_atomically(path: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` then rename over ``path``: a crash never leaves a half-written file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    write(tmp)
    os.replace(tmp, path)


def write_outputs(rows: list[dict[str, Any]], out_dir: str, meta: dict[str, Any]) -> dict[str, str]:
    """``compare.md``, ``compare.json`` and ``compare.png`` in ``out_dir``, each replaced atomically (tools/compare.py
    rewrites them after every method); returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    meta = {"date": datetime.date.today().isoformat(), "machine": machine_description(), **meta, "notes": NOTES}
    paths = {k: os.path.join(out_dir, f"compare.{k}") for k in ("md", "json", "png")}

    def write_json(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)

    def write_md(tmp: str) -> None:
        header = [f"- {key}: {value}" for key, value in meta.items() if key != "notes"]
        header += [f"- note: {note}" for note in NOTES]
        with open(tmp, "w") as f:
            f.write("\n".join(header) + "\n\n" + markdown_table(rows) + "\n")

    _replace_atomically(paths["json"], write_json)
    _replace_atomically(paths["md"], write_md)
    title = f"{meta.get('config', '')} ({meta['machine']}, {meta['date']})"
    _replace_atomically(paths["png"], lambda tmp: plot(rows, tmp, title))
    return paths
