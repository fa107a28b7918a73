import json
import os

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from aim_video.config import load_config
from aim_video.data import decode, encode
from aim_video.data.annotations import AnnotationError, RecordTable, VideoRecord, write_lines
from aim_video.data.loader import FailureLog, build_eval_loader, build_train_dataset, build_train_loader, set_epoch
from tests.data.conftest import decoded_frame_index, frame_code_video, installed_backends, make_corrupt_corpus
from tests.data.videos import HangOnNameReader, false_keyframes, make_h264


def tiny_cfg(train_list: str, val_list: str = "", **data):
    overrides = {
        "data.train_list": train_list,
        "data.val_list": val_list or train_list,
        "data.num_classes": 2,
        "data.num_frames": 4,
        "data.frame_stride": 2,
        "data.input_size": 32,
        "data.test_short_side": 32,
        "data.test_num_clips": 2,
        "data.batch_size": 2,
        "data.num_workers": 0,
        "eval.batch_size": 2,
    }
    overrides.update({f"data.{k}": v for k, v in data.items()})
    return load_config(None, [f"{k}={v}" for k, v in overrides.items()])


def test_train_batches_follow_the_contract(video_dir):
    loader = build_train_loader(tiny_cfg(video_dir), rank=0, world_size=1)
    set_epoch(loader, 0)
    batches = list(loader)
    assert len(batches) == 3  # 6 videos, 2 per batch
    b = batches[0]
    assert set(b) == {"video", "label", "index", "failures", "fallbacks"}
    assert b["video"].dtype == torch.uint8 and b["video"].shape == (2, 4, 3, 32, 32)
    assert b["label"].dtype == torch.int64 and b["index"].dtype == torch.int64
    assert b["failures"] == [] and b["fallbacks"] == []
    seen = torch.cat([x["index"] for x in batches]).tolist()
    assert sorted(seen) == list(range(6))
    recs = loader.dataset.records
    assert all(
        recs[i].label == lbl for x in batches for i, lbl in zip(x["index"].tolist(), x["label"].tolist(), strict=True)
    )


def test_epochs_reshuffle_and_ranks_split(video_dir):
    cfg = tiny_cfg(video_dir, batch_size=1)
    orders = []
    for epoch in (0, 1, 0):
        loader = build_train_loader(cfg, 0, 1)
        set_epoch(loader, epoch)
        orders.append([int(b["index"]) for b in loader])
    assert orders[0] == orders[2] and orders[0] != orders[1]
    parts = []
    for rank in (0, 1):
        loader = build_train_loader(cfg, rank, 2)
        set_epoch(loader, 3)
        parts.append({int(b["index"]) for b in loader})
    assert len(parts[0]) == len(parts[1]) == 3 and not parts[0] & parts[1]


class CountingReader(decode._READERS["decord"]):
    """decord, noting the path of each batched read (`get`): tests how often a video is decoded, not decoding."""

    reads: list[str] = []

    def get(self, indices: list[int]) -> np.ndarray:
        CountingReader.reads.append(self.path)
        return super().get(indices)


def test_repeated_aug_one_decode_many_clips(video_dir):
    """data.repeated_aug=N augments one decoded clip N times: a dataset that decoded once per repeat passed, as
    the batch's shape, indices and differing clips are the same either way; only the count of reads tells."""
    # read_timeout_s=0: no watchdog child, so the reads happen (and are counted) in this process
    cfg = tiny_cfg(
        video_dir, batch_size=4, repeated_aug=2, backend="counting_decord", fallback_backend="''", read_timeout_s=0
    )
    decode.register_backend("counting_decord", CountingReader)
    CountingReader.reads = []
    try:
        loader = build_train_loader(cfg, 0, 1)
        b = next(iter(loader))
    finally:
        decode._READERS.pop("counting_decord", None)
    assert b["video"].shape == (4, 4, 3, 32, 32)
    assert b["index"][0] == b["index"][1] and b["index"][2] == b["index"][3]
    assert not torch.equal(b["video"][0], b["video"][1])  # two augmentations of one decoded clip
    # one read per video of the batch (2 videos x 2 clips), not one per clip
    assert CountingReader.reads == [loader.dataset.records[int(i)].path for i in b["index"][::2]]


def test_augmentation_settings_reach_the_train_transform(video_dir):
    """data.rand_augment_n/m, data.random_erasing and data.color_jitter (the SSv2 recipe) must build the train
    pipeline: a loader that dropped them trained without augmentation, and every shape and batch looked the same."""
    ssv2 = build_train_dataset(
        tiny_cfg(video_dir, rand_augment_n=4, rand_augment_m=7, random_erasing=0.25, color_jitter=0.4)
    ).transform.compose.transforms
    kinds = [type(t) for t in ssv2]
    assert kinds == [v2.RandomResizedCrop, v2.RandomHorizontalFlip, v2.RandAugment, v2.ColorJitter, v2.RandomErasing]
    assert (ssv2[2].num_ops, ssv2[2].magnitude) == (4, 7)
    assert ssv2[3].brightness == ssv2[3].contrast == ssv2[3].saturation == pytest.approx((0.6, 1.4))
    assert ssv2[4].p == 0.25
    # the magnitude read from the config, not left at its default (7)
    other = build_train_dataset(tiny_cfg(video_dir, rand_augment_n=2, rand_augment_m=9)).transform.compose.transforms
    assert [(t.num_ops, t.magnitude) for t in other if isinstance(t, v2.RandAugment)] == [(2, 9)]
    default = build_train_dataset(tiny_cfg(video_dir)).transform.compose.transforms
    assert [type(t) for t in default] == [v2.RandomResizedCrop, v2.RandomHorizontalFlip]


