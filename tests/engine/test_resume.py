"""engine.resume: where a resumed run starts (the epoch's batches, the position under another layout) and its
warnings."""

import os

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from aim_video.config import load_config
from aim_video.engine.checkpoint_io import CheckpointError
from aim_video.engine.resume import epoch_batches, global_batch_warning, resume_position, schedule_step

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


def test_resume_inside_an_epoch_continues_with_the_same_samples():
    data = list(range(20))
    loader = DataLoader(data, batch_size=2, sampler=DistributedSampler(data, num_replicas=1, rank=0, seed=7),
                        drop_last=True)  # fmt: skip
    full = [b.tolist() for b in epoch_batches(loader, epoch=2, skip=0, seed=0, rank=0)]
    rest = [b.tolist() for b in epoch_batches(loader, epoch=2, skip=3, seed=0, rank=0)]
    assert rest == full[3:] and full != sorted(full)
    other_epoch = [b.tolist() for b in epoch_batches(loader, epoch=3, skip=0, seed=0, rank=0)]
    assert other_epoch != full


def test_a_resume_position_carries_over_to_other_ranks_and_batches_in_whole_steps():
    """resume_position: micro-batches done in the checkpoint's epoch, as this run counts them (12 videos)."""
    base = {"epoch": 0, "world_size": 2, "batch_size": 2, "repeated_aug": 1, "grad_accum_steps": 1}

    def position(meta: dict, world: int, *overrides: str) -> int:
        cfg = load_config(None, ["data.batch_size=2", *overrides])
        return resume_position(cfg, {**base, **meta}, world, 6, num_videos=12, path="ckpt", main=False)

    inside = {"batches_done": 2, "micro_per_epoch": 3}  # 2 of 3 steps of 2 ranks x 2 videos: 8 videos used
    assert position(inside, 2) == 2  # the same layout
    assert position(inside, 1, "train.grad_accum_steps=2") == 4  # 1 rank: 4 micro-batches of 2 make the same 8
    assert position(inside, 4, "data.batch_size=1") == 2  # 4 ranks of 1: 2 micro-batches each
    assert position(inside, 2, "train.grad_accum_steps=2") == 2  # steps of 2 micro-batches: 2 done is one step
    assert position({"batches_done": 3, "micro_per_epoch": 3}, 1) == 6  # the epoch was finished: finished here too
    with pytest.raises(CheckpointError, match="after 8 videos of its order.*the saved run's: 4"):
        position(inside, 1, "data.batch_size=3")  # steps of 3 do not end at 8
    with pytest.raises(CheckpointError, match="optimizer step takes 12"):
        position(inside, 2, "train.grad_accum_steps=3")  # off DeepSpeed's accumulation boundary
    # an older meta.json, without the epoch's length: inferred from the list as that version computed it
    assert position({"batches_done": 3}, 1) == 6 and position({"batches_done": 2}, 1) == 4
    cfg = load_config(None, ["data.batch_size=2", "train.scale_lr=true"])
    assert global_batch_warning(cfg, base, 2, "ckpt") == ""
    assert "from 4 to 2 videos" in global_batch_warning(cfg, base, 1, "ckpt")
    assert "peak lr stays the saved run's" in global_batch_warning(cfg, base, 1, "ckpt")
    # the schedule's place: saved at step 9 (epoch 3 of 3-step epochs) with 4 videos a step
    saved = {**base, "step": 9, "epoch": 3, "batches_done": 0}
    assert schedule_step(cfg, saved, 2, epoch=3, batches_done=0, steps_per_epoch=3) is None  # the same batch
    assert schedule_step(cfg, saved, 1, epoch=3, batches_done=2, steps_per_epoch=6) == 20  # 2 a step: 6 an epoch
    fitted = load_config(None, ["data.batch_size=2", "train.max_steps=20"])  # the schedule spans max_steps (fewer
    assert schedule_step(fitted, saved, 4, epoch=3, batches_done=0, steps_per_epoch=1) is None  # than 30 epochs')
    capped = load_config(None, ["data.batch_size=2", "train.max_steps=1000"])  # only a cap: the epochs' schedule
    assert schedule_step(capped, saved, 1, epoch=3, batches_done=2, steps_per_epoch=6) == 20


def test_a_resume_inside_an_epoch_refuses_another_seed_or_train_list_length():
    """The epoch's order is a permutation of (train.seed, epoch, list length): under another one the position maps
    onto other videos, silently. At an epoch's end, or from an older meta.json without the length, nothing to check."""
    meta = {"epoch": 1, "world_size": 1, "batch_size": 2, "repeated_aug": 1, "grad_accum_steps": 1,
            "micro_per_epoch": 6, "batches_done": 2, "seed": 0, "num_videos": 12}  # fmt: skip

    def position(meta: dict, num_videos: int = 12, *overrides: str) -> int:
        cfg = load_config(None, ["data.batch_size=2", *overrides])
        return resume_position(cfg, meta, 1, 6, num_videos=num_videos, path="ckpt", main=False)

    assert position(meta) == 2
    with pytest.raises(CheckpointError, match=r"inside epoch 1 .*with train.seed=0 \(this run: 5\): the epoch's order"):
        position(meta, 12, "train.seed=5")
    with pytest.raises(CheckpointError, match=r"a train list of 12 videos \(data.train_list now has 14\)"):
        position(meta, 14)
    assert position({**meta, "batches_done": 6}, 14, "train.seed=5") == 6  # the epoch was finished: a new order
    assert position({k: v for k, v in meta.items() if k != "num_videos"}, 14) == 2  # older: the length unknown


