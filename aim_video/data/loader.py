"""DataLoaders from the config: training clips and multi-view evaluation, both rank-aware.

Training (`build_train_loader`): `SeededSampler` (one shuffled order per epoch, seeded by `train.seed`, dealt out
to the ranks as DistributedSampler does),
workers with persistent state and prefetch, pinned memory when CUDA is present. **The caller sets the epoch**
before iterating, or every epoch sees the same order:

    loader = build_train_loader(cfg, rank, world_size)
    failures = FailureLog()
    for epoch in range(cfg.train.epochs):
        set_epoch(loader, epoch)              # = loader.sampler.set_epoch(epoch)
        for batch in loader:
            failures.update(batch["failures"])
            video = normalize(batch["video"].to(device, non_blocking=True), cfg.data.mean, cfg.data.std)
            ...
        log(failures.summary()); failures.reset()

Every training sample carries its own seed (`SeededSampler`: from train.seed, the epoch and its position in the
epoch's order), from which the clip's frame sampling and its augmentation draw: different samples and epochs draw
different clips and augmentations, a run is reproducible for a fixed seed whatever data.num_workers is, and a
resume inside an epoch gives the remaining samples exactly the clips the interrupted run would have read, also
under another number of ranks (the order and the seeds do not depend on it).

Reads go through `decode.read_frames` with data.backend (data.fallback_backend when it cannot open a file),
data.seek_mode / data.decode_device for torchcodec, the true frame counts of data.verify_report, and
data.read_timeout_s as a per-read watchdog (a read that runs over counts as a failed video; 0 turns it off).

Evaluation (`build_eval_loader`): every video of a split in order, all views decoded once per video. Under
several ranks a DistributedSampler pads the last batch with repeats; `batch["index"]` (dataset indices) and
`len(loader.dataset)` let the evaluator keep each video exactly once.
"""

from __future__ import annotations

import atexit
import dataclasses
import difflib
import functools
import logging
import multiprocessing
import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from aim_video.config import Config, ConfigError
from aim_video.data import decode
from aim_video.data.annotations import (
    AnnotationError,
    Annotations,
    VideoRecord,
    class_folder_names,
    load_annotations,
    read_class_map,
)
from aim_video.data.dataset import CollateEval, MultiViewDataset, TrainClipDataset, collate_train
from aim_video.data.kinetics import kinetics_classes, read_kinetics_csv, rows_of_split
from aim_video.data.transforms import build_eval_transform, build_train_transform
from aim_video.engine.distributed import device_and_backend, parse_stop_signals

log = logging.getLogger(__name__)


def resolve_classes(cfg: Config) -> list[str] | None:
    """Class names in index order: the class map if given, else the sorted labels of a train Kinetics CSV or the
    sorted folders of a train class-folder tree; None when the train source is a list file (integer labels)."""
    if cfg.data.class_map:
        if not os.path.isfile(cfg.data.class_map):
            raise AnnotationError(
                f"data.class_map={cfg.data.class_map}: no such file (a relative path starts from the current folder, "
                f"{os.getcwd()}): give the classes.txt that `prepare_kinetics.py lists` wrote"
            )
        return read_class_map(cfg.data.class_map)
    if os.path.isdir(cfg.data.train_list):
        return class_folder_names(cfg.data.train_list)
    if cfg.data.train_list.lower().endswith(".csv") and os.path.isfile(cfg.data.train_list):
        return kinetics_classes(cfg.data.train_list)
    return None  # a list file, or a train source not here (training names it; evaluation needs names elsewhere)


def _numbers_its_own_classes(source: str, split: str) -> bool:
    """Whether an evaluation source, given no class names, would number the classes by itself: a class-folder tree
    (its sorted folders), a CSV with labels (its own sorted labels). A list file's labels are integers, and a CSV
    without labels (a test split for inference) numbers nothing, nor does a folder of videos without class folders."""
    if os.path.isdir(source):
        return bool(class_folder_names(source))
    if not (source.lower().endswith(".csv") and os.path.isfile(source)):
        return False
    rows = rows_of_split(read_kinetics_csv(source), split, source)
    return any(row.get("label", "").strip() for row in rows)