@pytest.mark.parametrize("backend", installed_backends())
def test_workers_draw_different_augmentations(video_dir, backend):
    # every item is the same video; with 2 workers each draws its own crops and clip starts
    lst = os.path.join(video_dir, "same.txt")
    write_lines(lst, [os.path.join(video_dir, "archery", "v2.mp4") + " 0"] * 8)
    cfg = tiny_cfg(lst, batch_size=1, num_workers=2, persistent_workers=False, backend=backend, fallback_backend="''")
    loader = build_train_loader(cfg, 0, 1)
    set_epoch(loader, 0)
    clips = [b["video"][0] for b in loader]
    by_worker = [torch.stack(clips[0::2]), torch.stack(clips[1::2])]  # batches alternate between the workers
    assert not torch.equal(by_worker[0], by_worker[1])
    assert len({c.numpy().tobytes() for c in clips}) == len(clips)


def test_clips_depend_on_the_seed_not_on_the_workers(video_dir):
    """Each sample's clip comes from its own seed (SeededSampler): 0 and 2 workers read the same epoch identically,
    a later epoch differs, and the seeds of an epoch's later samples do not depend on the earlier ones."""

    def epoch(workers: int, number: int) -> list[torch.Tensor]:
        loader = build_train_loader(tiny_cfg(video_dir, num_workers=workers, persistent_workers=False), 0, 1)
        set_epoch(loader, number)
        return [b["video"] for b in loader]

    inline = epoch(0, 1)
    assert all(torch.equal(a, b) for a, b in zip(inline, epoch(2, 1), strict=True))
    assert not any(torch.equal(a, b) for a, b in zip(inline, epoch(0, 2), strict=True))
    sampler = build_train_loader(tiny_cfg(video_dir), 0, 1).sampler
    sampler.set_epoch(1)
    pairs = list(sampler)
    assert len({seed for _, seed in pairs}) == len(pairs) and list(sampler) == pairs
    import itertools

    assert list(itertools.islice(iter(sampler), 2, None)) == pairs[2:]  # a resume skips, the rest keep their seeds


def test_train_clips_hold_the_sampled_frames(tmp_path):
    from tests.data.conftest import make_video

    path = make_video(str(tmp_path / "v.mp4"), 24)
    lst = str(tmp_path / "l.txt")
    write_lines(lst, [f"{path} 1"] * 2)
    # full-frame crop, no flip: the decoded band code tells which frames were read
    cfg = tiny_cfg(
        lst,
        rrc_scale="[1.0,1.0]",
        rrc_ratio="[1.3333334,1.3333334]",
        flip=False,
        input_size=48,
        test_short_side=48,
        num_frames=4,
        frame_stride=5,
    )
    for b in build_train_loader(cfg, 0, 1):
        for clip in b["video"]:
            idx = [decoded_frame_index(f.permute(1, 2, 0).numpy(), 24) for f in clip]
            assert np.diff(idx).tolist() == [5, 5, 5] and 0 <= idx[0] <= 4, idx


def test_eval_loader_views_labels_and_padding(video_dir):
    cfg = tiny_cfg(video_dir, test_num_crops=3)
    loader = build_eval_loader(cfg, "val", rank=0, world_size=1)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 6
    b = batches[0]
    assert b["video"].shape == (2, 6, 4, 3, 32, 32) and b["errors"] == []
    # under 4 ranks, 6 videos pad to 8: indices cover all, duplicates are droppable by index
    seen = []
    for rank in range(4):
        for bb in build_eval_loader(cfg, "val", rank, 4):
            seen += bb["index"].tolist()
    assert len(seen) == 8 and sorted(set(seen)) == list(range(6)) and len(loader.dataset) == 6


def test_eval_views_are_clip_major(tmp_path):
    from tests.data.conftest import make_video

    path = make_video(str(tmp_path / "v.mp4"), 24)
    lst = str(tmp_path / "l.txt")
    write_lines(lst, [f"{path} 0"])
    cfg = tiny_cfg(
        lst, test_num_crops=3, test_num_clips=2, input_size=48, test_short_side=48, num_frames=2, frame_stride=4
    )
    video = next(iter(build_eval_loader(cfg, "val")))["video"][0]  # [V=6, T, C, 48, 48]
    # view = clip * 3 + crop. 24 frames, span 8: 17 starts in 2 shares -> starts 4 and 12; the frame code
    # band is in the left crop (crop 0) only
    assert decoded_frame_index(video[0, 0].permute(1, 2, 0).numpy(), 24) == 4
    assert decoded_frame_index(video[3, 0].permute(1, 2, 0).numpy(), 24) == 12
    assert decoded_frame_index(video[3, 1].permute(1, 2, 0).numpy(), 24) == 16
    assert not torch.equal(video[0], video[1]) and not torch.equal(video[1], video[4])


def test_labels_beyond_num_classes_fail_clearly(video_dir, tmp_path):
    lst = tmp_path / "bad.txt"
    lst.write_text(f"{video_dir}/archery/v0.mp4 7\n")
    with pytest.raises(AnnotationError, match="label >= data.num_classes=2"):
        build_train_loader(tiny_cfg(str(lst)), 0, 1)


