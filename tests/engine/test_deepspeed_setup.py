import json
import os

import pytest
import torch

from aim_video.config import load_config
from aim_video.engine.deepspeed_setup import derive_ds_config, peak_lr, write_ds_config

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


def test_global_batch_is_micro_times_accumulation_times_world():
    cfg = load_config(None, ["data.batch_size=8", "train.grad_accum_steps=2"])
    ds = derive_ds_config(cfg, world_size=4)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (
        64,
        8,
        2,
    )


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp32"])
def test_precision_switches(precision):
    ds = derive_ds_config(load_config(None, [f"train.precision={precision}"]), 1)
    assert ds["bf16"]["enabled"] is (precision == "bf16")
    assert ds["fp16"]["enabled"] is (precision == "fp16")
    assert ds["fp16"]["loss_scale"] == 0  # dynamic loss scaling whenever fp16 is on


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_zero_stage_and_clipping(stage):
    precision = "fp32" if stage == 0 else "bf16"
    overrides = [f"train.zero_stage={stage}", "train.clip_grad=1.0", f"train.precision={precision}"]
    ds = derive_ds_config(load_config(None, overrides), 2)
    assert ds["zero_optimization"]["stage"] == stage
    assert ds["gradient_clipping"] == 1.0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_without_zero_is_refused(precision):
    """DeepSpeed 0.19's stage-0 fp16 optimizer never scales the loss but divides the gradients by the scale (the
    adapters moved 3-4x less per step than in fp32, and less as the scale grew); under bf16 it steps once at
    start-up. The default stage is 1, so a config that names no stage is fine."""
    with pytest.raises(ValueError, match=rf"train.precision={precision} needs train.zero_stage=1 or 2"):
        derive_ds_config(load_config(None, [f"train.precision={precision}", "train.zero_stage=0"]), 1)
    assert derive_ds_config(load_config(None, [f"train.precision={precision}"]), 1)["zero_optimization"]["stage"] == 1


@pytest.mark.parametrize(
    "override, instead",
    [
        ("train.deepspeed.optimizer.type=SGD", "train.lr"),
        ("train.deepspeed.scheduler.type=WarmupLR", "train.warmup_epochs"),
        ("train.deepspeed.gradient_clipping=1.0", "train.clip_grad"),
        ("train.deepspeed.bfloat16.enabled=false", "train.precision"),
    ],
)
def test_deepspeed_sections_aim_video_owns_are_refused(override, instead):
    """They were accepted and ignored (optimizer, scheduler, the bfloat16 alias) or overrode train.clip_grad behind
    the saved config's back."""
    section = override.split(".")[2].split("=")[0]
    with pytest.raises(ValueError, match=rf"train.deepspeed sets {section}: set {instead}"):
        derive_ds_config(load_config(None, [override]), 1)


def test_bad_precision_and_stage_are_named():
    with pytest.raises(ValueError, match="train.precision"):
        derive_ds_config(load_config(None, ["train.precision=fp8"]), 1)
    with pytest.raises(ValueError, match="train.zero_stage"):
        derive_ds_config(load_config(None, ["train.zero_stage=3"]), 1)


def test_user_overrides_are_deep_merged_but_batch_keys_are_refused(tmp_path):
    cfg = load_config(
        None,
        [
            "train.deepspeed.zero_optimization.overlap_comm=true",
            "train.zero_stage=2",
            "train.deepspeed.wall_clock_breakdown=true",
        ],
    )
    ds = derive_ds_config(cfg, 1)
    assert ds["zero_optimization"] == {**ds["zero_optimization"], "stage": 2, "overlap_comm": True}
    assert ds["zero_optimization"]["contiguous_gradients"] is True  # derived keys beside the override survive
    assert ds["wall_clock_breakdown"] is True
    path = write_ds_config(ds, str(tmp_path))
    assert json.load(open(path)) == ds
    bad = load_config(None, ["train.deepspeed.train_batch_size=128"])
    with pytest.raises(ValueError, match="data.batch_size"):
        derive_ds_config(bad, 1)
    # stage 3 and a precision the model is not cast to got through here (saved config: zero_stage 0, a dtype crash)
    for override, key in (
        ("train.deepspeed.zero_optimization.stage=3", "set train.zero_stage instead"),
        ("train.deepspeed.bf16.enabled=true", "bf16.enabled=True: set train.precision instead"),
    ):
        with pytest.raises(ValueError, match=key):
            derive_ds_config(load_config(None, ["train.precision=fp32", override]), 1)
    # DeepSpeed checks keys inside its sections, not the sections' names: a misspelt one was ignored
    for override, hint in (
        ("train.deepspeed.zero_optimisation.reduce_bucket_size=1000", "Did you mean 'zero_optimization'?"),
        ("train.deepspeed.comms_loger.enabled=true", "Did you mean 'comms_logger'?"),
    ):
        with pytest.raises(ValueError, match=rf"which DeepSpeed does not read \(it would be ignored\)\. {hint}"):
            derive_ds_config(load_config(None, [override]), 2)
    sections = ["comms_logger.enabled=true", "tensorboard.enabled=false", "flops_profiler.enabled=false"]
    sections += ["activation_checkpointing.partition_activations=false", "communication_data_type=fp32"]
    assert derive_ds_config(load_config(None, [f"train.deepspeed.{s}" for s in sections]), 2)["comms_logger"]
    # fp32 gradient accumulation under bf16: the key writes DeepSpeed's data_types; its raw form is refused
    fp32_sums = load_config(None, ["train.precision=bf16", "train.grad_accum_dtype=fp32"])
    fp32_ds = derive_ds_config(fp32_sums, 2)
    assert fp32_ds["data_types"] == {"grad_accum_dtype": "fp32"} and fp32_ds["communication_data_type"] == "fp32"
    assert "data_types" not in derive_ds_config(load_config(None, ["train.precision=bf16"]), 2)
    with pytest.raises(ValueError, match="data_types.grad_accum_dtype='fp32': set train.grad_accum_dtype instead"):
        derive_ds_config(load_config(None, ["train.deepspeed.data_types.grad_accum_dtype=fp32"]), 2)
    with pytest.raises(ValueError, match="train.grad_accum_dtype=fp32 is supported with train.precision=bf16 only"):
        derive_ds_config(load_config(None, ["train.precision=fp16", "train.grad_accum_dtype=fp32"]), 2)
    same = load_config(None, ["train.precision=bf16", "train.deepspeed.bf16.enabled=true"])
    assert derive_ds_config(same, 1)["bf16"]["enabled"] is True  # saying what train.precision says is fine


