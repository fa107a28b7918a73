"""Typed configuration: one dataclass per concern, loaded from YAML through OmegaConf.

Every CLI calls :func:`load_config` with a YAML path and ``section.key=value`` overrides. Unknown keys and wrong
types fail with the dotted key and the allowed keys (:class:`ConfigError`), and :func:`save_config` writes the
resolved config beside a run's outputs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    """Where the videos are and how clips are read, sampled and augmented."""

    root: str = ""  # folder that relative paths in the annotation files are resolved against
    train_list: str = ""  # `path label` list file, Kinetics CSV or class-folder tree
    val_list: str = ""
    test_list: str = ""
    class_map: str = ""  # optional file of class names, one per line, in index order
    num_classes: int = 400
    missing_files: str = "fail"  # fail | drop: what to do with annotation entries whose file does not exist
    # decoding
    backend: str = "decord"  # decord | torchcodec | pyav
    fallback_backend: str = "pyav"  # tried when `backend` cannot open a file; "" for none
    seek_mode: str = "exact"  # torchcodec: exact (scans the file once per open) | approximate (index from fps)
    decode_device: str = "cpu"  # torchcodec: cpu | cuda | cuda:N (NVDEC; needs read_timeout_s=0, no worker forks)
    num_threads: int = 1  # decoder threads per reader (1 when many workers run)
    read_timeout_s: float = 60.0  # per-item watchdog in training; a slower read counts as a failed video
    verify_report: str = ""  # JSON from `tools/prepare_kinetics.py verify` (several: a,b): true frame counts
    inexact_videos: str = "fail"  # fail | drop | keep: listed videos the report found returning wrong frames
    # sampling
    sampling: str = "dense"  # dense (clip_len x stride) | uniform (TSN segments)
    num_frames: int = 8
    frame_stride: int = 16
    short_video: str = ""  # "" | loop | clamp: videos shorter than the sampled span ("": loop dense, clamp uniform)
    # train augmentation (tensor ops, identical over the frames of a clip)
    input_size: int = 224
    rrc_scale: tuple[float, float] = (0.08, 1.0)
    rrc_ratio: tuple[float, float] = (0.75, 1.3333333)
    flip: bool = True
    rand_augment_n: int = 0  # 0 = off; SSv2 recipe: 4
    rand_augment_m: int = 7
    random_erasing: float = 0.0  # probability; SSv2 recipe: 0.25
    color_jitter: float = 0.0
    repeated_aug: int = 1  # clips drawn from one decode (decode-once-sample-many)
    # test views
    test_short_side: int = 224
    test_num_clips: int = 3
    test_num_crops: int = 1  # 1 (centre) or 3 (along the long side)
    # normalisation, applied on the accelerator after the uint8 transfer
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    # loader
    batch_size: int = 8  # per rank (DeepSpeed micro batch)
    num_workers: int = 4
    prefetch_factor: int = 2
    pin_memory: bool = True
    persistent_workers: bool = True
    max_retries: int = 10  # training: other samples tried when a video fails to decode


@dataclass
class ModelConfig:
    """The frozen timm ViT and the method that adapts it to video (AIM by default; baselines for comparisons)."""

    # aim | linear_probe | full_finetune | lora | vpt_shallow | vpt_deep | linear_adapter (aim_video/models/build.py)
    method: str = "aim"
    arch: str = "vit_base_patch16_clip_quickgelu_224"  # timm architecture name (weights never downloaded)
    vit_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm kwargs, e.g. a tiny ViT's embed_dim/depth
    pretrained: str = ""  # local file or folder: OpenAI CLIP (.pt/.pth) or timm (.pth/.safetensors/HF cache)
    # training refuses an empty model.pretrained (a forgotten path would train on a random backbone) unless this is
    # true: a random backbone on purpose (throughput runs, probes); evaluation and profiling do not ask for it
    random_backbone: bool = False
    # trained aim-video weights (model_trainable.safetensors or its run folder) to start from, on the same backbone:
    # adapters, temporal embedding (resampled to data.num_frames) and norm; the head only for the same classes
    init_trainable: str = ""
    num_classes: int = 400
    adapter_ratio: float = 0.25
    adapter_layers: str = "all"  # all | none | top:K | bottom:K | every:K (blocks 0, K, 2K, ...) | indices "0,3,5"
    spatial_adapter: bool = True
    temporal_adapter: bool = True
    joint_adapter: bool = True
    num_temporal_adapters: int = 1  # 2 = SSv2 variant
    mlp_adapter_scale: float = 0.5
    temporal_embedding: bool = True
    drop_path_rate: float = 0.2
    head_dropout: float = 0.5
    grad_checkpointing: bool = False
    compile: bool = False
    temporal_attention: str = "sdpa"  # sdpa | math | matmul | reduce: how AIM's attention over T is computed
    # baselines (read only by their method)
    lora_rank: int = 8  # lora: rank of the update on every block's attn.qkv and attn.proj
    lora_alpha: float = 16.0  # lora: the update is scaled by alpha / rank
    prompt_tokens: int = 8  # vpt_shallow / vpt_deep: learnable tokens per frame (per block for deep)
    linear_adapter_rank: int = 16  # linear_adapter: bottleneck of each purely linear (mergeable) adapter


@dataclass
class TrainConfig:
    """Optimisation, precision, schedule and checkpoints."""

    epochs: int = 30
    max_steps: int = -1  # 0 or less: none; N stops after N optimizer steps (smoke runs; warmup + cosine fitted in)
    lr: float = 3e-4  # for the global batch below; scale linearly with batch
    base_batch_size: int = 64  # global batch the lr is stated for (paper: 8 GPUs x 8)
    scale_lr: bool = False  # lr *= global_batch / base_batch_size
    min_lr: float = 0.0
    warmup_epochs: float = 2.5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    backbone_lr_mult: float = 1.0  # ViT-L recipe: 0.1 for everything but the head
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    grad_accum_steps: int = 1
    clip_grad: float = 0.0  # 0 = off (paper)
    precision: str = "bf16"  # bf16 | fp16 | fp32
    zero_stage: int = 1  # 0 | 1 | 2; bf16/fp16 need 1 or 2 (DeepSpeed's stage-0 mixed precision is broken)
    grad_accum_dtype: str = "model"  # model | fp32: what bf16 gradients add up in, over micro-batches and across
    # ranks (fp32: DeepSpeed's BF16_Optimizer at ZeRO 1, fp32 gradient partitions at ZeRO 2; bf16 only)
    deepspeed: dict[str, Any] = field(default_factory=dict)  # raw overrides merged into the derived DS config
    seed: int = 0
    eval_every: int = 1  # epochs; 0 = only at the end; -1 = never (e.g. when tools/test.py evaluates afterwards)
    save_every: int = 1  # epochs
    save_every_steps: int = 0  # >0 also saves every this many optimizer steps inside an epoch (long epochs, preemption)
    stop_signals: str = "SIGTERM,SIGUSR1"  # on these: save at the next optimizer step and stop ("" = no handler)
    dist_timeout_min: float = 60.0  # how long a collective waits for the slowest rank (a slow evaluation shard, a
    # save) before the job fails; also how long ranks wait for one that died when no launcher or srun
    # --kill-on-bad-exit=1 stops them. tools/test.py reads it too (override: train.dist_timeout_min=120)
    keep_last: int = 2
    elastic_checkpoints: bool = True  # ZeRO: each save also holds the optimizer state whole (12 bytes per trainable
    # parameter: 126 MiB for ViT-B/16 AIM, 1.1 GiB for its full fine-tuning) so another number of ranks can resume it
    resume: str = ""  # "" | auto | path to a checkpoint folder
    log_every: int = 10  # steps


@dataclass
class EvalConfig:
    """Multi-view testing."""

    protocol: str = ""  # "" (use data.test_num_clips/crops) | k400 | ssv2 | diving48
    average: str = "prob"  # prob (softmax per view, then mean) | score (mean of logits)
    view_chunk: int = 8  # views per forward pass, bounds memory
    batch_size: int = 1  # videos per rank per step
    strict: bool = False  # missing or unreadable videos are fatal
    save_scores: bool = False


@dataclass
class ProfileConfig:
    """`tools/profile.py` settings."""

    max_workers: int = 4
    loader_batches: int = 10
    batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    steps: int = 20
    warmup: int = 3
    trace: bool = False
    loader_delay_s: float = 0.0  # sleep per batch in the loader workers: simulates slow storage (verdict tests)
    peak_tflops: float = 0.0  # accelerator peak for MFU; 0 = the stated table in aim_video/profiling/flops.py


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    output_dir: str = "runs/default"


class ConfigError(ValueError):
    """A config file or override names a key that does not exist or has a value of the wrong type."""


# keys whose value is one of a few names: a typo stops at load time, not hours later in a worker or at evaluation
# (data.backend is checked when a loader is built: `decode.register_backend` may add names)
CHOICES: dict[str, tuple[Any, ...]] = {
    "data.missing_files": ("fail", "drop"),
    "data.seek_mode": ("exact", "approximate"),
    "data.inexact_videos": ("fail", "drop", "keep"),
    "data.sampling": ("dense", "uniform"),
    "data.short_video": ("", "loop", "clamp"),
    "model.method": ("aim", "linear_probe", "full_finetune", "lora", "vpt_shallow", "vpt_deep", "linear_adapter"),
    "model.temporal_attention": ("sdpa", "math", "matmul", "reduce"),
    "train.precision": ("bf16", "fp16", "fp32"),
    "train.zero_stage": (0, 1, 2),
    "train.grad_accum_dtype": ("model", "fp32"),
    "eval.protocol": ("", "k400", "ssv2", "diving48"),
    "eval.average": ("prob", "score"),
}


def check_choices(cfg: Config, source: str) -> None:
    """Raise ConfigError naming the first key of CHOICES whose value is not one of its names."""
    for key, allowed in CHOICES.items():
        section, leaf = key.split(".")
        value = getattr(getattr(cfg, section), leaf)
        if value not in allowed:
            hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            raise ConfigError(
                f"{source}: bad value for config key '{key}': {value!r} is not one of "
                f"{', '.join(repr(a) for a in allowed)}" + (f". Did you mean {hint[0]!r}?" if hint else "")
            )


# numeric keys with a valid range: a 0 stride (one frame repeated) or a warm-up longer than the run is accepted by
# the types, then trains something else than asked, or fails at the first evaluation, hours later
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "data.num_classes": (lambda v: v >= 1, "at least 1"),
    "data.num_frames": (lambda v: v >= 1, "at least 1"),
    "data.frame_stride": (lambda v: v >= 1, "at least 1 (frames between sampled frames)"),
    "data.input_size": (lambda v: v >= 1, "at least 1"),
    "data.rrc_scale": (lambda v: 0 < v[0] <= v[1] <= 1, "(min, max) with 0 < min <= max <= 1"),
    "data.rrc_ratio": (lambda v: 0 < v[0] <= v[1], "(min, max) with 0 < min <= max"),
    "data.mean": (
        lambda v: all(0 <= x <= 1 for x in v),
        "per-channel values in [0, 1] (frames are scaled to [0, 1] first; divide 0-255 statistics by 255)",
    ),
    "data.std": (
        lambda v: all(0 < x <= 1 for x in v),
        "per-channel values in (0, 1] (frames are scaled to [0, 1] first; divide 0-255 statistics by 255)",
    ),
    "data.rand_augment_n": (lambda v: v >= 0, "0 (off) or more"),
    "data.rand_augment_m": (lambda v: 0 <= v <= 30, "a magnitude in 0..30 (torchvision's 31 bins; the paper's 7)"),
    "data.random_erasing": (lambda v: 0 <= v <= 1, "a probability in [0, 1]"),
    "data.color_jitter": (lambda v: v >= 0, "0 (off) or more"),
    "data.repeated_aug": (lambda v: v >= 1, "at least 1"),
    "data.test_num_clips": (lambda v: v >= 1, "at least 1"),
    "data.test_num_crops": (lambda v: v in (1, 3), "1 (centre) or 3 (along the long side)"),
    "data.batch_size": (lambda v: v >= 1, "at least 1"),
    "data.num_workers": (lambda v: v >= 0, "0 (load in the main process) or more"),
    "data.prefetch_factor": (lambda v: v >= 1, "at least 1"),
    "data.num_threads": (lambda v: v >= 0, "0 (the decoder's choice) or more"),
    "data.read_timeout_s": (lambda v: v >= 0, "0 (no watchdog) or more"),
    "data.max_retries": (lambda v: v >= 0, "0 or more"),
    "model.num_classes": (lambda v: v >= 1, "at least 1"),
    "model.adapter_ratio": (lambda v: v > 0, "more than 0"),
    "model.drop_path_rate": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.head_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "model.lora_rank": (lambda v: v >= 1, "at least 1"),
    "model.prompt_tokens": (lambda v: v >= 1, "at least 1"),
    "model.linear_adapter_rank": (lambda v: v >= 1, "at least 1"),
    "train.epochs": (lambda v: v >= 1, "at least 1"),
    "train.lr": (lambda v: v >= 0, "0 or more"),
    "train.min_lr": (lambda v: v >= 0, "0 or more"),
    "train.base_batch_size": (lambda v: v >= 1, "at least 1 (the global batch train.lr is stated for)"),
    "train.backbone_lr_mult": (lambda v: v > 0, "more than 0 (a factor on the backbone's adapters' lr)"),
    "train.warmup_epochs": (lambda v: v >= 0, "0 or more"),
    "train.weight_decay": (lambda v: v >= 0, "0 or more"),
    "train.label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.mixup_alpha": (lambda v: v >= 0, "0 (off) or more"),
    "train.cutmix_alpha": (lambda v: v >= 0, "0 (off) or more"),
    "train.grad_accum_steps": (lambda v: v >= 1, "at least 1"),
    "train.clip_grad": (lambda v: v >= 0, "0 (off) or more"),
    "train.log_every": (lambda v: v >= 1, "at least 1"),
    "train.seed": (lambda v: v >= 0, "0 or more (the per-sample seeds are drawn from it)"),  # failed at the 1st batch
    "train.dist_timeout_min": (lambda v: v > 0, "more than 0 minutes"),
    "eval.view_chunk": (lambda v: v >= 1, "at least 1"),
    "eval.batch_size": (lambda v: v >= 1, "at least 1"),
}


_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """Print a config warning to stderr once per process, and only in the first rank's process (RANK from a
    launcher, SLURM_PROCID under srun): every rank loads the config, and a resume or an evaluation loads saved
    configs again, so 64 ranks printed it 64 times and more."""
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    if message in _WARNED or rank not in ("", "0"):
        return
    _WARNED.add(message)
    print(message, file=sys.stderr, flush=True)


def check_ranges(cfg: Config, source: str) -> None:
    """Raise ConfigError naming the first key of RANGES out of its range, or two keys that contradict each other
    (a warm-up longer than the run only warns: smoke runs of a recipe do that)."""
    for key, (ok, allowed) in RANGES.items():
        section, leaf = key.split(".")
        value = getattr(getattr(cfg, section), leaf)
        if not ok(value):
            raise ConfigError(f"{source}: bad value for config key '{key}': {value!r}; it must be {allowed}")
    d, t = cfg.data, cfg.train
    if not cfg.output_dir.strip():  # it failed as "[Errno 2] No such file or directory: ''", naming no key
        raise ConfigError(f"{source}: output_dir is empty: set the folder the run writes to (e.g. output_dir=runs/x)")
    if os.path.isfile(cfg.output_dir):
        raise ConfigError(f"{source}: output_dir={cfg.output_dir} is a file: set the folder the run writes to")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", d.decode_device):  # "gpu" sent every video to the fallback decoder
        raise ConfigError(
            f"{source}: bad value for config key 'data.decode_device': {d.decode_device!r}; it must be cpu, cuda or "
            "cuda:N (torchcodec's NVDEC decoding)"
        )
    if d.test_short_side < d.input_size:
        raise ConfigError(
            f"{source}: data.test_short_side={d.test_short_side} is smaller than data.input_size={d.input_size}: "
            "test views are crops of input_size from videos resized to that short side; raise data.test_short_side"
        )
    if d.test_short_side * 224 > d.input_size * 256:  # more than the usual resize-256-crop-224: a view is a patch
        warn_once(
            f"warning: data.test_short_side={d.test_short_side} is {d.test_short_side / d.input_size:.2g}x "
            f"data.input_size={d.input_size}: test views are {d.input_size}-pixel crops of videos resized to that "
            "short side, a part of the frame training never saw as a whole (a changed input_size with a recipe's "
            "224?); "
            f"set data.test_short_side={d.input_size} (the paper's protocol: equal)"
        )
    if t.min_lr > t.lr:
        raise ConfigError(
            f"{source}: train.min_lr={t.min_lr} is above train.lr={t.lr}: the cosine schedule would raise the lr after "
            "the warm-up; min_lr is the floor it decays to"
        )


def warn_training_settings(cfg: Config) -> None:
    """Warnings about a config that only training reads (an evaluation of the run's weights is not told them)."""
    t = cfg.train
    if t.warmup_epochs > t.epochs and t.max_steps <= 0:  # a smoke run of a recipe, say: allowed, but not silently
        warn_once(
            f"warning: train.warmup_epochs={t.warmup_epochs} is longer than train.epochs={t.epochs}: the lr is still "
            "rising when the run ends (train.max_steps fits the warm-up into a short run instead)"
        )


def _section_of(full_key: str) -> type:
    node: type = Config
    for part in full_key.split(".")[:-1]:
        sub = {f.name: f for f in dataclasses.fields(node)}.get(part)
        if sub is None or sub.default_factory is dataclasses.MISSING:
            break
        candidate = sub.default_factory
        if not (isinstance(candidate, type) and dataclasses.is_dataclass(candidate)):
            break
        node = candidate
    return node


def _failing_key(given: Any) -> str:
    """The dotted key of `given` (a config's loaded YAML or overrides) whose value the schema refuses, found by
    merging its values one by one: OmegaConf names none for a list of the wrong length ("TupleConfig length")."""
    if not isinstance(given, DictConfig):
        return ""
    leaves: list[tuple[list[str], Any]] = []

    def walk(node: Any, path: list[str]) -> None:
        if isinstance(node, dict) and path[:2] != ["model", "vit_kwargs"]:  # vit_kwargs is a free-form dict
            for key, value in node.items():
                walk(value, [*path, str(key)])
        else:
            leaves.append((path, node))

    walk(OmegaConf.to_container(given), [])
    for path, value in leaves:
        nested: Any = value
        for part in reversed(path):
            nested = {part: nested}
        try:
            OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.create(nested))
        except OmegaConfBaseException:
            return ".".join(path)
    return ""


