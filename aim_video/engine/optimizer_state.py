"""The optimizer state whole, across DeepSpeed's ZeRO partitions: what lets a run resume on another number of ranks.

DeepSpeed's own checkpoint shards load only under the number of ranks that saved them. Under ZeRO each checkpoint
also holds every trainable parameter's fp32 master copy and AdamW moments whole (`gather_optimizer_state`, written by
`checkpoint_io` as optimizer.safetensors), which `restore_optimizer_state` deals out to the partitions of any world
size. ZeRO 1/2 on DeepSpeed 0.19.8.
"""

from __future__ import annotations

from typing import Any

import torch

SCALER_KEYS = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")  # DeepSpeed's DynamicLossScaler


def _partitioned(engine: Any) -> Any:
    """DeepSpeed's ZeRO / bf16 optimizer wrapper (it keeps fp32 partitions linked to the parameters), else None."""
    wrapper = engine.optimizer
    return wrapper if hasattr(wrapper, "_lazy_init_hp_params_optimizer_state") else None


def _relink_moments(wrapper: Any) -> None:
    """Point every parameter's fragment at AdamW's moments. DeepSpeed (0.19.8, ZeRO 1/2) links them once, after it
    stepped the first parameter group, so the other groups' parameters (here the ones without weight decay) have
    none: `safe_get_full_optimizer_state` then fails on them."""
    wrapper._hp_optimizer_states_linked = False
    wrapper._lazy_init_hp_params_optimizer_state()


def gather_optimizer_state(engine: Any, keep: bool = True) -> tuple[dict[str, torch.Tensor], int] | None:
    """Collective. `{name:fp32, name:exp_avg, ...}` whole for every trainable parameter (the moments once AdamW has
    stepped), and AdamW's step count; None when DeepSpeed does not partition the optimizer. `keep=False` (the ranks
    that do not write it) only takes part in the collectives: nothing is copied to host memory."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    wrapper = _partitioned(engine)
    if wrapper is None:
        return None
    states = [st for st in wrapper.optimizer.state.values() if "step" in st]
    step = int(states[0]["step"]) if states else 0
    keys = [k for k, v in states[0].items() if torch.is_tensor(v) and v.dim() > 0] if states else []
    if keys:
        _relink_moments(wrapper)
    tensors = {}
    for name, param in engine.module.named_parameters():
        if param.requires_grad:
            values = {"fp32": safe_get_full_fp32_param(param)}
            values |= {key: safe_get_full_optimizer_state(param, key) for key in keys}
            if keep:
                tensors |= {f"{name}:{k}": v.detach().float().cpu().contiguous() for k, v in values.items()}
    return tensors, step


def restore_optimizer_state(engine: Any, tensors: dict[str, torch.Tensor], step: int) -> None:
    """Deal a :func:`gather_optimizer_state` result out to this engine's partitions, whatever its number of ranks.
    Call it after the lr scheduler's state is restored: the parameter groups take their lr from it."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    wrapper = _partitioned(engine)
    trainable = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    missing = sorted({f"{n}:fp32" for n, _ in trainable} - set(tensors))
    if wrapper is None or missing:
        raise ValueError(f"the saved optimizer state does not fit this model (missing {missing[:3]})")
    keys = sorted({k.rsplit(":", 1)[1] for k in tensors} - {"fp32"})
    base = wrapper.optimizer
    for group in base.param_groups if keys else []:  # AdamW's state as its first step creates it, filled below
        on_device = group.get("fused") or group.get("capturable")
        for p in group["params"]:
            count = torch.tensor(float(step), dtype=torch.float32, device=p.device if on_device else "cpu")
            base.state[p] = {"step": count, **{k: torch.zeros_like(p) for k in keys}}
    if keys:
        _relink_moments(wrapper)
    scheduler = getattr(engine, "lr_scheduler", None)
    if scheduler is not None:  # the groups' lr came with the optimizer's state_dict, which is not loaded here
        for group, lr in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
    for name, param in trainable:
        safe_set_full_fp32_param(param, tensors[f"{name}:fp32"].to(param.device))
        for key in keys:
            safe_set_full_optimizer_state(param, tensors[f"{name}:{key}"].to(param.device), key)