@pytest.mark.parametrize("backend", installed_backends())
@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_corpus_training_epoch_counts_every_failure(tmp_path, workers, backend):
    corpus = make_corrupt_corpus(str(tmp_path / "corpus"))
    bad = {k: v for k, v in corpus.items() if not k.startswith("good")}
    lst = str(tmp_path / "train.txt")
    write_lines(lst, [f"{p} {k % 2}" for k, p in enumerate(corpus.values())])
    cfg = tiny_cfg(
        lst,
        missing_files="drop",
        batch_size=1,
        num_workers=workers,
        max_retries=20,
        persistent_workers=False,
        num_frames=2,
        frame_stride=1,
        sampling="uniform",  # the second frame lies past what the overclaiming file really holds
        backend=backend,
        fallback_backend="''",  # the backend under test reads every file: no PyAV to fall back on
    )
    loader = build_train_loader(cfg, 0, 1)
    # the missing file is dropped and reported up front; put it back to check the read-time path too
    assert all(r.path != corpus["missing"] for r in loader.dataset.records)
    loader.dataset.records = RecordTable([*loader.dataset.records, VideoRecord(corpus["missing"], 0, (0,))])
    from torch.utils.data import DistributedSampler

    loader = torch.utils.data.DataLoader(
        loader.dataset,
        batch_size=1,
        num_workers=workers,
        collate_fn=loader.collate_fn,
        sampler=DistributedSampler(loader.dataset, 1, 0, shuffle=False),
    )
    log = FailureLog()
    n_items = 0
    for batch in loader:
        log.update(batch["failures"])
        n_items += 1
        assert batch["video"].shape == (1, 2, 3, 32, 32)
    assert n_items == len(corpus)
    failed_paths = {f.split(": ", 1)[0] for f in log.reasons}
    expected_bad = {p for k, p in bad.items() if k not in ("one_frame", "overclaiming")}
    assert expected_bad <= failed_paths, expected_bad - failed_paths
    # the overclaiming file either fails or is re-sampled inside the frames that really decode (and that count is
    # recorded by decode in the process that read it)
    # decord and PyAV take the count from the mp4 index (60), so the second uniform frame always lies past the real
    # end and the shortfall is discovered; torchcodec's exact scan claims 26 (25 decode), so a sample reaches the
    # missing frame only now and then
    overclaiming, counts = corpus["overclaiming"], decode.discovered_frame_counts()
    if workers == 0 and overclaiming not in failed_paths and (backend != "torchcodec" or overclaiming in counts):
        claimed, real = counts[overclaiming]
        assert 0 < real < claimed <= 60 and (backend == "torchcodec" or claimed == 60)
    assert corpus["good_a"] not in failed_paths and corpus["good_b"] not in failed_paths
    # each bad video failed at least once and every failure string names a reason
    assert all(": " in f and f.split(": ", 1)[1] for f in log.reasons)
    assert log.summary()["failed_loads"] >= len(expected_bad)


@pytest.mark.parametrize("workers", [0, 2])
def test_videos_read_through_the_fallback_are_reported_not_failed(video_dir, tmp_path, workers):
    """An AV1 video (decord cannot decode it) is trained on through PyAV, and every batch that holds it says so,
    so an epoch can report how much of the data set takes the slow road."""
    av1 = str(tmp_path / "av1.mkv")
    encode.write_video(av1, frame_code_video(24, 48, 64), fps=25, codec="libsvtav1")
    lst = str(tmp_path / "train.txt")
    write_lines(lst, [f"{video_dir}/archery/v0.mp4 0", f"{av1} 1", f"{video_dir}/bowling/v1.mp4 1"])
    loader = build_train_loader(tiny_cfg(lst, batch_size=1, num_workers=workers, persistent_workers=False), 0, 1)
    set_epoch(loader, 0)
    batches = list(loader)
    assert sorted(int(b["index"]) for b in batches) == [0, 1, 2] and all(b["failures"] == [] for b in batches)
    reports = [f for b in batches for f in b["fallbacks"]]
    assert len(reports) == 1 and reports[0].startswith(f"{av1}: read with pyav: decord cannot decode its av1 video")
    assert [b["fallbacks"] != [] for b in batches] == [int(b["index"]) == 1 for b in batches]
    views = [b for b in build_eval_loader(tiny_cfg(lst, num_workers=workers), "val", 0, 1)]  # evaluation: listed too
    assert [(int(i), p) for b in views for i, p, _ in b["fallbacks"]] == [(1, av1)]


@pytest.mark.parametrize("backend", installed_backends())
def test_corrupt_corpus_eval_lists_each_unreadable_video(tmp_path, backend):
    corpus = make_corrupt_corpus(str(tmp_path / "corpus"))
    lst = str(tmp_path / "val.txt")
    write_lines(lst, [f"{p} 0" for k, p in corpus.items() if k != "missing"])
    cfg = tiny_cfg(lst, num_frames=2, frame_stride=1, sampling="uniform", backend=backend, fallback_backend="''")
    loader = build_eval_loader(cfg, "val")
    errors, good = [], []
    for b in loader:
        errors += b["errors"]
        good += b["index"].tolist()
        assert b["video"].shape[0] == len(b["index"]) == len(b["label"])
    names = {os.path.basename(p)[:-4] for _, p, _ in errors}
    assert names - {"overclaiming"} == {"empty", "truncated", "text", "audio_only"}
    assert all(reason for _, _, reason in errors)
    assert len(good) + len(errors) == len(loader.dataset)
    good_names = {os.path.basename(loader.dataset.records[i].path)[:-4] for i in good}
    assert good_names - {"overclaiming"} == {"good_a", "good_b", "one_frame"}


