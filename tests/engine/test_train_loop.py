"""train_one_epoch with a real DeepSpeed engine in this process (a world of one), losses, MixUp/CutMix."""

import json
import os
import time

import pytest
import torch

from aim_video.config import load_config
from aim_video.engine.deepspeed_setup import build_engine, derive_ds_config
from aim_video.engine.distributed import init_distributed
from aim_video.engine.train_loop import EpochState, NonFiniteLossError, RunLog, build_mixing, loss_fn, train_one_epoch
from tests.engine.conftest import TinyAdapted

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(scope="module")
def world():
    return init_distributed()


def _batches(n, poison_at=None):
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        x = torch.randn(2, 4, 8, generator=gen)
        if i == poison_at:
            x[0, 0, 0] = float("nan")
        yield {"video": x, "label": torch.tensor([i % 3, (i + 1) % 3]), "index": torch.tensor([2 * i, 2 * i + 1]),
               "failures": [f"bad{i}.mp4: unreadable"] if i == 1 else []}  # fmt: skip


def _run(world, tmp_path, batches, accum=1, max_steps=-1, micro=6, zero=0, log_every=1, precision="fp32", keep=None,
         model=TinyAdapted, label_smoothing=0.0, start=0):  # fmt: skip
    overrides = [f"train.precision={precision}", "data.batch_size=2", f"train.grad_accum_steps={accum}"]
    cfg = load_config(None, [*overrides, f"train.zero_stage={zero}"])
    torch.manual_seed(0)
    engine, _ = build_engine(cfg, model(), steps_per_epoch=micro // accum, world_size=1,
                             ds_config=derive_ds_config(cfg, 1))  # fmt: skip
    if keep is not None:
        keep.append(engine)
    log = RunLog(str(tmp_path), is_main=True, total_steps=micro // accum, initial_step=0)
    device, dtype = engine.device, next(engine.module.parameters()).dtype
    state, seen = EpochState(epoch=3, batches_done=start), []
    stats = train_one_epoch(
        engine, batches, state, micro_batches=micro, mix=None,
        prepare=lambda b: (b["video"].to(device, dtype), b["label"].to(device)), label_smoothing=label_smoothing,
        max_steps=max_steps, log=log, log_every=log_every, rank=0, world_size=1,
        on_step=lambda s: seen.append((s.step, s.batches_done)),
    )  # fmt: skip
    log.close()
    return stats, state, seen, [json.loads(line) for line in open(tmp_path / "log.jsonl")]


def test_epoch_counts_steps_failures_and_logs_every_step(world, tmp_path):
    stats, state, seen, log = _run(world, tmp_path, _batches(6), accum=2)
    assert seen == [(1, 2), (2, 4), (3, 6)] and state.batches_done == 6
    assert stats["failures"] == ["bad1.mp4: unreadable"] and stats["steps"] == 3
    assert stats["from_batch"] == 0
    train = [r for r in log if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3] and all(r["epoch"] == 3 for r in train)
    assert 0 <= stats["data_wait"] <= 1 and stats["clips_per_s"] > 0
    assert os.listdir(tmp_path / "tensorboard")
    # the epoch's loss is the mean over its micro-batches (it was the last logging window's: step 3's here)
    assert stats["loss"] == pytest.approx(sum(r["loss"] for r in train) / 3) and stats["last_loss"] == train[-1]["loss"]


def test_an_epoch_resumed_inside_says_where_its_statistics_start(world, tmp_path):
    """A resume at micro-batch 2 of 6 logged an epoch whose loss covered batches 2-5 as if it were the epoch's."""
    stats, state, seen, log = _run(world, tmp_path, _batches(4), start=2)
    assert stats["from_batch"] == 2 and state.batches_done == 6 and len(seen) == 4
    losses = [r["loss"] for r in log if r["event"] == "train"]
    assert stats["loss"] == pytest.approx(sum(losses) / 4)  # the 4 micro-batches this call ran


def test_the_log_carries_the_gradient_norm_deepspeed_computed(world, tmp_path):
    """grad_norm: the whole trainable set's, before any clipping; here checked at step 1 against autograd on a copy
    of the model (ZeRO computes it; fp32 without ZeRO has none to log, so the key is absent there)."""
    _, _, _, log = _run(world, tmp_path, _batches(6), zero=1)
    train = [r for r in log if r["event"] == "train"]
    assert all(r["grad_norm"] > 0 for r in train)
    torch.manual_seed(0)
    model = TinyAdapted()
    first = next(_batches(1))
    loss_fn(model(first["video"]), first["label"], 0.0).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert train[0]["grad_norm"] == pytest.approx(
        torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item(), rel=1e-5
    )
    pairs = [r for r in _run(world, tmp_path / "pairs", _batches(6), zero=1, log_every=2)[3] if r["event"] == "train"]
    assert [r["step"] for r in pairs] == [2, 4, 6]  # each record: the mean of its two steps' norms
    for record, (a, b) in zip(pairs, zip(train[0::2], train[1::2], strict=True), strict=True):
        assert record["grad_norm"] == pytest.approx((a["grad_norm"] + b["grad_norm"]) / 2, rel=1e-6)
    plain = [r for r in _run(world, tmp_path / "plain", _batches(6))[3] if r["event"] == "train"]
    assert plain and not any("grad_norm" in r for r in plain)


def test_label_smoothing_reaches_the_training_loss(world, tmp_path):
    """train.label_smoothing is in the loss the engine trains on and logs: a loop that passed 0 instead (the
    unsmoothed loss) passed every test. Step 1's loss, checked against the same first batch on a copy of the model
    (the engine's weights before its first step)."""
    _, _, _, log = _run(world, tmp_path, _batches(1), max_steps=1, label_smoothing=0.1)
    train = [r for r in log if r["event"] == "train"]
    torch.manual_seed(0)
    model = TinyAdapted()
    first = next(_batches(1))
    with torch.no_grad():
        logits = model(first["video"])
    smooth, plain = loss_fn(logits, first["label"], 0.1).item(), loss_fn(logits, first["label"], 0.0).item()
    assert abs(smooth - plain) > 1e-3  # the check below can tell the two apart
    assert [r["step"] for r in train] == [1] and train[0]["loss"] == pytest.approx(smooth, rel=1e-6)


def test_max_steps_stops_inside_the_epoch(world, tmp_path):
    _, state, seen, _ = _run(world, tmp_path, _batches(6), max_steps=2)
    assert state.step == 2 and state.batches_done == 2 and seen == [(1, 1), (2, 2)]


class _GradientBlowUp(torch.autograd.Function):
    """The identity forward; its backward multiplies the gradient by 1e6 (finite loss, gradients past fp16)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * 1e6


class _OverflowsOnce(TinyAdapted):
    """TinyAdapted whose first backward overflows fp16 at any loss scale DeepSpeed starts with."""

    def __init__(self) -> None:
        super().__init__()
        self.blow_up = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.blow_up:
            self.blow_up = False
            out = _GradientBlowUp.apply(out)
        return out


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (fp16)")
def test_an_fp16_overflow_skip_is_logged_and_the_schedule_keeps_to_the_step_count(world, tmp_path):
    """DeepSpeed skips the optimizer step on an fp16 overflow and leaves the lr schedule where it was, so the
    schedule fell behind the step count by every skip; it now follows the step count, as in the authors' loop."""
    engines = []
    stats, state, _, log = _run(
        world, tmp_path, _batches(6), zero=1, precision="fp16", keep=engines, model=_OverflowsOnce
    )
    assert [r["step"] for r in log if r["event"] == "overflow_skip"] == [1] and stats["skipped_steps"] == 1
    assert state.step == 6 and engines[0].lr_scheduler.last_epoch == 6


def test_nan_loss_stops_and_says_where(world, tmp_path):
    with pytest.raises(NonFiniteLossError) as err:
        _run(world, tmp_path, _batches(6, poison_at=4))
    message = str(err.value)
    assert "loss is nan on rank 0 at epoch 3, optimizer step 5, micro-batch 4" in message
    assert "sample indices [8, 9]" in message


def test_soft_targets_and_label_smoothing():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    hard = loss_fn(logits, torch.tensor([0]), 0.0)
    assert hard == pytest.approx(loss_fn(logits, torch.tensor([[1.0, 0.0, 0.0]]), 0.0).item())
    smooth = loss_fn(logits, torch.tensor([0]), 0.3)
    manual = -(torch.log_softmax(logits, -1) * torch.tensor([0.8, 0.1, 0.1])).sum()
    assert smooth.item() == pytest.approx(manual.item(), rel=1e-6)
    assert loss_fn(logits.bfloat16(), torch.tensor([0]), 0.0).dtype == torch.float32


def _pixels_follow_targets(mixed, target):
    """Clip b of the input is constant b and labelled b: a clip mixed with weight w on class k holds w of k's pixels
    (MixUp blends, CutMix pastes a box whose area fraction is its weight), so its mean is the target's class mean."""
    expected = (target * torch.arange(target.shape[1], dtype=target.dtype)).sum(1)
    assert torch.allclose(mixed.mean(dim=(1, 2, 3, 4)), expected, atol=1e-5), (mixed.mean(dim=(1, 2, 3, 4)), expected)


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixing_makes_soft_targets_and_mixes_whole_clips(mixup, cutmix):
    """The pixels are mixed as the targets say: returning the input clips with mixed targets passed this test."""
    torch.manual_seed(0)
    mix = build_mixing(mixup, cutmix, num_classes=5)
    video = torch.arange(4.0)[:, None, None, None, None].expand(4, 3, 3, 8, 8).clone()  # clip b is constant b
    mixed, target = mix(video, torch.tensor([0, 1, 2, 3]))
    assert type(mixed) is torch.Tensor and mixed.shape == video.shape
    assert target.shape == (4, 5) and torch.allclose(target.sum(1), torch.ones(4))
    assert (target.max(dim=1).values < 1).all()  # every clip mixed: the pixel check below has something to see
    _pixels_follow_targets(mixed, target)
    assert torch.equal(mixed, mixed[:, :1].expand_as(mixed))  # every frame of a clip mixed the same way
    assert build_mixing(0.0, 0.0, 5) is None


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 0.0), (0.0, 1.0)])
def test_with_repeated_augmentation_no_clip_is_mixed_with_its_own_video(mixup, cutmix):
    """data.repeated_aug=2 puts a video's two clips side by side and v2 mixes neighbours: half the clips were mixed
    with their own video, their targets left one-hot."""
    torch.manual_seed(0)
    label = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])  # 4 videos x 2 clips, as collate_train lays them out
    video = label.float()[:, None, None, None, None].expand(8, 2, 3, 8, 8).clone()
    mixed, target = build_mixing(mixup, cutmix, num_classes=4, repeats=2)(video, label)
    assert (target.max(dim=1).values < 1).all()  # every target mixes two videos
    _pixels_follow_targets(mixed, target)  # and so do the pixels (the targets alone were mixed: nothing noticed)
    mixed, unfixed = build_mixing(mixup, cutmix, num_classes=4)(video, label)
    assert (unfixed.max(dim=1).values == 1).sum() == 4  # what the neighbour pairing gave
    _pixels_follow_targets(mixed, unfixed)