def _load(*overrides: str):
    from aim_video.config import load_config

    return load_config(None, ["data.batch_size=2", *overrides])


class _Indices(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 24

    def __getitem__(self, item):  # SeededSampler yields (index, seed)
        return item[0]


def test_resume_skips_every_ranks_batches_under_a_seeded_sampler() -> None:
    """epoch_batches(skip=k) on rank r of 2 ranks yields exactly that rank's batches after its first k."""
    from torch.utils.data import DataLoader

    from aim_video.data.loader import SeededSampler
    from aim_video.engine.resume import epoch_batches

    for rank in (0, 1):
        loader = DataLoader(_Indices(), batch_size=2, sampler=SeededSampler(24, seed=3, rank=rank, world_size=2))
        full = [b.tolist() for b in epoch_batches(loader, epoch=1, skip=0, seed=0, rank=rank)]
        rest = [b.tolist() for b in epoch_batches(loader, epoch=1, skip=2, seed=0, rank=rank)]
        assert rest == full[2:]


def test_resume_position_counts_videos_not_repeated_copies() -> None:
    """Under data.repeated_aug=2 a micro-batch of 4 holds 2 videos: the position counts videos."""
    from aim_video.engine.resume import resume_position

    meta = {"epoch": 0, "world_size": 1, "batch_size": 4, "repeated_aug": 2, "grad_accum_steps": 1,
            "micro_per_epoch": 6, "batches_done": 3}  # fmt: skip
    # this run: 1 video per micro-batch (batch 2, repeated 2): the 6 videos done are 6 of its micro-batches
    cfg = _load("data.repeated_aug=2")
    assert resume_position(cfg, meta, 1, 12, num_videos=12, path="ckpt", main=False) == 6


def test_older_meta_epoch_length_drops_the_partial_accumulation_step() -> None:
    """Without micro_per_epoch in meta, the saved epoch length is rounded down to whole accumulation steps."""
    from aim_video.engine.resume import resume_position

    meta = {"epoch": 0, "world_size": 1, "batch_size": 2, "repeated_aug": 1, "grad_accum_steps": 4,
            "batches_done": 4}  # fmt: skip  12 videos / 2 = 6 micro-batches -> 4 in whole steps of 4: finished
    assert resume_position(_load(), meta, 1, 6, num_videos=12, path="ckpt", main=False) == 6


def test_a_checkpoint_at_an_epochs_start_resumes_under_another_seed() -> None:
    """batches_done=0: nothing of the epoch's order was used, so another seed or list length is fine."""
    from aim_video.engine.resume import resume_position

    meta = {"epoch": 1, "world_size": 1, "batch_size": 2, "repeated_aug": 1, "grad_accum_steps": 1,
            "micro_per_epoch": 6, "batches_done": 0, "seed": 0, "num_videos": 12}  # fmt: skip
    assert resume_position(_load("train.seed=5"), meta, 1, 7, num_videos=14, path="ckpt", main=False) == 0


def test_older_meta_epoch_end_pending_only_at_the_very_end() -> None:
    """Without epoch_end_pending in meta: pending at the last epoch's end or at train.max_steps, unless summarised."""
    from aim_video.engine.resume import epoch_end_pending

    cfg = _load("train.epochs=3")
    assert epoch_end_pending(cfg, {"epoch": 2, "step": 9}, finished=True, summary_exists=False)
    assert not epoch_end_pending(cfg, {"epoch": 1, "step": 6}, finished=True, summary_exists=False)
    assert not epoch_end_pending(cfg, {"epoch": 2, "step": 9}, finished=True, summary_exists=True)
    capped = _load("train.epochs=3", "train.max_steps=5")
    assert epoch_end_pending(capped, {"epoch": 1, "step": 5}, finished=False, summary_exists=False)
    assert not epoch_end_pending(capped, {"epoch": 1, "step": 4}, finished=False, summary_exists=False)


def test_schedule_step_counts_optimizer_steps_not_micro_batches() -> None:
    """schedule_step divides the resume position (micro-batches) by this run's accumulation steps."""
    from aim_video.engine.resume import schedule_step

    saved = {"epoch": 3, "world_size": 2, "batch_size": 2, "repeated_aug": 1, "grad_accum_steps": 1, "step": 9}
    cfg = _load("train.grad_accum_steps=2")  # 1 rank x 2 x 2 = 4 videos a step, as saved: the same global batch
    assert schedule_step(cfg, saved, 1, epoch=3, batches_done=4, steps_per_epoch=3) is None
    cfg = _load("train.grad_accum_steps=4")  # 8 videos a step now
    assert schedule_step(cfg, saved, 1, epoch=1, batches_done=4, steps_per_epoch=2) == 1 * 2 + 1