def test_all_failing_data_set_raises_with_reasons(tmp_path):
    corpus = make_corrupt_corpus(str(tmp_path / "corpus"))
    lst = str(tmp_path / "t.txt")
    write_lines(lst, [f"{corpus['text']} 0", f"{corpus['empty']} 1"])
    cfg = tiny_cfg(lst, batch_size=1, max_retries=3)
    with pytest.raises(RuntimeError, match=r"(?s)4 videos in a row failed.*text.mp4"):
        next(iter(build_train_loader(cfg, 0, 1)))


def test_a_read_that_hangs_is_cut_off_and_the_training_epoch_finishes_naming_it(video_dir, tmp_path):
    """The per-read watchdog inside the real training loader (worker processes, retries, failure log): a video
    whose read never returns costs data.read_timeout_s, is counted and named, and the epoch goes on without it."""
    hang = str(tmp_path / "hang.mp4")
    os.link(os.path.join(video_dir, "archery", "v0.mp4"), hang)
    good = [os.path.join(video_dir, cls, f"v{k}.mp4") for cls in ("archery", "bowling") for k in range(3)]
    lst = str(tmp_path / "train.txt")
    write_lines(lst, [f"{p} {k % 2}" for k, p in enumerate([*good[:3], hang, *good[3:]])])
    cfg = tiny_cfg(lst, batch_size=1, num_workers=1, persistent_workers=False, backend="hang_on_name",
                   fallback_backend="''", read_timeout_s=1.0, max_retries=3)  # fmt: skip
    decode.register_backend("hang_on_name", HangOnNameReader)  # forked workers inherit the registration
    try:
        loader = build_train_loader(cfg, 0, 1)
        set_epoch(loader, 0)
        log, indices = FailureLog(), []
        for batch in loader:
            log.update(batch["failures"])
            indices += batch["index"].tolist()
            assert batch["video"].shape == (1, 4, 3, 32, 32)
    finally:
        decode._READERS.pop("hang_on_name", None)
    assert len(indices) == 7  # every item of the epoch arrived: the hung one replaced by another video
    assert hang not in {loader.dataset.records[i].path for i in indices}
    assert list(log.reasons) == [f"{hang}: read took longer than 1 s (decoder killed)"]


def test_a_read_that_hangs_is_reported_unreadable_in_evaluation(video_dir, tmp_path):
    hang = str(tmp_path / "hang.mp4")
    os.link(os.path.join(video_dir, "bowling", "v1.mp4"), hang)
    lst = str(tmp_path / "val.txt")
    write_lines(lst, [f"{os.path.join(video_dir, 'archery', 'v0.mp4')} 0", f"{hang} 1"])
    cfg = tiny_cfg(lst, num_workers=1, backend="hang_on_name", fallback_backend="''", read_timeout_s=1.0)
    decode.register_backend("hang_on_name", HangOnNameReader)
    try:
        batches = list(build_eval_loader(cfg, "val"))
    finally:
        decode._READERS.pop("hang_on_name", None)
    errors = [e for b in batches for e in b["errors"]]
    assert [int(i) for b in batches for i in b["index"]] == [0]  # never substituted
    assert [(int(i), p) for i, p, _ in errors] == [(1, hang)] and "read took longer than 1 s" in errors[0][2]


def test_a_verify_report_stops_training_on_videos_that_return_wrong_frames(tmp_path, caplog):
    """data.verify_report gives true frame counts, and names the videos whose random access returns other frames
    with this backend: by default training and evaluation refuse them, `drop` leaves them out, `keep` warns."""
    from aim_video.data import verify

    clean = make_h264(str(tmp_path / "clean.mp4"), n=60, gop=50)
    broken = false_keyframes(clean, str(tmp_path / "broken.mp4"), at=(20,))  # decord reads from frame 20 are wrong
    lst = str(tmp_path / "train.txt")
    write_lines(lst, [f"{clean} 0", f"{broken} 1"])
    checks = verify.verify_videos([clean, broken], "decord", progress=False)
    assert [c.status for c in checks] == ["exact", "corrupt_after_seek"]
    report = str(tmp_path / "verify.json")
    verify.write_report(checks, report, "decord", "exact")

    cfg = tiny_cfg(lst, batch_size=1, verify_report=report)
    for build in (lambda c: build_train_loader(c, 0, 1), lambda c: build_eval_loader(c, "val", 0, 1)):
        with pytest.raises(
            AnnotationError, match=r"1 of 2 videos return wrong frames .*broken.mp4 \(corrupt_after_seek"
        ):
            build(cfg)
    with pytest.raises(AnnotationError, match="prepare_kinetics.py repair --report"):
        build_train_loader(cfg, 0, 1)
    dropped = build_train_loader(tiny_cfg(lst, batch_size=1, verify_report=report, inexact_videos="drop"), 0, 1)
    assert [r.path for r in dropped.dataset.records] == [clean]
    assert dropped.dataset.records.frame_count(0) == 60
    left_out = build_eval_loader(tiny_cfg(lst, verify_report=report, inexact_videos="drop"), "val", 0, 1).dataset
    assert [r.path for r in left_out.records] == [clean] and [p for p, _ in left_out.dropped] == [broken]
    assert "returns wrong frames with decord (corrupt_after_seek" in left_out.dropped[0][1]  # for the results to list
    kept = build_eval_loader(tiny_cfg(lst, verify_report=report, inexact_videos="keep"), "val", 0, 1)
    assert [r.path for r in kept.dataset.records] == [clean, broken] and "kept" in caplog.text
    # a report made with another backend says nothing about decord's reads: its counts are used, with a warning
    verify.write_report(checks, report, "pyav", "exact")
    caplog.clear()
    other = build_train_loader(cfg, 0, 1)
    assert len(other.dataset.records) == 2 and "made for pyav, not data.backend=decord" in caplog.text
    with pytest.raises(ValueError, match="'data.inexact_videos': 'skip' is not one of 'fail', 'drop', 'keep'"):
        build_train_loader(tiny_cfg(lst, batch_size=1, verify_report=report, inexact_videos="skip"), 0, 1)