def _explain(err: OmegaConfBaseException, source: str, given: Any = None) -> ConfigError:
    full_key = getattr(err, "full_key", None) or ""
    msg = str(err).splitlines()[0].rstrip(".")
    if "TupleConfig length" in msg or "is not a TupleConfig" in msg:  # a list key given another length or a scalar
        msg += " (a list is written [a, b, c], with as many values as the default has)"
    if not full_key:
        key = _failing_key(given)
        if key and "$VALUE" in msg:  # OmegaConf leaves its placeholders in for an element of a tuple: show the value
            value = OmegaConf.select(given, key)
            value = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
            msg = re.sub(r"Value '\$VALUE' of type '\$VALUE_TYPE'", f"an element of {value}", msg)
        return ConfigError(f"{source}: bad value for config key '{key}': {msg}" if key else f"{source}: {msg}")
    allowed = [f.name for f in dataclasses.fields(_section_of(re.sub(r"\[\d+\]$", "", full_key)))]
    leaf = re.sub(r"\[\d+\]$", "", full_key.split(".")[-1])  # profile.batch_sizes[2]: a value of a known key
    if leaf in allowed:  # the key exists: its value has the wrong type
        return ConfigError(f"{source}: bad value for config key '{full_key}': {msg}")
    hint = difflib.get_close_matches(leaf, allowed, n=1)
    did_you_mean = f" Did you mean '{hint[0]}'?" if hint else ""
    return ConfigError(
        f"{source}: unknown config key '{full_key}'.{did_you_mean} Allowed keys here: {', '.join(allowed)}"
    )