AIM_SPATIAL = ["model.temporal_adapter=false", "model.joint_adapter=false", "model.temporal_embedding=false"]
METHOD_OVERRIDES = {
    "aim": [],
    "aim_spatial": AIM_SPATIAL,
    **{m: [f"model.method={m}"] for m in ("linear_probe", "full_finetune", "lora", "vpt_shallow", "vpt_deep")},
    "linear_adapter": ["model.method=linear_adapter"],
}


@pytest.mark.parametrize("method", list(METHOD_OVERRIDES))
def test_mixup_and_cutmix_train_every_method_through_the_engine(world, tmp_path, method):
    """Soft MixUp/CutMix targets through a real DeepSpeed engine: every trainable tensor moves, nothing else does."""
    from aim_video.models.build import build_model
    from tests.models.conftest import TINY_CLIP

    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=4", "model.num_classes=3", "train.lr=1e-2",
                             "model.drop_path_rate=0", "model.head_dropout=0", *METHOD_OVERRIDES[method]])  # fmt: skip
    cfg.model.arch, cfg.model.vit_kwargs = "vit_base_patch16_clip_quickgelu_224", dict(TINY_CLIP)
    torch.manual_seed(0)
    model = build_model(cfg.model, 4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    engine, _ = build_engine(cfg, model, steps_per_epoch=3, world_size=1, ds_config=derive_ds_config(cfg, 1))
    gen = torch.Generator().manual_seed(1)
    batches = iter([{"video": torch.randn(4, 4, 3, 32, 32, generator=gen), "label": torch.tensor([0, 1, 2, 0]),
                     "index": torch.arange(4)} for _ in range(3)])  # fmt: skip
    mix = build_mixing(0.8, 1.0, num_classes=3)
    seen = []

    def prepare(batch):
        return batch["video"].to(engine.device), batch["label"].to(engine.device)

    def mixing(video, label):
        video, target = mix(video, label)
        seen.append(target)
        return video, target

    log = RunLog(str(tmp_path), is_main=True, total_steps=3, initial_step=0)
    stats = train_one_epoch(engine, batches, EpochState(), micro_batches=3, prepare=prepare, mix=mixing,
                            label_smoothing=0.1, max_steps=-1, log=log, log_every=1, rank=0,
                            world_size=1)  # fmt: skip
    log.close()
    assert stats["steps"] == 3 and torch.isfinite(torch.tensor(stats["loss"]))
    assert len(seen) == 3 and all(t.shape == (4, 3) and (t.max(1).values < 1).any() for t in seen)  # soft targets
    trainable = set(model.trainable_parameter_names())
    moved = {n for n, p in model.named_parameters() if not torch.equal(p.detach().cpu(), before[n])}
    assert moved == trainable


if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


def _slow_batches(n, sleep_s=0.0):
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        time.sleep(sleep_s)  # slow storage: the loop waits for this batch
        yield {"video": torch.randn(2, 4, 8, generator=gen), "label": torch.tensor([i % 3, (i + 1) % 3]),
               "index": torch.tensor([2 * i, 2 * i + 1])}  # fmt: skip


def _run_timed(tmp_path, batches, *, micro=6, log_every=1, max_steps=-1, overrides=(), prepare_s=0.0, step_s=0.0):
    cfg = load_config(None, ["train.precision=fp32", "data.batch_size=2", "train.zero_stage=0", *overrides])
    torch.manual_seed(0)
    engine, _ = build_engine(
        cfg, TinyAdapted(), steps_per_epoch=micro, world_size=1, ds_config=derive_ds_config(cfg, 1)
    )
    log = RunLog(str(tmp_path), is_main=True, total_steps=micro, initial_step=0)
    device, dtype = engine.device, next(engine.module.parameters()).dtype

    def prepare(b):
        time.sleep(prepare_s)  # host work on a batch that has arrived (decoding done): not data wait
        return b["video"].to(device, dtype), b["label"].to(device)

    stats = train_one_epoch(
        engine, batches, EpochState(epoch=0), micro_batches=micro, mix=None, prepare=prepare, label_smoothing=0.0,
        max_steps=max_steps, log=log, log_every=log_every, rank=0, world_size=1,
        on_step=lambda s: time.sleep(step_s),  # a checkpoint save: not data wait either
    )  # fmt: skip
    log.close()
    return stats, [json.loads(line) for line in open(tmp_path / "log.jsonl")], engine


def test_the_data_wait_share_is_the_time_spent_waiting_for_the_next_batch(world, tmp_path):
    """data_wait is the share of the step time spent blocked on the loader: a slow loader shows near 1, a slow
    host step (or a checkpoint save after a step) near 0, whatever the rest costs."""
    slow_loader, log, _ = _run_timed(tmp_path / "a", _slow_batches(3, sleep_s=0.5), micro=3)
    assert slow_loader["data_wait"] > 0.5 and all(r["data_wait"] > 0.5 for r in log if r["event"] == "train")
    slow_step, log, _ = _run_timed(tmp_path / "b", _slow_batches(3), micro=3, prepare_s=0.5)
    assert slow_step["data_wait"] < 0.35 and all(r["data_wait"] < 0.35 for r in log if r["event"] == "train")
    saving, _, _ = _run_timed(tmp_path / "c", _slow_batches(3), micro=3, step_s=0.5)
    assert saving["data_wait"] < 0.35
    assert 2 / 0.5 > slow_loader["clips_per_s"] > 0  # 2 clips a step, each step >= 0.5 s


def test_the_last_step_of_an_epoch_and_max_steps_are_logged_whatever_log_every_is(world, tmp_path):
    """log_every=4 over 6 steps: step 6 ends the epoch and is logged (the epoch's loss covers its 6 micro-batches);
    max_steps=3 with log_every=2: step 3 ends the run and is logged."""
    stats, log, _ = _run_timed(tmp_path / "a", _slow_batches(6), log_every=4)
    train = [r for r in log if r["event"] == "train"]
    assert [r["step"] for r in train] == [4, 6]
    assert stats["loss"] == pytest.approx((4 * train[0]["loss"] + 2 * train[1]["loss"]) / 6)
    assert stats["last_loss"] == train[1]["loss"]
    _, log, _ = _run_timed(tmp_path / "b", _slow_batches(6), log_every=2, max_steps=3)
    assert [r["step"] for r in log if r["event"] == "train"] == [2, 3]


def test_the_logged_lr_is_the_scheduled_peak_groups_not_the_backbones(world, tmp_path):
    """With train.backbone_lr_mult=0.1 the log's lr is train.lr's schedule (the head's groups), not a tenth of it."""
    _, log, engine = _run_timed(
        tmp_path, _slow_batches(6), overrides=["train.backbone_lr_mult=0.1", "train.lr=0.01", "train.warmup_epochs=0"]
    )
    lrs = [r["lr"] for r in log if r["event"] == "train"]
    assert len(lrs) == 6 and lrs[0] == pytest.approx(0.01) and lrs[-1] < lrs[0]  # no warm-up: the peak first
    assert {g["name"] for g in engine.optimizer.param_groups} >= {"head_decay", "backbone_decay"}


def test_only_the_main_rank_writes_the_log(tmp_path):
    log = RunLog(str(tmp_path), is_main=False, total_steps=3, initial_step=0)
    log.event("start", step=0)
    log.event("train", step=1, loss=1.0)
    log.scalars(1, "train", {"loss": 1.0})
    log.close()
    assert os.listdir(tmp_path) == []