def test_a_val_csv_takes_its_label_indices_from_the_train_classes(tmp_path):
    """A labelled val CSV numbered its own sorted labels when the train source was no CSV: with a class absent from
    val, every index shifted, silently. Class folders (named the download scripts' way) now give the classes; a
    train list file (integer labels only) needs data.class_map."""
    from aim_video.data.loader import load_split

    train = tmp_path / "train"
    for folder in ("abseiling", "massaging_persons_head", "zumba"):
        make_h264(str(train / folder / "t.mp4"), n=4)
    make_h264(str(tmp_path / "val" / "massaging_persons_head" / "v_000001_000011.mp4"), n=4)
    make_h264(str(tmp_path / "val" / "zumba" / "w_000002_000012.mp4"), n=4)
    csv = tmp_path / "val.csv"
    header = "label,youtube_id,time_start,time_end,split\n"
    csv.write_text(header + '"massaging person\'s head",v,1,11,val\nzumba,w,2,12,val\n')
    cfg = tiny_cfg(str(train), str(csv), root=str(tmp_path / "val"), num_classes=3)
    assert [r.label for r in load_split(cfg, "val").records] == [1, 2]  # not [0, 1]
    write_lines(str(tmp_path / "train.txt"), ["../train/zumba/t.mp4 2"])
    cfg = tiny_cfg(str(tmp_path / "train.txt"), str(csv), root=str(tmp_path / "val"), num_classes=3)
    with pytest.raises(AnnotationError, match="val.csv would number the classes by its own sorted labels.*class_map"):
        load_split(cfg, "val")
    write_lines(str(tmp_path / "classes.txt"), ["abseiling", "massaging_persons_head", "zumba"])
    cfg.data.class_map = str(tmp_path / "classes.txt")
    assert [r.label for r in load_split(cfg, "val").records] == [1, 2]


def test_a_test_folder_of_unlabelled_videos_needs_no_class_map(tmp_path):
    """A folder of videos without class folders numbers no classes: a test split of them is read unlabelled with a
    train list file and no data.class_map (it was refused as a tree that would number its own classes)."""
    from aim_video.data.loader import load_split

    make_h264(str(tmp_path / "new" / "clip.mp4"), n=4)
    make_h264(str(tmp_path / "train" / "t.mp4"), n=4)
    write_lines(str(tmp_path / "train.txt"), ["train/t.mp4 1"])
    cfg = tiny_cfg(str(tmp_path / "train.txt"), root=str(tmp_path), num_classes=3, test_list=str(tmp_path / "new"))
    assert [(os.path.basename(r.path), r.label) for r in load_split(cfg, "test").records] == [("clip.mp4", -1)]


def test_workers_survive_the_stop_signals_a_scheduler_sends_to_every_process(video_dir):
    """`scancel --signal=TERM` / preemption signals the whole job: the DataLoader worker got SIGTERM too, torch's
    worker handler killed it and the main process failed ("DataLoader worker ... is killed by signal: Terminated")
    before it could save. Workers now ignore train.stop_signals; the main process's handler records the stop."""
    import signal
    import subprocess
    import sys

    from aim_video.engine import distributed

    cfg = tiny_cfg(video_dir, batch_size=1, num_workers=1, persistent_workers=False)
    previous = distributed.catch_stop_signals(cfg.train.stop_signals)
    try:
        loader = build_train_loader(cfg, 0, 1)
        set_epoch(loader, 0)
        it = iter(loader)
        seen = [int(next(it)["index"])]
        workers = [w.pid for w in it._workers]
        assert len(workers) == 1
        # from another process, as a scheduler does (torch's worker handler lets its parent's SIGTERM through)
        targets = [*workers, os.getpid()]
        for name in ("SIGUSR1", "SIGTERM"):
            kill = f"import os, signal; [os.kill(p, signal.{name}) for p in {targets}]"
            subprocess.run([sys.executable, "-c", kill], check=True)
        seen += [int(b["index"]) for b in it]  # raised RuntimeError: DataLoader worker ... killed by signal
        assert sorted(seen) == list(range(6))
        assert distributed.stop_requested(torch.device("cpu")) == signal.SIGUSR1  # the first one the parent got
    finally:
        distributed.restore_signals(previous)


