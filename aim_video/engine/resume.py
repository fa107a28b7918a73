"""Where a resumed run goes on: the position inside the checkpoint's epoch, on any number of ranks, and what the
checkpoint left undone.

Every sample carries its own seed and the epoch's order comes from (train.seed, epoch, the list's length), so a run
that resumes inside an epoch skips the videos done and trains the rest of that order (`epoch_batches`), whatever its
number of ranks, as long as a whole number of its optimizer steps fits into what was done (`resume_position`).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from aim_video.config import Config
from aim_video.engine.checkpoint_io import CheckpointError
from aim_video.engine.deepspeed_setup import max_steps_fit_schedule


def _sampler_of(loader: Any) -> Any:
    sampler = getattr(loader, "sampler", None)
    if not hasattr(sampler, "set_epoch") and getattr(loader, "batch_sampler", None) is not None:
        sampler = getattr(loader.batch_sampler, "sampler", sampler)
    return sampler


class _SkipSampler(Sampler[int]):
    """The indices an epoch's sampler yields after its first `start` (the part a resumed checkpoint consumed)."""

    def __init__(self, sampler: Sampler[int], start: int) -> None:
        self.sampler, self.start = sampler, start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.start, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)  # type: ignore[arg-type]


def _rest_of_epoch(loader: DataLoader, skip_batches: int) -> DataLoader:
    """A one-off DataLoader over the epoch's remaining samples: nothing already trained on is decoded again."""
    sampler = loader.sampler
    if hasattr(sampler, "starting_at"):  # data.loader.SeededSampler: skip every rank's first batches at once
        sampler = sampler.starting_at(skip_batches * loader.batch_size * sampler.world_size)
    else:
        sampler = _SkipSampler(sampler, skip_batches * loader.batch_size)
    extra = {}
    if loader.num_workers > 0:
        extra = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": False}
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        collate_fn=loader.collate_fn,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        **extra,
    )


def _saved_layout(cfg: Config, meta: dict[str, Any]) -> tuple[int, int, int]:
    """(videos per micro-batch, accumulation steps, ranks) of the run that saved `meta` (older meta.json files lack
    the first two's parts: CheckpointManager.load fills them from the saved config, else this run's are assumed)."""
    batch, repeats = meta.get("batch_size", cfg.data.batch_size), meta.get("repeated_aug", cfg.data.repeated_aug)
    return batch // repeats, meta.get("grad_accum_steps", cfg.train.grad_accum_steps), meta["world_size"]