def _check_bools(node: Any, schema: type, source: str, prefix: str = "", merged: Any = None) -> None:
    """Refuse a number other than 0 or 1 given for a bool key: OmegaConf reads `data.flip=2` as True, which is a
    typo more often than a choice (`true`/`false`, `yes`/`no`, `on`/`off` and 0/1 stay accepted)."""
    if not isinstance(node, DictConfig):
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in node.keys():
        f = fields.get(str(key))
        if f is None:
            continue  # unknown keys are named by the merge
        if OmegaConf.is_interpolation(node, str(key)):  # ${...} may name a key of the other source: checked once
            if merged is not None and f.type in ("bool", bool):  # both are merged, on the value it resolves to
                raw = OmegaConf.to_container(node, resolve=False)[str(key)]  # type: ignore[index]
                value = _resolve_untyped(merged, f"{prefix}{key}", source)
                number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
                if isinstance(value, str):  # a resolver's string (oc.env): OmegaConf reads "7" as True too
                    with contextlib.suppress(ValueError):
                        number = float(value)
                if number is not None and number not in (0, 1):
                    raise ConfigError(
                        f"{source}: bad value for config key '{prefix}{key}': {raw} is {value!r}, not a bool; "
                        "write true or false"
                    )
            continue
        value = node[key]
        if isinstance(f.default_factory, type) and dataclasses.is_dataclass(f.default_factory):
            _check_bools(value, f.default_factory, source, f"{prefix}{key}.", merged)
        elif f.type in ("bool", bool) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if value not in (0, 1):
                raise ConfigError(
                    f"{source}: bad value for config key '{prefix}{key}': {value!r} is not a bool; "
                    "write true or false"
                )