def test_an_unknown_backend_stops_the_loader_build_naming_the_choices(video_dir):
    """data.backend=foo used to surface only after max_retries as 'the data set is mostly unreadable' in training,
    and evaluation reported 0 of 7 videos with exit status 0. (Checked here, not at config load:
    `decode.register_backend` may add names.)"""
    from aim_video.config import ConfigError

    with pytest.raises(ConfigError, match=r"'data.backend': 'decrod' is not a decoding backend.*Did you mean 'decord'"):
        build_train_loader(tiny_cfg(video_dir, backend="decrod"), 0, 1)
    with pytest.raises(ConfigError, match="'data.fallback_backend': 'av' is not a decoding backend"):
        build_eval_loader(tiny_cfg(video_dir, fallback_backend="av"), "val", 0, 1)


_ENDS_WITH_LIVE_WORKERS = """
import sys
from tests.data.test_loader import tiny_cfg
from aim_video.data.loader import build_train_loader
loader = build_train_loader(tiny_cfg(sys.argv[1], num_workers=2, persistent_workers=True), 0, 1)
it = iter(loader)
next(it)
raise RuntimeError("a script that fails with live workers")
"""


def test_a_process_that_ends_with_live_workers_exits(video_dir):
    """The workers ignore the stop signals (SIGTERM too), and multiprocessing's exit stops them with SIGTERM and
    waits: a compare.py stopped by a preemption signal, or any script that raised, never exited."""
    import subprocess
    import sys

    from tests.tools.conftest import PYTHONPATH

    env = {**os.environ, "PYTHONPATH": PYTHONPATH}
    proc = subprocess.run([sys.executable, "-c", _ENDS_WITH_LIVE_WORKERS, video_dir], env=env, capture_output=True,
                          text=True, timeout=90)  # fmt: skip
    assert proc.returncode == 1 and "a script that fails with live workers" in proc.stderr


def test_cuda_decoding_needs_torchcodec_and_no_forked_children(video_dir):
    """data.decode_device=cuda was accepted with decord (which decoded on the CPU without a word) and with the
    default read watchdog (every training item then failed as 'the data set is mostly unreadable')."""
    from aim_video.config import ConfigError

    with pytest.raises(ConfigError, match="read by torchcodec only; data.backend=decord decodes on the CPU"):
        build_train_loader(tiny_cfg(video_dir, decode_device="cuda"), 0, 1)
    on_gpu = {"backend": "torchcodec", "decode_device": "cuda:1"}
    with pytest.raises(ConfigError, match=r"data.read_timeout_s=60.0 and data.num_workers=0; set both to 0"):
        build_eval_loader(tiny_cfg(video_dir, **on_gpu), "val", 0, 1)
    with pytest.raises(ConfigError, match=r"data.read_timeout_s=0.0 and data.num_workers=2; set both to 0"):
        build_train_loader(tiny_cfg(video_dir, read_timeout_s=0, num_workers=2, **on_gpu), 0, 1)


def test_a_train_list_using_far_fewer_classes_than_the_head_is_named(video_dir, caplog):
    """A 3-class set trained under a recipe's data.num_classes=400 ran a 400-way head without a word."""
    from aim_video.data.loader import load_split

    with caplog.at_level("WARNING"):
        load_split(tiny_cfg(video_dir, num_classes=400), "train")
    assert "uses 2 of data.num_classes=400 classes" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_split(tiny_cfg(video_dir), "train")
    assert "data.num_classes" not in caplog.text


def test_one_verify_report_per_split_can_be_given_together(tmp_path):
    """`verify` writes one report per list; data.verify_report took one file, so a val list went unchecked."""
    from aim_video.data import verify

    clean = make_h264(str(tmp_path / "clean.mp4"), n=60, gop=50)
    broken = false_keyframes(clean, str(tmp_path / "broken.mp4"), at=(20,))
    train, val = str(tmp_path / "train.txt"), str(tmp_path / "val.txt")
    write_lines(train, [f"{clean} 0"])
    write_lines(val, [f"{broken} 1"])
    reports = []
    for name, path in (("train", clean), ("val", broken)):
        reports.append(str(tmp_path / f"{name}_verify.json"))
        verify.write_report(verify.verify_videos([path], "decord", progress=False), reports[-1], "decord", "exact")
    cfg = tiny_cfg(train, val, batch_size=1, verify_report=",".join(reports))
    assert build_train_loader(cfg, 0, 1).dataset.records.frame_count(0) == 60
    with pytest.raises(AnnotationError, match=rf"broken.mp4 \(corrupt_after_seek.*repair --report {reports[1]}`"):
        build_eval_loader(cfg, "val", 0, 1)


def test_the_epoch_order_and_seeds_do_not_depend_on_the_number_of_ranks():
    """SeededSampler: the ranks together read the epoch's order front to back, whatever their number, with the same
    (index, seed) pairs; `starting_at` a resume position deals out the rest of that order, also to other ranks."""
    from aim_video.data.loader import SeededSampler

    def dealt(world: int, start: int = 0) -> list[tuple[int, int]]:
        ranks = [SeededSampler(13, 7, r, world).starting_at(start) for r in range(world)]
        for sampler in ranks:
            sampler.set_epoch(3)
        per_rank = [list(s) for s in ranks]
        assert len({len(p) for p in per_rank}) == 1  # every rank the same count: no rank waits for another
        return [pair for column in zip(*per_rank, strict=True) for pair in column]  # position order: r, r + w, ...

    one = dealt(1)
    assert sorted(i for i, _ in one) == list(range(13)) and len({s for _, s in one}) == 13
    assert dealt(2) == one[:12] and dealt(3) == one[:12]  # cut to a multiple of the ranks
    assert dealt(1, start=4) == one[4:] and dealt(2, start=4) == one[4:12]  # 4 used by 2 ranks, the rest on 1 or 2
    moved = SeededSampler(13, 7, 0, 1)
    moved.set_epoch(4)
    assert [i for i, _ in moved] != [i for i, _ in one]
    with pytest.raises(ValueError, match="multiple of the 2 ranks"):
        SeededSampler(13, 7, 0, 2).starting_at(3)


