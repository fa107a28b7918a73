"""Datasets: a training clip dataset with a bounded-retry failure policy, and a multi-view evaluation dataset.

Both open each video inside the process that reads it (the DataLoader worker), through `decode.read_frames`, and
decode every frame a video item needs in one batched read: a training item's N repeated-augmentation clips share
one decode (decode-once-sample-many); an evaluation item's K temporal clips are read together and cropped after.

Failure policy (CONVENTIONS 7): in training a video that fails is replaced by another, randomly drawn one (at most
`max_retries` times) and the failure travels back with the item as "path: reason"; in evaluation a video is never
substituted: the item says it failed and why.
"""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from torch.utils.data import Dataset, get_worker_info

from aim_video.data import decode, sampling
from aim_video.data.annotations import RecordTable, VideoRecord
from aim_video.data.transforms import ClipTransform


def worker_seed() -> int:
    """The seed of this DataLoader worker (distinct per worker, per rank and per loader), or of the main process."""
    info = get_worker_info()
    return int(info.seed) if info is not None else int(torch.initial_seed())


def failure_reason(err: Exception) -> str:
    """One line saying why a video could not be used."""
    if isinstance(err, decode.VideoReadError):
        return err.reason
    return f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"


class TrainClipDataset(Dataset):
    """Random clips for training; items are dicts {video uint8 [N, T, C, H, W], label, index, failures, fallbacks}.

    N = `repeated_aug` clips drawn from one decode: the same frames, augmented independently (RandomResizedCrop,
    flip, ...), as repeated augmentation wants. `index` is the index of the video actually returned (another one
    when the requested video failed); `failures` holds "path: reason" for each video that failed on the way;
    `fallbacks` holds "path: reason" when the video returned was read with the fallback backend (exact, but slow:
    PyAV decodes from the start), so an epoch can report how much of the data set takes that road.
    """

    def __init__(
        self,
        records: list[VideoRecord],
        transform: ClipTransform,
        sampling_mode: str = "dense",
        num_frames: int = 8,
        frame_stride: int = 16,
        short_video: str = "",
        backend: str = "decord",
        fallback_backend: str = "",
        num_threads: int = 1,
        repeated_aug: int = 1,
        max_retries: int = 10,
        frame_counts: dict[str, int] | None = None,
        seek_mode: str = "exact",
        decode_device: str = "cpu",
        timeout_s: float = 0.0,
    ):
        if repeated_aug < 1:
            raise ValueError(f"data.repeated_aug must be >= 1, got {repeated_aug}")
        if sampling_mode not in sampling.SAMPLING_MODES:
            raise ValueError(f"data.sampling must be one of {sampling.SAMPLING_MODES}, got {sampling_mode!r}")
        # arrays, not objects: forked workers keep sharing them; with the frame counts of a verify report
        self.records = RecordTable(records, frame_counts)
        self.transform = transform
        self.sampling_mode = sampling_mode
        self.num_frames = num_frames
        self.frame_stride = frame_stride
        self.short_video = short_video
        self.backend = backend
        self.fallback_backend = fallback_backend
        self.num_threads = num_threads
        self.repeated_aug = repeated_aug
        self.max_retries = max_retries
        self.read_options = {"seek_mode": seek_mode, "device": decode_device, "timeout_s": timeout_s or None}
        self._rng: np.random.Generator | None = None  # the worker's stream (items without a seed)
        self._rng_seed: int | None = None
        self._item: tuple[int, int] | None = None  # (seed, attempt) of the seeded item being read
        self._known_bad: dict[int, str] = {}  # per worker: videos that failed once are not decoded again

    def __len__(self) -> int:
        return len(self.records)

    def rng(self) -> np.random.Generator:
        """Sampling RNG. A seeded item's (`SeededSampler`): a fresh generator of (seed, attempt) at every call, so a
        clip depends on its seed, the attempt and the frame count alone, not on what this worker read before (a read
        retried once a short file's real count is known samples as a worker that knew it would). Else the worker's
        stream, seeded from the worker's seed, so workers never draw the same clips."""
        if self._item is not None:
            return np.random.default_rng(self._item)
        seed = worker_seed()
        if self._rng is None or seed != self._rng_seed:
            self._rng, self._rng_seed = np.random.default_rng(seed), seed
        return self._rng

    def sample_indices(self, num_frames: int) -> list[int]:
        return sampling.train_indices(
            num_frames, self.sampling_mode, self.num_frames, self.frame_stride, self.rng(), self.short_video
        )

    def load(self, index: int) -> torch.Tensor:
        """Decode one clip of video `index` and augment it `repeated_aug` times -> uint8 [N, T, C, H, W]."""
        path = self.records[index].path
        frames = decode.read_frames(
            path,
            self.sample_indices,
            backend=self.backend,
            num_threads=self.num_threads,
            fallback=self.fallback_backend,
            num_frames=self.records.frame_count(index),
            **self.read_options,
        )  # [T, H, W, C]
        return torch.stack([self.transform(frames) for _ in range(self.repeated_aug)])

    def __getitem__(self, item: int | tuple[int, int]) -> dict:
        """`item`: a video index, or (index, seed) from `SeededSampler`: the clip then depends on the seed alone,
        not on which worker reads it or what that worker read before (exact mid-epoch resume; results that do
        not change with data.num_workers)."""
        if isinstance(item, tuple):
            index, seed = item
            with torch.random.fork_rng(devices=[]):  # transforms draw from torch's CPU RNG: seed it, put it back
                # the CPU's alone, from both 32-bit halves: its generator keeps the low 32 bits of a seed, so seeds
                # that differ only above them would augment alike (32 bits cannot rule out chance collisions, and
                # only the same video with the same draws matters: the crop follows the seed, the frames the video).
                # torch.manual_seed reseeds CUDA, which fork_rng(devices=[]) does not put back (with num_workers=0,
                # the model's dropout on the GPU)
                torch.default_generator.manual_seed((seed ^ (seed >> 32)) & 0xFFFFFFFF)
                try:
                    return self._get(index, seed)
                finally:
                    self._item = None
        return self._get(item, None)

    def _replacement(self, seed: int | None, attempt: int) -> int:
        """The video tried after a failure: of (seed, attempt) for a seeded item, whatever this worker knew to be
        bad already (a video skipped as known bad draws the same replacement as one read and failing)."""
        rng = self.rng() if seed is None else np.random.default_rng((seed, attempt, 1))
        return int(rng.integers(len(self.records)))

    def _get(self, index: int, seed: int | None) -> dict:
        failures: list[str] = []
        current = index
        for attempt in range(self.max_retries + 1):
            self._item = None if seed is None else (seed, attempt)
            if current in self._known_bad:
                failures.append(f"{self.records[current].path}: {self._known_bad[current]}")
            else:
                try:
                    video = self.load(current)
                    label, path = self.records[current].label, self.records[current].path
                    why = decode.fallback_reason(path)
                    fallbacks = [f"{path}: {why}"] if why else []
                    return {
                        "video": video,
                        "label": label,
                        "index": current,
                        "failures": failures,
                        "fallbacks": fallbacks,
                    }
                except Exception as err:  # any failure of one video must not end the epoch: count it, go on
                    reason = failure_reason(err)
                    # only a file that cannot be decoded stays skipped; a timeout (a slow disk for a moment) or an
                    # error after decoding is tried again next time, or a stall would drop the video for the run
                    transient = (decode.ReadTimeout, decode.DecoderKilled)  # a stall, the OOM killer: not the file
                    if isinstance(err, decode.VideoReadError) and not isinstance(err, transient):
                        self._known_bad[current] = reason
                    failures.append(f"{self.records[current].path}: {reason}")
            current = self._replacement(seed, attempt)
        raise RuntimeError(
            f"{len(failures)} videos in a row failed to load (data.max_retries={self.max_retries}); "
            "the data set is mostly unreadable. Failures:\n  " + "\n  ".join(failures)
        )


