"""AdamW parameter groups over the trainable set only, and the per-step warmup + cosine schedule.

The paper's recipe: AdamW lr 3e-4 for a global batch of 64, betas (0.9, 0.999), weight decay 0.05 on weight
matrices only (none on biases, norms and embeddings), 2.5 warmup epochs then cosine to 0, and for ViT-L 0.1x lr on
everything but the classification head. Frozen parameters never reach the optimizer (they would cost optimizer
memory under DeepSpeed and make ZeRO partition dead weights).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

_MATRIX_OWNERS = (nn.Linear, nn.modules.conv._ConvNd)


def head_module_name(model: nn.Module) -> str:
    """Qualified name of the classification head (timm's `get_classifier()`, else a child called `head`)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else getattr(model, "head", None)
    for name, module in model.named_modules():
        if module is head and name:
            return name
    raise ValueError(
        f"{type(model).__name__} has no classification head to find (expected get_classifier() or a `head` child); "
        "the backbone lr multiplier needs to know which parameters belong to the head"
    )


def decays(model: nn.Module) -> dict[str, bool]:
    """For every parameter name: True when weight decay applies.

    Only the weight matrices of Linear and Conv layers decay; biases, norm scales and bare parameters such as the
    temporal embedding do not (the rule is decided by the owning module's type, not by name patterns). Names the
    model lists in timm's `no_weight_decay()` never decay.
    """
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    out: dict[str, bool] = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            out[full] = isinstance(module, _MATRIX_OWNERS) and param_name == "weight" and full not in skip
    return out


def build_param_groups(
    model: nn.Module,
    trainable_names: list[str],
    lr: float,
    weight_decay: float,
    backbone_lr_mult: float = 1.0,
) -> list[dict[str, Any]]:
    """Up to four AdamW groups (decay / no decay) x (head / backbone side) over `trainable_names` only.

    Each group carries its own `lr` (the peak lr times the multiplier) and a `name` for logs; the schedule scales
    every group's lr by the same factor, so the backbone multiplier holds throughout.
    """
    params = dict(model.named_parameters())
    unknown = sorted(set(trainable_names) - set(params))
    if unknown:
        raise ValueError(f"trainable names not in the model: {unknown[:10]}")
    frozen = [n for n in trainable_names if not params[n].requires_grad]
    if frozen:
        raise ValueError(f"parameters listed as trainable have requires_grad=False: {frozen[:10]}")
    decay_of = decays(model)
    head_prefix = head_module_name(model) + "." if backbone_lr_mult != 1.0 else None
    groups: dict[tuple[bool, bool], list[str]] = {}
    for name in trainable_names:
        is_head = head_prefix is None or name.startswith(head_prefix)
        groups.setdefault((is_head, decay_of[name]), []).append(name)
    out = []
    for (is_head, decay), names in sorted(groups.items(), reverse=True):
        side = "head" if head_prefix is not None and is_head else ("backbone" if head_prefix else "all")
        out.append(
            {
                "name": f"{side}_{'decay' if decay else 'no_decay'}",
                "params": [params[n] for n in names],
                "param_names": names,
                "lr": lr * (1.0 if is_head else backbone_lr_mult),
                "weight_decay": weight_decay if decay else 0.0,
            }
        )
    return out


def build_optimizer(groups: list[dict[str, Any]], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """torch AdamW (fused kernel on CUDA); DeepSpeed wraps it for mixed precision and ZeRO."""
    plain = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    fused = all(p.is_cuda for g in plain for p in g["params"])
    return torch.optim.AdamW(plain, lr=lr, betas=tuple(betas), fused=fused or None)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """lr factor for optimizer step `step` (0-based): linear warmup to 1 over `warmup_steps`, then cosine to
    `min_ratio` at `total_steps`; the first step already has a non-zero lr (1 / warmup_steps)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> LambdaLR:
    """Per-step LambdaLR (DeepSpeed steps it once per optimizer step and saves its state in checkpoints)."""
    return LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_ratio))