def test_a_verify_report_that_is_stale_or_matches_nothing_says_so(tmp_path, caplog, monkeypatch):
    """A report whose file changed after the check (replaced by a repaired copy, say) used its old verdict and count;
    a report of relative paths made in another folder matched no video and was silently a no-op."""
    from aim_video.data import verify

    clean = make_h264(str(tmp_path / "clean.mp4"), n=60, gop=50)
    broken = false_keyframes(clean, str(tmp_path / "broken.mp4"), at=(20,))
    lst = str(tmp_path / "train.txt")
    write_lines(lst, [f"{clean} 0", f"{broken} 1"])
    report = str(tmp_path / "verify.json")
    verify.write_report(verify.verify_videos([clean, broken], "decord", progress=False), report, "decord", "exact")
    cfg = tiny_cfg(lst, batch_size=1, verify_report=report)
    with pytest.raises(AnnotationError, match="1 of 2 videos return wrong frames"):
        build_train_loader(cfg, 0, 1)
    make_h264(broken, n=60, gop=50, seed=2)  # repaired in place after the report
    caplog.clear()
    loader = build_train_loader(cfg, 0, 1)
    assert len(loader.dataset.records) == 2
    assert "1 videos changed after" in caplog.text and "broken.mp4" in caplog.text

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    rows = json.load(open(report))
    for row in rows["videos"]:
        row["path"] = os.path.relpath(row["path"], tmp_path)  # made with relative paths in tmp_path
    json.dump(rows, open(report, "w"))
    caplog.clear()
    build_train_loader(cfg, 0, 1)
    assert "2 of 2 videos are in no verify report" in caplog.text and "paths such as clean.mp4" in caplog.text


def test_multi_label_lines_are_refused_for_training_and_evaluation(tmp_path):
    """Only a line's first label reached the loss and the metrics: predicting its second label scored as wrong."""
    video = make_h264(str(tmp_path / "v.mp4"), n=30, gop=10)
    lst = str(tmp_path / "train.txt")
    write_lines(lst, [f"{video} 1", f"{video} 0 1"])
    for build in (lambda c: build_train_loader(c, 0, 1), lambda c: build_eval_loader(c, "val", 0, 1)):
        with pytest.raises(AnnotationError, match=r"1 lines carry several labels, e.g. .*v.mp4 \(labels \[0, 1\]\)"):
            build(tiny_cfg(lst, batch_size=1))


def test_evaluation_counts_a_repeated_line_once_and_refuses_one_video_under_two_labels(tmp_path, caplog):
    """A val list with a line twice scored that video twice; training keeps repeats (they weigh a video more)."""
    a, b = (make_h264(str(tmp_path / f"{n}.mp4"), n=30, gop=10) for n in "ab")
    lst = str(tmp_path / "list.txt")
    write_lines(lst, [f"{a} 1", f"{b} 0", f"{a} 1"])
    assert [r.path for r in build_eval_loader(tiny_cfg(lst, batch_size=1), "val", 0, 1).dataset.records] == [a, b]
    assert "1 lines repeat a video listed before, e.g. " + a in caplog.text
    assert len(build_train_loader(tiny_cfg(lst, batch_size=1), 0, 1).dataset) == 3
    write_lines(lst, ["a.mp4 1", "b.mp4 0", "./sub/../a.mp4 1"])  # one video spelled two ways is one video too
    cfg = tiny_cfg(lst, batch_size=1, root=str(tmp_path))
    assert [r.path for r in build_eval_loader(cfg, "val", 0, 1).dataset.records] == [a, b]
    write_lines(lst, [f"{a} 1", f"{a} 0"])
    with pytest.raises(AnnotationError, match=r"a.mp4 is listed with labels 1 and 0"):
        build_eval_loader(tiny_cfg(lst, batch_size=1), "val", 0, 1)
    gone = str(tmp_path / "gone.mp4")  # left out (missing_files=drop) and counted missing once, as a present one
    write_lines(lst, [f"{a} 1", f"{gone} 0", f"{a} 1", f"{gone} 0"])
    dataset = build_eval_loader(tiny_cfg(lst, batch_size=1, missing_files="drop"), "val", 0, 1).dataset
    assert [r.path for r in dataset.records] == [a] and [p for p, _ in dataset.dropped] == [gone]


def test_a_video_the_report_found_undecodable_by_any_backend_is_left_out_once(tmp_path):
    """Each epoch tried the broken download, failed, replaced it and counted it again; evaluation listed it as
    missing only after trying. With the report it is left out up front, named with the report's reason."""
    from aim_video.data import verify

    clean = make_h264(str(tmp_path / "clean.mp4"), n=30, gop=10)
    broken = tmp_path / "broken.mp4"
    broken.write_text("<html>429 Too Many Requests</html>")  # what a failed download often is
    lst = str(tmp_path / "train.txt")
    write_lines(lst, [f"{clean} 0", f"{broken} 1"])
    checks = verify.verify_videos([clean, str(broken)], "decord", progress=False)
    assert [(c.status, c.plays) for c in checks] == [("exact", None), ("unreadable", False)]
    report = str(tmp_path / "verify.json")
    verify.write_report(checks, report, "decord", "exact")
    train = build_train_loader(tiny_cfg(lst, batch_size=1, verify_report=report), 0, 1)
    assert [r.path for r in train.dataset.records] == [clean]
    val = build_eval_loader(tiny_cfg(lst, verify_report=report), "val", 0, 1).dataset
    assert [r.path for r in val.records] == [clean] and [p for p, _ in val.dropped] == [str(broken)]
    assert "PyAV decodes nothing of it (verify report): download it again" in val.dropped[0][1]


