import numpy as np
import psutil
import pytest
import torch
from einops import rearrange

from aim_video.data import decode, encode
from aim_video.data.annotations import VideoRecord
from aim_video.data.dataset import MultiViewDataset, TrainClipDataset
from aim_video.data.transforms import build_eval_transform, build_train_transform
from tests.data.conftest import decoded_frame_index, frame_code_video, installed_backends


def identity(frames_thwc: torch.Tensor) -> torch.Tensor:
    return rearrange(frames_thwc, "t h w c -> t c h w")


class RecordingDataset(TrainClipDataset):
    """Keeps the indices each clip was sampled with, to compare against a sequential decode."""

    def sample_indices(self, num_frames: int) -> list[int]:
        self.last = super().sample_indices(num_frames)
        return self.last


FORMATS = {"h264.mp4": "libx264", "mpeg4.avi": "mpeg4", "vp9.webm": "libvpx-vp9"}


@pytest.fixture(scope="module")
def format_videos(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("formats")
    out = {}
    for name, codec in FORMATS.items():
        path = str(folder / name)
        encode.write_video(path, frame_code_video(40, 48, 64), fps=25, codec=codec, gop=12)
        out[name] = path
    return out


@pytest.mark.parametrize("backend", installed_backends())
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("mode", ["dense", "uniform"])
def test_clips_equal_a_sequential_decode(format_videos, backend, fmt, mode):
    path = format_videos[fmt]
    reference = decode.read_frames(path, list(range(40)), backend="pyav").numpy()  # sequential, from frame 0
    ds = RecordingDataset([VideoRecord(path, 0, (0,))], identity, mode, 6, 5, backend=backend, fallback_backend="")
    torch.manual_seed(0)
    for _ in range(6):
        clip = ds.load(0)[0]  # [T, C, H, W]
        got = rearrange(clip, "t c h w -> t h w c").numpy().astype(np.float64)
        diff = np.abs(got - reference[ds.last]).mean()
        assert diff < 1.0, (backend, fmt, ds.last, diff)


@pytest.mark.parametrize("backend", installed_backends())
def test_eval_views_equal_a_sequential_decode(format_videos, backend):
    path = format_videos["h264.mp4"]
    reference = torch.from_numpy(decode.read_frames(path, list(range(40)), backend="pyav").numpy())
    tf = build_eval_transform(short_side=48, crop_size=48, num_crops=1)
    ds = MultiViewDataset([VideoRecord(path, 0, (0,))], tf, "dense", 4, 3, num_clips=2, backend=backend)
    item = ds[0]
    assert item["error"] is None and item["video"].shape == (2, 4, 3, 48, 48)
    for k, start in enumerate((7, 21)):  # 40 frames, span 12: 29 starts in 2 shares of 14.5 -> 7 and 21
        expected = tf(reference[start : start + 12 : 3])[0]
        assert (item["video"][k].float() - expected.float()).abs().mean() < 1.0


def tree_rss() -> int:
    me = psutil.Process()
    return me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))


@pytest.mark.slow
@pytest.mark.parametrize("timeout_s", [0.0, 60.0])
def test_rss_stays_flat_over_2000_clip_loads(tmp_path, timeout_s):
    paths = []
    for k in range(4):
        path = str(tmp_path / f"v{k}.mp4")
        encode.write_video(path, frame_code_video(30 + k, 48, 64), fps=25, gop=8)
        paths.append(path)
    records = [VideoRecord(p, 0, (0,)) for p in paths]
    ds = TrainClipDataset(records, build_train_transform(32), "dense", 4, 2, timeout_s=timeout_s, repeated_aug=1)
    for k in range(200):  # warm-up: allocator pools, codec tables, the watchdog's child
        ds[k % 4]
    before = tree_rss()
    for k in range(2000):
        item = ds[k % 4]
        assert item["failures"] == []
    grown = (tree_rss() - before) / 2**20
    assert grown < 50, f"RSS grew by {grown:.1f} MiB over 2000 clip loads"
    print(f"RSS growth over 2000 loads (timeout_s={timeout_s}): {grown:.1f} MiB")