def load_split(cfg: Config, split: str) -> Annotations:
    """Annotations of `split` (train | val | test), with labels checked against data.num_classes.

    Every train video needs a label (an unlabelled one would fail the loss at whichever batch holds it, hours in);
    val and test may be unlabelled (inference: predicted, not scored). An evaluation source that numbers its classes
    by itself (class folders, a labelled CSV) needs the train source's or the class map's names."""
    sources = {"train": cfg.data.train_list, "val": cfg.data.val_list, "test": cfg.data.test_list}
    if split not in sources:
        raise ValueError(f"unknown split {split!r}; choose train, val or test")
    source = sources[split]
    classes = resolve_classes(cfg)
    if classes is None and split != "train" and source and _numbers_its_own_classes(source, split):
        train = cfg.data.train_list
        why = (
            "is not set" if not train
            else "does not exist here" if not os.path.exists(train)
            else "is a list file of integer labels"
        )  # fmt: skip
        own = "its sorted class folders" if os.path.isdir(source) else "its own sorted labels"
        raise AnnotationError(
            f"data.{split}_list={source} would number the classes by {own}, but data.train_list={train!r} {why}: "
            "no train classes give the indices training used, and the two numberings agree only while every class "
            "is present in both (one absent shifts every later index, silently). Set data.class_map to the class "
            "names in training's index order (one per line; `prepare_kinetics.py lists` writes classes.txt)"
        )
    ann = load_annotations(source, cfg.data.root, classes, cfg.data.missing_files, f"data.{split}_list", split)
    unlabelled = [r.path for r in ann.records if r.label < 0]
    if unlabelled and split == "train":
        raise AnnotationError(
            f"data.train_list={source}: {len(unlabelled)} of {len(ann.records)} videos have no label, e.g. "
            f"{', '.join(unlabelled[:3])} (a line without a label or with -1, or a CSV row with an empty label: a "
            "test split's list?): training needs one for every video; label them, delete them, or give the train "
            "split's list"
        )
    if 0 < len(unlabelled) < len(ann.records):  # an evaluation list, partly labelled: a line lost its label?
        log.warning(
            "data.%s_list=%s: %d of %d videos have no label, e.g. %s: they are predicted, not scored; the metrics "
            "count the %d labelled ones",
            split, source, len(unlabelled), len(ann.records), unlabelled[0], len(ann.records) - len(unlabelled),
        )  # fmt: skip
    bad = [r for r in ann.records if any(lbl >= cfg.data.num_classes for lbl in r.labels)]
    if bad:
        raise AnnotationError(
            f"data.{split}_list={source}: {len(bad)} videos have a label >= data.num_classes="
            f"{cfg.data.num_classes}, e.g. {bad[0].path} (label {max(bad[0].labels)}); fix the list or num_classes"
        )
    multi = [r for r in ann.records if len(r.labels) > 1]
    if multi:  # only the first label reached the loss and the metrics: a correct second label scored as wrong
        raise AnnotationError(
            f"data.{split}_list={source}: {len(multi)} lines carry several labels, e.g. {multi[0].path} "
            f"(labels {list(multi[0].labels)}); training and evaluation are single-label (one class per video, as "
            "Kinetics and SSv2): keep one label per line"
        )
    used = len({lbl for r in ann.records for lbl in r.labels})
    if split == "train" and 0 < used < cfg.data.num_classes:  # e.g. a 3-class set under a recipe's 400-way head
        log.warning(
            "data.train_list=%s uses %d of data.num_classes=%d classes: if the data set has %d, set data.num_classes "
            "and model.num_classes to it (and data.class_map to the classes.txt `prepare_kinetics.py lists` wrote)",
            source, used, cfg.data.num_classes, used,
        )  # fmt: skip
    if split != "train":  # in training a repeated line weighs a video more; evaluation counts every video once
        ann = _once_each(ann, f"data.{split}_list={source}")
    return ann