def _resolve_untyped(cfg: DictConfig, full_key: str, source: str) -> Any:
    """The value of `full_key` with its interpolation resolved as written (relative `${.key}`, resolvers), before the
    schema converts it (a bool key turns 7 into True)."""
    plain = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    try:
        return OmegaConf.select(plain, full_key, throw_on_resolution_failure=True)
    except OmegaConfBaseException as err:
        raise _explain(err, source, cfg) from None


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Schema defaults <- YAML file <- `section.key=value` overrides, validated against the dataclasses."""
    cfg = OmegaConf.structured(Config)
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except yaml.YAMLError as err:  # not YAML: the scanner's line and column, not its traceback
            raise ConfigError(f"{path} is not valid YAML: {' '.join(str(err).split())}") from None
        if not isinstance(loaded, DictConfig):  # a list, or a bare value, at the top
            raise ConfigError(f"{path}: a config is a mapping of sections (data:, model:, train:, ...) at the top")
        try:
            _check_bools(loaded, Config, path)
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as err:
            raise _explain(err, path, loaded) from None
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"overrides must look like section.key=value, got: {' '.join(bad)}")
        # `key=` means an empty value, as in a shell, not OmegaConf's null (no field here is optional):
        # `model.pretrained=` is a random backbone, `train.epochs=` a type error naming the key
        overrides = [f"{o}''" if o.endswith("=") else o for o in overrides]
        keys = [o.split("=", 1)[0].strip() for o in overrides]
        for key in sorted({k for k in keys if keys.count(k) > 1}):  # easy to miss in a long command line
            given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].strip() == key]
            if len(set(given)) > 1:
                warn_once(f"warning: {key} is given as {', '.join(given)}: the last one counts")
        for override in overrides:  # a value YAML cannot parse: name the override, not a scanner traceback
            try:
                yaml.safe_load(override.split("=", 1)[1])
            except yaml.YAMLError as err:
                what = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise ConfigError(
                    f"command-line override '{override}': its value is not valid YAML ({what}); quote it, or close "
                    "its brackets: a list is written [a,b]"
                ) from None
        given = None
        try:
            given = OmegaConf.from_dotlist(overrides)
            _check_bools(given, Config, "command-line override")
            cfg = OmegaConf.merge(cfg, given)
        except OmegaConfBaseException as err:
            raise _explain(err, "command-line override", given) from None
    source = (path or "defaults") + (" with overrides" if overrides else "")
    _check_bools(cfg, Config, source, merged=cfg)  # the interpolated bools, now that every source is merged
    try:  # resolving interpolations: one naming no key, or a value of the wrong type
        obj = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        raise _explain(err, source, cfg) from None
    assert isinstance(obj, Config)
    check_choices(obj, source)
    check_ranges(obj, source)
    return obj


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict[str, Any]:
    container = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    assert isinstance(container, dict)
    return container


def from_dict(data: dict[str, Any] | DictConfig) -> Config:
    """Rebuild a Config from a saved dict (checkpoints, results JSON), validated like a YAML file."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), data)
    except OmegaConfBaseException as err:
        raise _explain(err, "saved config") from None
    obj = OmegaConf.to_object(merged)
    assert isinstance(obj, Config)
    return obj