def test_a_seeded_item_does_not_depend_on_what_the_worker_read_before(tmp_path, monkeypatch):
    """(index, seed) gives one clip and one replacement whatever this worker read before: a bad video known to it
    already, or not; a short file's real count found already, or found by this read (exact resume, results that
    do not change with data.num_workers)."""
    from tests.data.conftest import make_video, write_overclaiming

    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    good = [make_video(str(tmp_path / f"g{i}.mp4"), 24) for i in range(5)]
    short = write_overclaiming(str(tmp_path / "short.mp4"))  # claims 60 frames, fewer decode
    records = [VideoRecord(str(bad), 0, (0,)), VideoRecord(short, 1, (1,))]
    records += [VideoRecord(p, 2, (2,)) for p in good]

    def dataset() -> TrainClipDataset:
        return TrainClipDataset(records, identity, "dense", num_frames=4, frame_stride=4, backend="pyav")

    real = decode.count_decodable(short)
    monkeypatch.setattr(decode, "_DISCOVERED", {})  # this process's discovered counts, restored afterwards
    found: list[bool] = []
    for seed in range(12):
        decode._DISCOVERED.clear()  # a process that has not read the short file yet
        fresh = dataset()
        first = [fresh[(0, seed)], fresh[(1, seed)]]
        found.append(short in decode._DISCOVERED)  # this read sampled past the real end and found the file short
        decode._DISCOVERED[short] = (60, real)  # a process that knows the real count already
        used = dataset()
        used[(0, 10_000 + seed)]  # and the bad video
        for index in (0, 1):
            again = used[(index, seed)]
            assert again["index"] == first[index]["index"], (index, seed)
            assert torch.equal(again["video"], first[index]["video"]), (index, seed)
        assert first[0]["index"] != 0 and first[0]["failures"]  # replaced, and the failure travels back
    assert any(found) and not all(found)  # both ways: reads that found the file short, reads inside its real end


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_seeded_item_leaves_the_cuda_rng_alone(tmp_path):
    """torch.manual_seed reseeds CUDA too, which fork_rng(devices=[]) did not put back: with num_workers=0 every clip
    reset the model's dropout stream on the GPU to that clip's seed."""
    from tests.data.conftest import make_video

    dataset = TrainClipDataset([VideoRecord(make_video(str(tmp_path / "v.mp4"), 24), 0, (0,))], identity, "dense",
                               num_frames=4, frame_stride=4, backend="pyav")  # fmt: skip
    torch.cuda.manual_seed(7)
    before = torch.cuda.get_rng_state()
    dataset[(0, 123)]
    assert torch.equal(torch.cuda.get_rng_state(), before)


def test_a_passing_failure_does_not_drop_the_video_for_the_rest_of_the_run(tmp_path):
    """A one-off stall (a read timeout) or an error after decoding put the video on the worker's known-bad list, so
    with persistent workers it was replaced for the rest of training; only an undecodable file stays skipped."""
    from tests.data.conftest import make_video

    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    good = make_video(str(tmp_path / "good.mp4"), 24)
    records = [VideoRecord(good, 0, (0,)), VideoRecord(str(bad), 1, (1,))]
    stalls: list[Exception] = [decode.ReadTimeout(good, "read took longer than 60 s (decoder killed)")]

    def flaky(frames_thwc: torch.Tensor) -> torch.Tensor:
        if stalls:
            raise stalls.pop(0)
        return identity(frames_thwc)

    ds = TrainClipDataset(records, flaky, "dense", num_frames=4, frame_stride=4, backend="pyav", max_retries=20)
    first = ds[0]  # the timeout: retried elsewhere this time
    assert first["failures"] and "read took longer" in first["failures"][0]
    stalls.append(RuntimeError("augment"))
    second = ds[0]  # the transform error; again a replacement
    assert second["failures"] and "augment" in second["failures"][0]
    third = ds[0]  # nothing fails now: the video itself, not a replacement
    assert third["index"] == 0 and third["failures"] == []
    ds[1]  # the undecodable file: skipped from now on, without another read
    assert 1 in ds._known_bad and 0 not in ds._known_bad


def test_repeated_augmentation_clips_share_one_decode(tmp_path):
    """data.repeated_aug=N clips of an item are N augmentations of one decoded clip: a dataset that decoded once per
    repeat (a new clip start each time) still gave N clips of the right shape, and the loader's test did not tell.
    With the identity transform, every repeat must hold the very same frames."""
    from tests.data.conftest import make_video

    path = make_video(str(tmp_path / "v.mp4"), 24)
    ds = TrainClipDataset([VideoRecord(path, 0, (0,))], identity, "dense", num_frames=4, frame_stride=4,
                          backend="pyav", repeated_aug=3)  # fmt: skip
    starts = set()
    for item in [0] * 6 + [(0, seed) for seed in range(6)]:  # the worker's stream and seeded items
        video = ds[item]["video"]  # [N=3, T, C, H, W]
        assert video.shape == (3, 4, 3, 48, 64)
        idx = [[decoded_frame_index(f.permute(1, 2, 0).numpy(), 24) for f in clip] for clip in video]
        assert idx[0] == idx[1] == idx[2] and np.diff(idx[0]).tolist() == [4, 4, 4], (item, idx)
        assert torch.equal(video[0], video[1]) and torch.equal(video[0], video[2]), item
        starts.add(idx[0][0])
    assert len(starts) > 1  # the items themselves do draw different clips