def resume_position(
    cfg: Config, meta: dict[str, Any], world_size: int, micro_per_epoch: int, num_videos: int, path: str, main: bool
) -> int:
    """The checkpoint's position in its epoch as this run's micro-batches per rank; `micro_per_epoch` when that
    epoch was finished. `num_videos`: the train list's length.

    `SeededSampler` deals one order per epoch out to the ranks, so after k micro-batches of b videos on each of w
    ranks the epoch has used its first k*b*w videos, whatever w was. Another number of ranks, batch size or
    accumulation resumes at the same place, given that a whole number of this run's optimizer steps fits there
    (a step must start on DeepSpeed's accumulation boundary).
    """
    done = meta["batches_done"]
    saved_videos, saved_accum, saved_world = _saved_layout(cfg, meta)
    videos, accum = cfg.data.batch_size // cfg.data.repeated_aug, cfg.train.grad_accum_steps
    saved_micro = meta.get("micro_per_epoch")
    if saved_micro is None:  # saved by an older version: its epoch length, as fit computed it then
        saved_micro = (num_videos // saved_world // saved_videos) // saved_accum * saved_accum
    if done >= saved_micro:
        return micro_per_epoch
    # the epoch's order is a permutation drawn from (train.seed, epoch, the list's length): position p of another
    # one is other videos, some trained on twice and some never in this epoch
    changed = []
    if meta.get("seed", cfg.train.seed) != cfg.train.seed:
        changed.append(f"train.seed={meta['seed']} (this run: {cfg.train.seed})")
    if meta.get("num_videos") is not None and meta["num_videos"] != num_videos:  # unknown in older meta.json files
        changed.append(f"a train list of {meta['num_videos']} videos (data.train_list now has {num_videos})")
    if done and changed:
        raise CheckpointError(
            f"{path} was saved inside epoch {meta['epoch']} ({done} batches per rank done) with "
            + ", ".join(changed)
            + ": the epoch's order of videos comes from these, so the rest of the epoch would not be the rest of "
            "that order. Resume with the saved values, or from a checkpoint saved at the end of an epoch"
        )
    if "micro_per_epoch" not in meta and done and main:
        print(
            f"warning: {path} was saved inside epoch {meta['epoch']} by an older version, whose per-sample seeds "
            "came from the rank: the rest of the epoch reads the videos the interrupted run would have, but draws "
            "their clips and augmentations as this version does",
            file=sys.stderr,
            flush=True,
        )
    seen, per_step = done * saved_videos * saved_world, videos * world_size * accum
    if seen % per_step:
        raise CheckpointError(
            f"{path} was saved inside epoch {meta['epoch']}, after {seen} videos of its order ({done} batches of "
            f"{saved_videos} on each of {saved_world} ranks); this run's optimizer step takes {per_step} (data."
            f"batch_size / data.repeated_aug = {videos}, x train.grad_accum_steps = {accum}, x {world_size} ranks), "
            "which does not fit a whole number of times. Resume with a global batch that does (the saved run's: "
            f"{saved_videos * saved_world * saved_accum}), or from a checkpoint saved at the end of an epoch"
        )
    return seen // (videos * world_size)


def epoch_end_pending(cfg: Config, meta: dict[str, Any], finished: bool, summary_exists: bool) -> bool:
    """Whether the checkpoint's epoch-end work (the evaluation, the save holding its metric) is still to do: a stop
    signal at the last step of an epoch (or at train.max_steps) saves and stops before it. `finished`: the
    checkpoint's epoch was finished."""
    pending = meta.get("epoch_end_pending")
    if pending is not None:
        return bool(pending)
    # older versions did not say: they caught up only the final evaluation of a run stopped at its very last step
    max_steps = cfg.train.max_steps
    ends = (finished and meta["epoch"] + 1 >= cfg.train.epochs) or 0 < max_steps <= meta["step"]
    return ends and not summary_exists


def _global_batches(cfg: Config, meta: dict[str, Any], world_size: int) -> tuple[int, int]:
    """Videos per optimizer step: the checkpoint's and this run's."""
    saved_videos, saved_accum, saved_world = _saved_layout(cfg, meta)
    now = cfg.data.batch_size // cfg.data.repeated_aug * cfg.train.grad_accum_steps * world_size
    return saved_videos * saved_accum * saved_world, now


def schedule_step(
    cfg: Config, meta: dict[str, Any], world_size: int, epoch: int, batches_done: int, steps_per_epoch: int
) -> int | None:
    """Where this run's lr schedule stands at the checkpoint's place in training, in steps of this run's size, when
    the global batch changed (else None: the restored schedule is right as it is).

    The schedule counts optimizer steps, and its length comes from this run's steps per epoch: the saved count of
    steps of another size put a run resumed on twice the ranks past the end of its schedule (the floor lr for the
    rest of training) and one on half the ranks at half of it. `epoch`, `batches_done`: the resume position in this
    run's micro-batches per rank (`resume_position`). When train.max_steps ends the run before its epochs, the
    schedule spans max_steps steps and the run ends at that step count whatever their size: it stays as it is (None);
    a larger max_steps is only a cap, and the schedule spans the epochs as without it."""
    saved, now = _global_batches(cfg, meta, world_size)
    if saved == now or max_steps_fit_schedule(cfg, steps_per_epoch):
        return None
    return epoch * steps_per_epoch + batches_done // cfg.train.grad_accum_steps


def global_batch_warning(cfg: Config, meta: dict[str, Any], world_size: int, path: str) -> str:
    """A warning when the videos per optimizer step differ from the checkpoint's (else "")."""
    saved, now = _global_batches(cfg, meta, world_size)
    if saved == now:
        return ""
    return (
        f"warning: the global batch changed from {saved} to {now} videos per optimizer step since {path}: the lr "
        "schedule goes on from the same point of training, in steps of the new size"
        + (", and the peak lr stays the saved run's (train.scale_lr scaled it then)" if cfg.train.scale_lr else "")
    )


def epoch_batches(loader: DataLoader, epoch: int, skip: int, seed: int, rank: int) -> Iterator[dict[str, Any]]:
    """The loader's batches for `epoch`, starting after the first `skip` (a resumed checkpoint consumed them).

    The sampler is re-seeded by epoch, and every sample carries its own seed (`data.loader.SeededSampler`), so an
    epoch's clips do not depend on what ran before it. A resume inside an epoch skips the consumed samples without
    decoding them; the others keep their seeds, so the resumed run reads exactly the clips the interrupted one
    would have. (The workers' base seed, drawn from a generator seeded by (seed, epoch, rank), only matters to a
    dataset read with plain indices.)
    """
    sampler = _sampler_of(loader)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    loader.generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 1009 + rank)
    return iter(_rest_of_epoch(loader, skip) if skip else loader)