# settings that name files or folders: a run saves them absolute (`with_absolute_paths`)
PATH_KEYS = (
    "data.root", "data.train_list", "data.val_list", "data.test_list", "data.class_map", "data.verify_report",
    "model.pretrained", "model.init_trainable", "output_dir",
)  # fmt: skip


def with_absolute_paths(cfg: Config) -> Config:
    """A copy of `cfg` whose PATH_KEYS are absolute, resolved against the current folder.

    A run saves its config (config.yaml, the checkpoints, the exported weights): relative paths in it resolved
    against whatever folder tools/test.py or infer.py ran from later, and failed anywhere but where training ran.
    """
    out = copy.deepcopy(cfg)
    for key in PATH_KEYS:
        *sections, leaf = key.split(".")
        owner = out
        for section in sections:
            owner = getattr(owner, section)
        value = getattr(owner, leaf)
        if key == "data.verify_report":  # the one list of paths (a,b): other paths keep their commas
            setattr(owner, leaf, ",".join(os.path.abspath(p.strip()) for p in value.split(",") if p.strip()))
        elif value:  # "" stays unset
            setattr(owner, leaf, os.path.abspath(value))
    if not out.data.root:  # the lists' relative entries start from this folder: say so, for other folders later
        out.data.root = os.getcwd()
    return out


def save_config(cfg: Config, folder: str, name: str = "config.yaml") -> str:
    """Write the resolved config atomically into `folder` and return its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(to_yaml(cfg))
    os.replace(tmp, path)
    return path


def config_cli_main(cfg_path: str | None, overrides: list[str]) -> Config:
    """Load a config for a CLI; on a bad key print the reason and exit with status 2."""
    try:
        return load_config(cfg_path, overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
