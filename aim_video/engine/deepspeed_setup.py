"""The DeepSpeed config, derived in code from the training config, and the engine built from it.

Global batch = micro batch (`data.batch_size`, per rank) x `train.grad_accum_steps` x world size; the derived JSON is
written into the run folder so a run can be read back and reproduced. `train.deepspeed` holds raw DeepSpeed keys that
are merged over the derived ones (deep merge), for settings this schema does not name.
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import sys
from typing import Any

import torch

from aim_video.config import Config
from aim_video.engine.optim import build_optimizer, build_param_groups, build_scheduler

PRECISIONS = ("bf16", "fp16", "fp32")


class EngineSetupError(ValueError):
    """A training setting this run cannot use (bad value, or a precision the device does not support)."""


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _ReadKeys(dict):
    """A dict that remembers which keys were asked for (DeepSpeed reads the top-level keys it knows one by one)."""

    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(data)
        self.read: set[str] = set()

    def get(self, key: Any, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        self.read.add(key)
        return super().__contains__(key)

    def __copy__(self) -> _ReadKeys:  # DeepSpeed parses a copy of what it is given: this probe is a throwaway
        return self

    def __iter__(self) -> Any:  # a walk over every key: count them all as read (never a false alarm)
        self.read.update(super().keys())
        return super().__iter__()

    def keys(self) -> Any:  # DeepSpeed asks `SECTION in param_dict.keys()`: a membership test reads one key
        owner, view = self, super().keys()

        class _Keys:
            def __contains__(self, key: Any) -> bool:
                owner.read.add(key)
                return key in view

            def __iter__(self) -> Any:
                owner.read.update(view)
                return iter(view)

            def __len__(self) -> int:
                return len(view)

        return _Keys()

    def items(self) -> Any:
        self.read.update(super().keys())
        return super().items()


def _unknown_sections(ds: dict[str, Any], extra: dict[str, Any]) -> str:
    """Why the top-level keys of `extra` (train.deepspeed) that DeepSpeed's config parser never reads are refused,
    or "": DeepSpeed checks the keys inside its sections but ignores an unknown one (`zero_optimisation`,
    `comms_loger`) without a word."""
    from deepspeed.runtime.config import DeepSpeedConfig

    # without train_batch_size: DeepSpeed derives it for the world size it sees (1 before the process group exists,
    # the run's after; a global batch for one of them failed its check on the other, which switched this one off)
    probe = _ReadKeys({k: v for k, v in ds.items() if k != "train_batch_size"})
    try:
        DeepSpeedConfig(probe)
    except Exception:  # the engine reports it, in full, when it parses the same config
        return ""
    unread = sorted(k for k in extra if k not in probe.read)
    if not unread:
        return ""
    hint = difflib.get_close_matches(unread[0], sorted(str(k) for k in probe.read), n=1)
    return f"train.deepspeed sets {', '.join(unread)}, which DeepSpeed does not read (it would be ignored)" + (
        f". Did you mean {hint[0]!r}?" if hint else ""
    )


def derive_ds_config(cfg: Config, world_size: int) -> dict[str, Any]:
    """DeepSpeed JSON for this run: batch sizes, precision, ZeRO stage, clipping, then `train.deepspeed` on top."""
    train = cfg.train
    if train.precision not in PRECISIONS:
        raise EngineSetupError(f"train.precision must be one of {', '.join(PRECISIONS)}, got '{train.precision}'")
    if train.zero_stage not in (0, 1, 2):
        raise EngineSetupError(
            f"train.zero_stage must be 0, 1 or 2, got {train.zero_stage} (stage 3 partitions the frozen backbone "
            "too and gains nothing for an ~11 M-parameter trainable set)"
        )
    if cfg.data.batch_size < 1 or train.grad_accum_steps < 1:
        raise EngineSetupError("data.batch_size and train.grad_accum_steps must be >= 1")
    if train.precision != "fp32" and train.zero_stage == 0:
        # DeepSpeed 0.19 wraps the optimizer in FP16_UnfusedOptimizer at stage 0: under fp16 it never scales the
        # loss yet divides the gradients by the loss scale (1/65536 and shrinking: the adapters barely train), and
        # under bf16 it takes an AdamW step at start-up. Its ZeRO-1 optimizer does neither, and costs nothing on one GPU
        raise EngineSetupError(
            f"train.precision={train.precision} needs train.zero_stage=1 or 2: DeepSpeed's stage-0 mixed-precision "
            "optimizer divides the gradients by a loss scale it never applied (fp16) or steps once at start-up "
            "(bf16); ZeRO-1 works on one GPU as on many. Set train.zero_stage=1 (or train.precision=fp32)"
        )
    if train.grad_accum_dtype == "fp32" and train.precision == "fp16":
        raise EngineSetupError(
            "train.grad_accum_dtype=fp32 is supported with train.precision=bf16 only (DeepSpeed's fp16 path with fp32 "
            "accumulation and a dynamic loss scale is not tested here); set train.grad_accum_dtype=model"
        )
    micro, accum = cfg.data.batch_size, train.grad_accum_steps
    ds: dict[str, Any] = {
        "train_batch_size": micro * accum * world_size,
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "gradient_clipping": float(train.clip_grad),
        "zero_optimization": {"stage": train.zero_stage},
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {
            "enabled": train.precision == "fp16",
            "loss_scale": 0,  # 0 = dynamic loss scaling
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "steps_per_print": 10**9,  # our own logging reports progress; DeepSpeed's would duplicate it
        "wall_clock_breakdown": False,
    }
    if train.precision == "bf16" and train.grad_accum_dtype == "fp32":  # bf16's 8 bits lose small gradients' sums
        ds["data_types"] = {"grad_accum_dtype": "fp32"}  # over micro-batches
        ds["communication_data_type"] = "fp32"  # and over ranks (DeepSpeed casts to bf16 for the all-reduce else)
    if train.zero_stage > 0:
        ds["zero_optimization"].update(
            {
                "overlap_comm": False,
                "contiguous_gradients": True,
                "reduce_bucket_size": 5e7,
                "allgather_bucket_size": 5e7,
            }
        )
    merged = _deep_merge(ds, dict(train.deepspeed))
    batch_keys = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    changed = [k for k in batch_keys if merged[k] != ds[k]]
    if changed:
        raise EngineSetupError(
            f"train.deepspeed sets {', '.join(changed)}: set data.batch_size (micro batch per rank) and "
            "train.grad_accum_steps instead; the global batch is derived from them and the world size"
        )
    ours = {  # sections DeepSpeed ignores or obeys behind our back: aim-video builds the optimizer and scheduler
        "optimizer": "train.lr, train.betas and train.weight_decay (aim-video builds AdamW; this section is ignored)",
        "scheduler": "train.warmup_epochs and train.min_lr (aim-video builds the schedule; this section is ignored)",
        "bfloat16": "train.precision (bf16 is always written, so this old alias is ignored)",
        "gradient_clipping": "train.clip_grad (the saved config would say otherwise than what ran)",
    }
    for key, instead in ours.items():
        if key in train.deepspeed:
            raise EngineSetupError(f"train.deepspeed sets {key}: set {instead}")
    unknown = _unknown_sections(merged, dict(train.deepspeed))
    if unknown:
        raise EngineSetupError(unknown)
    owned = {  # what train.precision and train.zero_stage decide: the engine, checkpoints and logs rely on them
        "zero_optimization.stage": ("train.zero_stage", ds["zero_optimization"]["stage"]),
        "bf16.enabled": ("train.precision", ds["bf16"]["enabled"]),
        "fp16.enabled": ("train.precision", ds["fp16"]["enabled"]),
        "data_types.grad_accum_dtype": ("train.grad_accum_dtype", ds.get("data_types", {}).get("grad_accum_dtype")),
    }
    for path, (key, value) in owned.items():
        outer, inner = path.split(".")
        given = merged.get(outer, {}).get(inner, value) if isinstance(merged.get(outer), dict) else value
        if given != value:
            raise EngineSetupError(
                f"train.deepspeed sets {path}={given!r}: set {key} instead (the model's dtype, the checks of stage "
                "and precision, checkpoints and the saved config follow it)"
            )
    return merged


def write_ds_config(ds_config: dict[str, Any], folder: str, name: str = "deepspeed_config.json") -> str:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(ds_config, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
    return path


def peak_lr(cfg: Config, world_size: int) -> float:
    """`train.lr`, scaled linearly by global batch / `train.base_batch_size` when `train.scale_lr` is set."""
    global_batch = cfg.data.batch_size * cfg.train.grad_accum_steps * world_size
    return cfg.train.lr * global_batch / cfg.train.base_batch_size if cfg.train.scale_lr else cfg.train.lr


def model_dtype(cfg: Config) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg.train.precision]


def max_steps_fit_schedule(cfg: Config, steps_per_epoch: int) -> bool:
    """Whether train.max_steps ends the run before its epochs do, so that the lr schedule spans max_steps steps
    (a larger max_steps is only a cap: the schedule spans the epochs)."""
    return 0 < cfg.train.max_steps < max(1, round(cfg.train.epochs * steps_per_epoch))


def build_engine(
    cfg: Config, model: torch.nn.Module, steps_per_epoch: int, world_size: int, ds_config: dict[str, Any]
) -> tuple[Any, dict[str, Any]]:
    """DeepSpeed engine over `model` with AdamW on the trainable parameters and the per-step schedule.

    Returns the engine and a summary (lr, group sizes, schedule lengths) for the run log.
    """
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    supported = {"bf16": accel.is_bf16_supported(), "fp16": accel.is_fp16_supported(), "fp32": True}
    if not supported[cfg.train.precision]:
        other = "fp16" if cfg.train.precision == "bf16" else "bf16"
        raise EngineSetupError(
            f"train.precision={cfg.train.precision} is not supported on this device ({accel.device_name()}); "
            f"use train.precision={other if supported[other] else 'fp32'}"
        )
    lr = peak_lr(cfg, world_size)
    global_batch = cfg.data.batch_size * cfg.train.grad_accum_steps * world_size
    if global_batch != cfg.train.base_batch_size and not cfg.train.scale_lr and int(os.environ.get("RANK", "0")) == 0:
        print(
            f"warning: the global batch is {global_batch} (data.batch_size x train.grad_accum_steps x {world_size} "
            f"ranks) but train.lr={cfg.train.lr:g} is stated for train.base_batch_size={cfg.train.base_batch_size}: "
            "each clip weighs differently than the recipe intends; set train.scale_lr=true to scale the lr, or "
            "keep the global batch",
            file=sys.stderr,
            flush=True,
        )
    model.to(accel.current_device_name())  # before the optimizer: on CUDA its parameters then take the fused AdamW
    names = list(model.trainable_parameter_names())
    groups = build_param_groups(model, names, lr, cfg.train.weight_decay, cfg.train.backbone_lr_mult)
    optimizer = build_optimizer(groups, lr, cfg.train.betas)
    total = max(1, round(cfg.train.epochs * steps_per_epoch))
    warmup = round(cfg.train.warmup_epochs * steps_per_epoch)
    if max_steps_fit_schedule(cfg, steps_per_epoch):  # the schedule fitted into max_steps: warm-up keeps its share
        warmup = round(cfg.train.max_steps * cfg.train.warmup_epochs / max(cfg.train.epochs, 1e-9))
        total = cfg.train.max_steps
    warmup = min(total, max(1, warmup))
    scheduler = build_scheduler(optimizer, warmup, total, cfg.train.min_lr / lr if lr > 0 else 0.0)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, dist_init_required=False
    )
    summary = {
        "peak_lr": lr,
        "warmup_steps": warmup,
        "total_steps": total,
        "param_groups": [
            {
                "name": g["name"],
                "params": len(g["params"]),
                "numel": sum(p.numel() for p in g["params"]),
                "lr": g["lr"],
                "weight_decay": g["weight_decay"],
            }
            for g in groups
        ],
        "trainable_params": sum(p.numel() for g in groups for p in g["params"]),
    }
    return engine, summary