def _once_each(ann: Annotations, what: str) -> Annotations:
    """`ann` with each video listed once: a repeated line (same path, same label) was scored once per copy; the same
    path under two labels is refused."""
    labels: dict[str, int] = {}
    kept, repeated = [], []
    for record in ann.records:
        if record.path not in labels:
            labels[record.path] = record.label
            kept.append(record)
        elif labels[record.path] != record.label:
            raise AnnotationError(
                f"{what}: {record.path} is listed with labels {labels[record.path]} and {record.label}; "
                "a video has one class: keep one of the lines"
            )
        else:
            repeated.append(record.path)
    missing = list(dict.fromkeys(ann.missing))  # a missing video listed twice is one missing video
    if not repeated:
        return dataclasses.replace(ann, missing=missing) if len(missing) < len(ann.missing) else ann
    log.warning(
        "%s: %d lines repeat a video listed before, e.g. %s: each video is evaluated and counted once",
        what, len(repeated), repeated[0],
    )  # fmt: skip
    return dataclasses.replace(ann, records=kept, missing=missing)


def ignore_signals_in_worker(worker_id: int, signums: tuple[int, ...]) -> None:
    """DataLoader worker init: ignore `signums`, the stop signals (train.stop_signals) the main process handles.

    `scancel --signal=TERM`, Slurm's preemption and Kubernetes signal every process of the job, workers included.
    torch gives each worker a SIGTERM handler that kills it unless the signal comes from its parent, and the main
    process then fails with "DataLoader worker (pid ...) is killed by signal: Terminated" before it can save. The main
    process shuts its workers down itself (and they exit on their own when it dies).
    """
    for signum in signums:
        signal.signal(signum, signal.SIG_IGN)