def test_lr_scaling_with_global_batch():
    cfg = load_config(None, ["data.batch_size=16", "train.scale_lr=true", "train.lr=3e-4"])
    assert peak_lr(cfg, 8) == pytest.approx(3e-4 * 128 / 64)
    cfg = load_config(None, ["data.batch_size=16", "train.lr=3e-4"])
    assert peak_lr(cfg, 8) == pytest.approx(3e-4)


def test_a_precision_the_device_lacks_is_refused_with_the_alternative(tiny):
    from deepspeed.accelerator import get_accelerator

    from aim_video.engine.deepspeed_setup import EngineSetupError, build_engine

    if get_accelerator().is_fp16_supported():
        pytest.skip("this device supports fp16")
    cfg = load_config(None, ["train.precision=fp16", "data.batch_size=2"])
    with pytest.raises(EngineSetupError, match="train.precision=fp16 is not supported on this device .* use train.pre"):
        build_engine(cfg, tiny, steps_per_epoch=4, world_size=1, ds_config=derive_ds_config(cfg, 1))


@pytest.mark.parametrize(
    ("max_steps", "warmup", "total"),
    [(-1, 250, 1000), (40, 10, 40), (2000, 250, 1000)],  # 10 epochs of 100 steps, warm-up 2.5 epochs
)
def test_max_steps_fits_the_whole_schedule_warm_up_included(tiny, max_steps, warmup, total, capsys):
    """train.max_steps shortens the schedule: warm-up keeps its share of it (else a 40-step smoke run of a 2.5-epoch
    warm-up recipe was warm-up only and never reached the cosine)."""
    from aim_video.engine.deepspeed_setup import build_engine
    from aim_video.engine.distributed import init_distributed

    init_distributed()
    overrides = ["train.precision=fp32", "data.batch_size=2", "train.epochs=10", "train.warmup_epochs=2.5"]
    cfg = load_config(None, [*overrides, f"train.max_steps={max_steps}"])
    _, summary = build_engine(cfg, tiny, steps_per_epoch=100, world_size=1, ds_config=derive_ds_config(cfg, 1))
    assert (summary["warmup_steps"], summary["total_steps"]) == (warmup, total)
    # a recipe's lr stated for 64 clips, run with 2: said at start (it trained silently at 32x the lr per clip)
    assert "the global batch is 2 (data.batch_size x train.grad_accum_steps x 1 ranks) but train.lr=0.0003 is " \
        "stated for train.base_batch_size=64" in capsys.readouterr().err