def collate_train(items: list[dict]) -> dict:
    """Items with N clips each -> {video [B*N, T, C, H, W], label [B*N], index [B*N], failures, fallbacks}."""
    videos = torch.cat([it["video"] for it in items])  # (b n) t c h w
    n = items[0]["video"].shape[0]
    return {
        "video": videos,
        "label": torch.tensor([it["label"] for it in items], dtype=torch.int64).repeat_interleave(n),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.int64).repeat_interleave(n),
        "failures": [f for it in items for f in it["failures"]],
        "fallbacks": [f for it in items for f in it.get("fallbacks", [])],
    }


class MultiViewDataset(Dataset):
    """All test views of a video from one decode; items {video uint8 [V, T, C, H, W] | None, label, index, path,
    error, fallback} (`fallback`: why the video was read with the fallback backend, "" when it was not).

    V = num_clips x num_crops, clip-major. A video that cannot be read yields video None and the reason in `error`.
    """

    def __init__(
        self,
        records: list[VideoRecord],
        transform: ClipTransform,
        sampling_mode: str = "dense",
        num_frames: int = 8,
        frame_stride: int = 16,
        num_clips: int = 3,
        short_video: str = "",
        backend: str = "decord",
        fallback_backend: str = "",
        num_threads: int = 1,
        frame_counts: dict[str, int] | None = None,
        seek_mode: str = "exact",
        decode_device: str = "cpu",
        timeout_s: float = 0.0,
    ):
        # arrays, not objects: forked workers keep sharing them; with the frame counts of a verify report
        self.records = RecordTable(records, frame_counts)
        self.dropped: list[tuple[str, str]] = []  # (path, reason): listed videos left out before this dataset
        self.transform = transform
        self.sampling_mode = sampling_mode
        self.num_frames = num_frames
        self.frame_stride = frame_stride
        self.num_clips = num_clips
        self.short_video = short_video
        self.backend = backend
        self.fallback_backend = fallback_backend
        self.num_threads = num_threads
        self.read_options = {"seek_mode": seek_mode, "device": decode_device, "timeout_s": timeout_s or None}

    def __len__(self) -> int:
        return len(self.records)

    def view_indices(self, num_frames: int) -> list[int]:
        """The K clips' frame indices, concatenated clip after clip."""
        clips = sampling.test_indices(
            num_frames, self.sampling_mode, self.num_frames, self.frame_stride, self.num_clips, self.short_video
        )
        return [i for clip in clips for i in clip]

    def load(self, index: int) -> torch.Tensor:
        path = self.records[index].path
        frames = decode.read_frames(
            path,
            self.view_indices,
            backend=self.backend,
            num_threads=self.num_threads,
            fallback=self.fallback_backend,
            num_frames=self.records.frame_count(index),
            **self.read_options,
        )  # [(k t), H, W, C]
        crops = self.transform(frames)  # [n, (k t), C, S, S]
        return rearrange(crops, "n (k t) c h w -> (k n) t c h w", k=self.num_clips).contiguous()

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        try:
            video, error = self.load(index), None
        except Exception as err:  # reported, never substituted
            video, error = None, failure_reason(err)
        item = {"video": video, "label": record.label, "index": index, "path": record.path, "error": error}
        return item | {"fallback": decode.fallback_reason(record.path) if error is None else ""}


class CollateEval:
    """Collate for MultiViewDataset: readable videos stacked, unreadable ones listed in `errors`.

    `view_shape` = (V, T, C, S, S) gives the empty batch its shape when no video of a batch could be read.
    """

    def __init__(self, view_shape: tuple[int, ...]):
        self.view_shape = tuple(view_shape)

    def __call__(self, items: list[dict]) -> dict:
        ok = [it for it in items if it["error"] is None]
        video = torch.stack([it["video"] for it in ok]) if ok else torch.empty((0, *self.view_shape), dtype=torch.uint8)
        return {
            "video": video,  # [B_ok, V, T, C, S, S]
            "label": torch.tensor([it["label"] for it in ok], dtype=torch.int64),
            "index": torch.tensor([it["index"] for it in ok], dtype=torch.int64),
            "errors": [(it["index"], it["path"], it["error"]) for it in items if it["error"] is not None],
            # read with data.fallback_backend (exact, slow): (index, path, why)
            "fallbacks": [(it["index"], it["path"], it["fallback"]) for it in ok if it.get("fallback")],
        }