def _kill_workers_at_exit() -> None:
    """At interpreter exit, kill this process's daemonic children (DataLoader workers). They ignore the stop signals,
    SIGTERM among them, and multiprocessing's own exit handler stops them with SIGTERM, then waits: forever, for a
    process that ends with live workers (compare.py stopped by a preemption signal, a script that raised)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # torch's handler raises when a worker dies of a signal
    workers = [child for child in multiprocessing.active_children() if child.daemon]
    for child in workers:
        child.kill()
    for child in workers:
        child.join(timeout=10)


def _worker_init(cfg: Config) -> Callable[[int], None] | None:
    signums = tuple(int(s) for s in parse_stop_signals(cfg.train.stop_signals))
    if signums and _kill_workers_at_exit not in _EXIT_HOOKS:  # runs before multiprocessing's (atexit: last first)
        atexit.register(_kill_workers_at_exit)
        _EXIT_HOOKS.append(_kill_workers_at_exit)
    return functools.partial(ignore_signals_in_worker, signums=signums) if signums else None  # picklable: spawn too


_EXIT_HOOKS: list[Callable[[], None]] = []


def _loader_kwargs(cfg: Config) -> dict:
    workers = cfg.data.num_workers
    # pinned only for a CUDA device (DS_ACCELERATOR=cpu on a GPU node pinned, and its pin thread made a CUDA context)
    pin = cfg.data.pin_memory and device_and_backend(0)[0].type == "cuda"
    kwargs: dict = {"num_workers": workers, "pin_memory": pin}
    if workers > 0:
        kwargs.update(prefetch_factor=cfg.data.prefetch_factor, persistent_workers=cfg.data.persistent_workers)
        kwargs.update(worker_init_fn=_worker_init(cfg))  # training and its periodic evaluation alike
    return kwargs


INEXACT_POLICIES = ("fail", "drop", "keep")


def apply_verify_report(
    cfg: Config, records: list[VideoRecord], what: str
) -> tuple[list[VideoRecord], dict, list[tuple[str, str]]]:
    """(records, {absolute path: frames that really decode}, [(path, reason) dropped]) under data.verify_report.

    The report also says which videos return wrong frames on random access with the backend it was made for
    (`shifted`, `corrupt_after_seek`). When that backend (and torchcodec seek mode) is data.backend's, such videos
    among `records` are handled by data.inexact_videos: `fail` (the default: training on wrong frames is silent
    otherwise), `drop` them (logged, and returned with the reason, for evaluation to list), or `keep` them (logged).
    A report made for another backend gives only counts. data.verify_report may name several reports,
    comma-separated (one per split's list, as `verify` writes them).
    """
    d = cfg.data
    if d.inexact_videos not in INEXACT_POLICIES:
        raise ValueError(f"data.inexact_videos must be one of {', '.join(INEXACT_POLICIES)}, got {d.inexact_videos!r}")
    if not d.verify_report:
        return records, {}, []
    from aim_video.data.verify import WRONG_FRAMES, is_stale, read_report

    counts: dict[str, int] = {}
    wrong: dict[str, Any] = {}
    source: dict[str, str] = {}  # path -> the report that found it wrong
    listed = {os.path.abspath(r.path) for r in records}
    covered: set[str] = set()
    stale: list[str] = []
    broken: dict[str, Any] = {}  # unreadable, and PyAV decodes nothing either: whatever the backend, a bad download
    example = ""
    for report in [p.strip() for p in d.verify_report.split(",") if p.strip()]:
        header, every = read_report(report)
        example = example or next((c.path for c in every), "")
        checks = []
        for c in every:
            if os.path.abspath(c.path) not in listed:
                continue
            if is_stale(c):  # the file changed after the check: its verdict and count say nothing of it now
                stale.append(c.path)
                continue
            covered.add(os.path.abspath(c.path))
            checks.append(c)
        counts.update({os.path.abspath(c.path): c.decoded_frames for c in checks if c.decoded_frames > 0})
        broken.update({os.path.abspath(c.path): c for c in checks if c.status == "unreadable" and c.plays is False})
        same = header["backend"] == d.backend and (d.backend != "torchcodec" or header["seek_mode"] == d.seek_mode)
        if not same:
            made_for = header["backend"] + (f"/{header['seek_mode']}" if header["backend"] == "torchcodec" else "")
            log.warning(
                "%s was made for %s, not data.backend=%s: its frame counts are used, but whether %s reads these "
                "videos exactly is unchecked (run verify with --backend %s)",
                *(report, made_for or "an unknown backend", d.backend, d.backend, d.backend),
            )
            continue
        for c in checks:
            if c.status in WRONG_FRAMES:
                wrong[os.path.abspath(c.path)], source[os.path.abspath(c.path)] = c, report
    if stale:
        log.warning(
            "%s: %d videos changed after %s checked them (size or modification time differ), e.g. %s: their checks "
            "are ignored and they are read unchecked; run `tools/prepare_kinetics.py verify` again",
            *(what, len(stale), d.verify_report, stale[0]),
        )
    unchecked = sorted(listed - covered - {os.path.abspath(p) for p in stale})
    if unchecked:
        log.warning(
            "%s: %d of %d videos are in no verify report of %s, e.g. %s (the reports list paths such as %s): they are "
            "read unchecked; a report made from another list, or from relative paths under another working folder, "
            "matches none; run `tools/prepare_kinetics.py verify` on this list",
            *(what, len(unchecked), len(listed), d.verify_report, unchecked[0], example or "none"),
        )
    gone_before: list[tuple[str, str]] = []  # left out whatever data.inexact_videos says: nothing of them decodes
    if broken:
        bad = [r for r in records if os.path.abspath(r.path) in broken]
        for r in bad:
            why = broken[os.path.abspath(r.path)].reason
            gone_before.append((r.path, f"unreadable ({why}) and PyAV decodes nothing of it (verify report): download "
                                        "it again"))  # fmt: skip
        log.warning(
            "%s: %d videos decode with no backend according to %s, e.g. %s: left out (every read of them would fail, "
            "and training would replace them each epoch); download them again",
            *(what, len(bad), d.verify_report, gone_before[0][0] if gone_before else "-"),
        )
        records = [r for r in records if os.path.abspath(r.path) not in broken]
    hits = [r for r in records if os.path.abspath(r.path) in wrong]
    if not hits:
        return records, counts, gone_before
    examples = "; ".join(
        f"{r.path} ({wrong[os.path.abspath(r.path)].status}: {wrong[os.path.abspath(r.path)].reason})" for r in hits[:3]
    )
    summary = (
        f"{what}: {len(hits)} of {len(records)} videos return wrong frames on random access with {d.backend} "
        f"according to {d.verify_report}, e.g. {examples}"
    )
    fix = (
        f"Re-encode them with `tools/prepare_kinetics.py repair --report {source[os.path.abspath(hits[0].path)]}` "
        "(see its --help) "
        "and use the list it writes"
    )
    if d.inexact_videos == "fail":
        raise AnnotationError(f"{summary}. {fix}; or set data.inexact_videos=drop (or keep)")
    if d.inexact_videos == "drop":
        log.warning("%s; dropped (data.inexact_videos=drop)", summary)
        dropped = []
        for r in hits:
            check = wrong[os.path.abspath(r.path)]
            why = f"returns wrong frames with {d.backend} ({check.status}: {check.reason}); dropped "
            dropped.append((r.path, why + "(data.inexact_videos=drop): re-encode it with `prepare_kinetics.py repair`"))
        gone = {r.path for r in hits}
        return [r for r in records if r.path not in gone], counts, gone_before + dropped
    log.warning("%s; kept (data.inexact_videos=keep): their clips hold other frames than sampled", summary)
    return records, counts, gone_before


def _read_kwargs(cfg: Config, counts: dict) -> dict:
    d = cfg.data
    for key, name in (("data.backend", d.backend), ("data.fallback_backend", d.fallback_backend)):
        known = decode.backend_names()
        if name not in known and not (key == "data.fallback_backend" and name == ""):
            hint = difflib.get_close_matches(name, known, n=1)
            raise ConfigError(
                f"bad value for config key '{key}': {name!r} is not a decoding backend; choose one of "
                f"{', '.join(known)}" + (f". Did you mean {hint[0]!r}?" if hint else "")
            )
    if d.decode_device != "cpu":  # decord and PyAV decode on the CPU whatever it says; CUDA in a forked child fails
        if d.backend != "torchcodec":
            raise ConfigError(
                f"data.decode_device={d.decode_device} is read by torchcodec only; data.backend={d.backend} decodes on "
                "the CPU: set data.backend=torchcodec, or data.decode_device=cpu"
            )
        if d.read_timeout_s or d.num_workers:
            raise ConfigError(
                f"data.decode_device={d.decode_device} decodes in this process: CUDA cannot be used in the forked "
                f"children of data.read_timeout_s={d.read_timeout_s} and data.num_workers={d.num_workers}; "
                "set both to 0"
            )
    return {
        "backend": d.backend,
        "fallback_backend": d.fallback_backend,
        "num_threads": d.num_threads,
        "frame_counts": counts,
        "seek_mode": d.seek_mode,
        "decode_device": d.decode_device,
        "timeout_s": d.read_timeout_s,
    }


def build_train_dataset(cfg: Config) -> TrainClipDataset:
    d = cfg.data
    transform = build_train_transform(
        d.input_size, d.rrc_scale, d.rrc_ratio, d.flip, d.rand_augment_n, d.rand_augment_m, d.random_erasing,
        d.color_jitter, d.mean,
    )  # fmt: skip
    records, counts, _ = apply_verify_report(cfg, load_split(cfg, "train").records, "data.train_list")
    return TrainClipDataset(
        records, transform, d.sampling, d.num_frames, d.frame_stride, d.short_video,
        repeated_aug=d.repeated_aug, max_retries=d.max_retries, **_read_kwargs(cfg, counts),
    )  # fmt: skip


def build_train_loader(cfg: Config, rank: int = 0, world_size: int = 1) -> DataLoader:
    """Batches {video uint8 [B, T, C, H, W], label int64 [B], index int64 [B], failures list[str]}.

    B = data.batch_size clips per rank; with data.repeated_aug = N each batch holds B / N videos, N clips each.
    Call `set_epoch(loader, epoch)` before each epoch.
    """
    d = cfg.data
    if d.batch_size % d.repeated_aug:  # bad input: the one-line error and exit status 2, not a traceback
        raise ConfigError(f"data.batch_size={d.batch_size} must be a multiple of data.repeated_aug={d.repeated_aug}")
    dataset = build_train_dataset(cfg)
    videos_per_batch = d.batch_size // d.repeated_aug
    if len(dataset) < videos_per_batch * world_size:
        raise ConfigError(
            f"data.train_list has {len(dataset)} videos, fewer than one batch of {videos_per_batch} on each of "
            f"{world_size} ranks"
        )
    sampler = SeededSampler(len(dataset), cfg.train.seed, rank, world_size)
    return DataLoader(
        dataset,
        batch_size=videos_per_batch,
        sampler=sampler,
        collate_fn=collate_train,
        drop_last=True,
        generator=torch.Generator().manual_seed(cfg.train.seed * 1000 + rank),
        **_loader_kwargs(cfg),
    )


class SeededSampler(Sampler[tuple[int, int]]):
    """(index, seed) pairs for one rank: the epoch's shuffled order, dealt out to the ranks, each index with a seed
    from (seed, epoch, its position in the order).

    The order is DistributedSampler's (`randperm` seeded by seed + epoch, cut to a multiple of the ranks so that
    each gets as many) and so is the dealing: rank r of w reads positions r, r + w, r + 2w, ... After k batches of b
    on every rank the ranks together have read positions [0, k*b*w), whatever w is, and the seed travels with the
    index to whichever worker reads it. So a sample's clip depends neither on the worker count nor on what ran
    before nor on the number of ranks, and `starting_at(p)` (a resume after p samples of the epoch, under any
    number of ranks) deals out the rest of the same order with the same seeds.
    """

    def __init__(self, num_samples: int, seed: int, rank: int, world_size: int, start: int = 0) -> None:
        self.num_samples, self.seed, self.rank, self.world_size, self.start = num_samples, seed, rank, world_size, start
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def starting_at(self, start: int) -> SeededSampler:
        """The same epoch's sampler after its first `start` positions (all ranks' together)."""
        if start % self.world_size:
            raise ValueError(f"a resume position must be a multiple of the {self.world_size} ranks, got {start}")
        rest = SeededSampler(self.num_samples, self.seed, self.rank, self.world_size, self.start + start)
        rest.epoch = self.epoch
        return rest

    def _end(self) -> int:
        return self.num_samples - self.num_samples % self.world_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        for position in range(self.start + self.rank, self._end(), self.world_size):
            words = np.random.SeedSequence([self.seed, self.epoch, position]).generate_state(2)
            yield int(order[position]), int(words[0]) << 32 | int(words[1])  # the dataset folds them for torch

    def __len__(self) -> int:
        return len(range(self.start + self.rank, self._end(), self.world_size))


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffle for `epoch` (DistributedSampler.set_epoch); call before iterating each epoch."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def eval_dataset_of(cfg: Config, records: list[VideoRecord], what: str) -> MultiViewDataset:
    """The multi-view evaluation dataset of `records` under cfg.data: the test views, the decoding settings and the
    verify report (`what` names the records in its messages); what the report's policy left out is in `dropped`."""
    d = cfg.data
    transform = build_eval_transform(d.test_short_side, d.input_size, d.test_num_crops)
    records, counts, inexact = apply_verify_report(cfg, records, what)
    dataset = MultiViewDataset(
        records, transform, d.sampling, d.num_frames, d.frame_stride, d.test_num_clips,
        d.short_video, **_read_kwargs(cfg, counts),
    )  # fmt: skip
    dataset.dropped = inexact
    return dataset