def test_the_optimizer_is_built_on_the_device_fused_on_cuda_and_steps(tiny):
    """The model moves to the accelerator before AdamW is built, so on CUDA it takes the fused kernel (it was built
    over CPU parameters and never fused); one step then moves the trainable weights and leaves the frozen ones."""
    from aim_video.engine.deepspeed_setup import build_engine
    from aim_video.engine.distributed import init_distributed

    init_distributed()
    cuda = torch.cuda.is_available()
    cfg = load_config(None, [f"train.precision={'bf16' if cuda else 'fp32'}", "data.batch_size=2"])
    engine, _ = build_engine(cfg, tiny, steps_per_epoch=4, world_size=1, ds_config=derive_ds_config(cfg, 1))
    inner = engine.optimizer
    while not isinstance(inner, torch.optim.AdamW):  # DeepSpeed's mixed-precision wrappers hold it as .optimizer
        inner = inner.optimizer
    assert inner.defaults["fused"] is (True if cuda else None)
    frozen, head = tiny.backbone.weight.detach().clone(), tiny.head.weight.detach().float().clone()
    x = torch.randn(2, 4, 8, device=engine.device, dtype=next(tiny.parameters()).dtype)
    loss = torch.nn.functional.cross_entropy(engine(x).float(), torch.tensor([0, 2], device=engine.device))
    engine.backward(loss)
    engine.step()
    assert torch.equal(tiny.backbone.weight, frozen) and not torch.equal(tiny.head.weight.float(), head)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # stepped by hand here
def test_backbone_lr_mult_and_min_lr_reach_the_engine(tiny):
    """train.backbone_lr_mult and train.min_lr are the engine's, not only the optimizer module's: build_engine could
    drop either (every group at the peak lr; a cosine down to 0) and no test noticed. Every trainable tensor but the
    head's is on the backbone side (TinyAdapted's adapter, norm and temporal embedding), at 0.1x the head's lr
    throughout, and the schedule ends at min_lr."""
    from aim_video.engine.deepspeed_setup import build_engine
    from aim_video.engine.distributed import init_distributed

    init_distributed()
    overrides = ["train.precision=fp32", "data.batch_size=2", "train.epochs=2", "train.warmup_epochs=0.5"]
    cfg = load_config(None, [*overrides, "train.lr=1e-3", "train.min_lr=2e-5", "train.backbone_lr_mult=0.1"])
    engine, summary = build_engine(cfg, tiny, steps_per_epoch=4, world_size=1, ds_config=derive_ds_config(cfg, 1))
    assert (summary["warmup_steps"], summary["total_steps"]) == (2, 8)
    inner = engine.optimizer
    while not isinstance(inner, torch.optim.AdamW):  # DeepSpeed's wrappers hold it as .optimizer
        inner = inner.optimizer
    groups = {g["name"]: g for g in inner.param_groups}  # ZeRO flattens each group's tensors: count them instead
    assert sorted(groups) == ["backbone_decay", "backbone_no_decay", "head_decay", "head_no_decay"]
    numel = {g["name"]: g["numel"] for g in summary["param_groups"]}
    trainable = {n: p.numel() for n, p in tiny.named_parameters() if p.requires_grad}
    head = trainable["head.weight"] + trainable["head.bias"]
    assert (numel["head_decay"], numel["head_no_decay"]) == (trainable["head.weight"], trainable["head.bias"])
    assert numel["backbone_decay"] + numel["backbone_no_decay"] == sum(trainable.values()) - head

    def lrs():
        return {name: g["lr"] for name, g in groups.items()}

    assert lrs() == pytest.approx({"head_decay": 5e-4, "head_no_decay": 5e-4,  # warm-up step 1 of 2: half the peak
                                   "backbone_decay": 5e-5, "backbone_no_decay": 5e-5})  # fmt: skip
    for _ in range(summary["total_steps"]):
        engine.lr_scheduler.step()
    assert lrs() == pytest.approx({"head_decay": 2e-5, "head_no_decay": 2e-5,  # the end of the cosine: min_lr
                                   "backbone_decay": 2e-6, "backbone_no_decay": 2e-6})  # fmt: skip
    assert engine.lr_scheduler.get_last_lr() == pytest.approx([2e-5, 2e-5, 2e-6, 2e-6])


def _load(*overrides: str):
    from aim_video.config import load_config

    return load_config(None, ["data.batch_size=2", *overrides])


def test_gradient_clipping_follows_train_clip_grad() -> None:
    """DeepSpeed's gradient_clipping is train.clip_grad (0 = off, the paper's default), not a constant."""
    from aim_video.engine.deepspeed_setup import derive_ds_config

    assert derive_ds_config(_load("train.clip_grad=0.0"), 1)["gradient_clipping"] == 0.0
    assert derive_ds_config(_load("train.clip_grad=0.3"), 1)["gradient_clipping"] == 0.3


def test_warmup_longer_than_training_is_cut_to_the_schedule() -> None:
    """train.warmup_epochs > train.epochs: the warm-up is clamped to the total steps (allowed with a warning)."""
    from aim_video.engine.deepspeed_setup import build_engine, derive_ds_config
    from aim_video.engine.distributed import init_distributed
    from tests.engine.conftest import TinyAdapted

    init_distributed()
    torch.manual_seed(0)
    cfg = _load("train.precision=fp32", "train.epochs=1", "train.warmup_epochs=2.5")
    _, summary = build_engine(cfg, TinyAdapted(), steps_per_epoch=4, world_size=1, ds_config=derive_ds_config(cfg, 1))
    assert (summary["warmup_steps"], summary["total_steps"]) == (4, 4)