def _touch(path) -> str:
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    open(path, "wb").close()
    return str(path)


def test_a_train_video_without_a_label_is_refused_up_front(tmp_path, caplog):
    """An unlabelled train line (no label, -1, or a Kinetics test CSV given as data.train_list) was accepted, and the
    run failed at whichever batch held it (cross_entropy IndexError, a CUDA device assert), maybe hours in.
    Evaluation lists may be unlabelled: inference predicts them without scoring."""
    from aim_video.data.loader import load_split

    for name in ("a", "b", "c"):
        _touch(tmp_path / f"{name}.mp4")
    write_lines(str(tmp_path / "train.txt"), ["a.mp4 0", "b.mp4", "c.mp4 -1"])
    cfg = tiny_cfg(str(tmp_path / "train.txt"), root=str(tmp_path))
    with pytest.raises(AnnotationError, match=r"train.txt: 2 of 3 videos have no label, e.g. .*b.mp4, .*c.mp4"):
        load_split(cfg, "train")
    clip = _touch(tmp_path / "q_000001_000011.mp4")
    (tmp_path / "test.csv").write_text("label,youtube_id,time_start,time_end,split\n,q,1,11,test\n")
    cfg = tiny_cfg(str(tmp_path / "test.csv"), root=str(tmp_path))
    with pytest.raises(AnnotationError, match=r"test.csv: 1 of 1 videos have no label.*a test split's list"):
        load_split(cfg, "train")
    # evaluation: an unlabelled test list is inference; a partly labelled one is warned about
    write_lines(str(tmp_path / "labelled.txt"), ["a.mp4 0"])
    cfg = tiny_cfg(str(tmp_path / "labelled.txt"), str(tmp_path / "train.txt"), root=str(tmp_path))
    cfg.data.test_list = str(tmp_path / "test.csv")
    assert [(r.path, r.label) for r in load_split(cfg, "test").records] == [(clip, -1)]
    with caplog.at_level("WARNING"):
        assert [r.label for r in load_split(cfg, "val").records] == [0, -1, -1]
    assert "2 of 3 videos have no label, e.g." in caplog.text and "predicted, not scored" in caplog.text


def test_eval_sources_that_number_their_own_classes_need_the_train_classes(tmp_path):
    """A list-file train split gives no class names: a val class-folder tree (or a labelled CSV without a split
    column) numbered its own sorted folders, and a class absent from val shifted every later index, silently."""
    from aim_video.data.loader import load_split

    for name in ("archery", "bowling", "cooking"):
        _touch(tmp_path / "train" / name / "t.mp4")
    for name in ("archery", "cooking"):  # no bowling: cooking would be 1, not 2
        _touch(tmp_path / "val" / name / "v.mp4")
    write_lines(str(tmp_path / "train.txt"), ["train/archery/t.mp4 0", "train/bowling/t.mp4 1"])
    cfg = tiny_cfg(str(tmp_path / "train.txt"), str(tmp_path / "val"), root=str(tmp_path), num_classes=3)
    with pytest.raises(AnnotationError, match=r"val would number the classes by its sorted class folders.*class_map"):
        load_split(cfg, "val")
    _touch(tmp_path / "q_000001_000011.mp4")
    (tmp_path / "val.csv").write_text("label,youtube_id,time_start,time_end\ncooking,q,1,11\n")  # no split column
    cfg.data.val_list = str(tmp_path / "val.csv")
    with pytest.raises(AnnotationError, match=r"val.csv would number the classes by its own sorted labels"):
        load_split(cfg, "val")
    cfg.data.train_list = ""
    with pytest.raises(AnnotationError, match=r"data.train_list='' is not set"):
        load_split(cfg, "val")
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end\nq,1,11\n")  # unlabelled: inference
    cfg.data.test_list = str(tmp_path / "test.csv")
    assert [r.label for r in load_split(cfg, "test").records] == [-1]
    write_lines(str(tmp_path / "classes.txt"), ["archery", "bowling", "cooking"])
    cfg.data.class_map = str(tmp_path / "classes.txt")
    assert [r.label for r in load_split(cfg, "val").records] == [2]
    cfg.data.val_list = str(tmp_path / "val")
    assert [r.label for r in load_split(cfg, "val").records] == [0, 2]
    cfg.data.class_map, cfg.data.train_list = "", str(tmp_path / "train")  # a train tree names its classes
    assert [r.label for r in load_split(cfg, "val").records] == [0, 2]


def test_memory_is_pinned_only_for_the_accelerator_training_uses(video_dir, monkeypatch):
    """A GPU node running on the CPU (DS_ACCELERATOR=cpu) pinned every batch, its pin thread making a CUDA context
    on GPU 0 in every rank: pinning followed torch.cuda.is_available, not the device training chose."""
    from aim_video.data.loader import _loader_kwargs

    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _loader_kwargs(tiny_cfg(video_dir, pin_memory=True))["pin_memory"] is False