def build_eval_dataset(cfg: Config, split: str = "val") -> MultiViewDataset:
    split_records = load_split(cfg, split)
    dataset = eval_dataset_of(cfg, split_records.records, f"data.{split}_list")
    missing = "file not found; dropped from the list (data.missing_files=drop)"
    dataset.dropped = [(p, missing) for p in split_records.missing] + dataset.dropped
    return dataset


def build_eval_loader(cfg: Config, split: str = "val", rank: int = 0, world_size: int = 1) -> DataLoader:
    """Per-video batches {video uint8 [B, V, T, C, S, S], label [B], index [B], errors list[(index, path, reason)]}.

    V = test_num_clips x test_num_crops, clip-major; B = eval.batch_size minus the unreadable videos of the batch,
    which are listed in `errors` instead (never substituted). With world_size > 1 the sampler pads the last
    batches with repeats of earlier indices: drop them by `index` (the dataset has `len(loader.dataset)` videos).
    """
    d = cfg.data
    dataset = build_eval_dataset(cfg, split)
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)
    views = d.test_num_clips * d.test_num_crops
    return DataLoader(
        dataset,
        batch_size=cfg.eval.batch_size,
        sampler=sampler,
        collate_fn=CollateEval((views, d.num_frames, 3, d.input_size, d.input_size)),
        **_loader_kwargs(cfg),
    )


class FailureLog:
    """Counts the training failures an epoch's batches carry back ("path: reason" strings)."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()

    def update(self, failures: list[str]) -> None:
        self.reasons.update(failures)

    @property
    def count(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> dict:
        return {"failed_loads": self.count, "failures": dict(self.reasons.most_common())}

    def reset(self) -> None:
        self.reasons.clear()