def test_seeds_that_differ_in_their_high_32_bits_give_other_augmentations(tmp_path):
    """torch's CPU generator keeps a seed's low 32 bits: (index, s) and (index, s + 7 * 2**32) were augmented alike.
    (Folding the halves does not make chance collisions of 32-bit seeds rarer; it ends the ones that differ only
    above bit 32.)"""
    path = str(tmp_path / "v.mp4")
    encode.write_video(path, frame_code_video(4, 48, 64), fps=25, gop=8)  # 4 segments of 1 frame: the same frames
    ds = TrainClipDataset([VideoRecord(path, 0, (0,))], build_train_transform(32), "uniform", 4, 1, timeout_s=0)
    low = 12345
    a, b = ds[(0, low)]["video"], ds[(0, low | 7 << 32)]["video"]
    assert torch.equal(ds[(0, low)]["video"], a) and not torch.equal(a, b)  # the crop and flip differ


def test_a_replacement_carries_its_own_label_and_index(tmp_path):
    """A failed video is replaced by another: the clip must carry the replacement's label (a mutation to the failed
    video's label passed every test)."""
    from tests.data.conftest import make_video

    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    good = make_video(str(tmp_path / "good.mp4"), 24)
    records = [VideoRecord(str(bad), 0, (0,)), VideoRecord(good, 7, (7,))]
    ds = TrainClipDataset(records, identity, "dense", num_frames=4, frame_stride=4, backend="pyav", max_retries=20)
    item = ds[(0, 123)]
    assert (item["index"], item["label"]) == (1, 7)


def test_collate_gives_each_clip_of_a_repeated_sample_its_label():
    """data.repeated_aug: N clips per video, collated video by video; labels tiled [3, 7, 3, 7] passed the tests."""
    from aim_video.data.dataset import collate_train

    items = [{"video": torch.zeros(2, 1), "label": label, "index": k, "failures": []} for k, label in enumerate((3, 7))]
    batch = collate_train(items)
    assert batch["label"].tolist() == [3, 3, 7, 7] and batch["index"].tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("cls", [TrainClipDataset, MultiViewDataset])
def test_a_verify_reports_frame_count_bounds_the_read(tmp_path, monkeypatch, cls):
    """The report's count of frames that really decode must reach read_frames (passing None instead went
    unnoticed: reads past a short file's real end would reach the decoder again)."""
    import os

    from tests.data.conftest import make_video

    good = make_video(str(tmp_path / "good.mp4"), 24)
    seen = []
    real = decode.read_frames

    def spy(path, indices, **kw):
        seen.append(kw["num_frames"])
        return real(path, indices, **kw)

    monkeypatch.setattr(decode, "read_frames", spy)
    kw = dict(num_frames=4, frame_stride=4, backend="pyav", frame_counts={os.path.abspath(good): 20})
    if cls is MultiViewDataset:
        kw["num_clips"] = 1
    cls([VideoRecord(good, 0, (0,))], identity, "dense", **kw)[0]
    assert seen == [20]


def test_a_known_bad_video_is_not_decoded_again(tmp_path, monkeypatch):
    """A video that failed once is skipped from then on in this worker: each draw of it counts as a failure without
    another decode (a broken file read again at every draw, each read as slow as the first)."""
    from tests.data.conftest import make_video

    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    good = make_video(str(tmp_path / "good.mp4"), 24)
    records = [VideoRecord(str(bad), 0, (0,)), VideoRecord(good, 7, (7,))]
    ds = TrainClipDataset(records, identity, "dense", num_frames=4, frame_stride=4, backend="pyav", max_retries=20)
    opened: list[str] = []
    real = decode.read_frames

    def spy(path, indices, **kw):
        opened.append(path)
        return real(path, indices, **kw)

    monkeypatch.setattr(decode, "read_frames", spy)
    first, second = ds[(0, 1)], ds[(0, 2)]
    assert opened.count(str(bad)) == 1 and first["label"] == second["label"] == 7
    assert second["failures"] and all("bad.mp4: PyAV cannot open it" in f for f in second["failures"])  # each draw

