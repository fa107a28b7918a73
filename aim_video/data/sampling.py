"""Frame-index math as small pure functions (no video needed to test them).

Two schemes, as in the AIM recipes:
- dense: `clip_len` frames `stride` apart; the clip covers a span of `clip_len * stride` frames (the authors'
  mmaction `SampleFrames`: 8x16, 16x8, 32x4 all span 128). Training draws a random start; testing takes K starts
  evenly spread over the valid range, each centred in its share of it.
- uniform (TSN): the video is cut into `clip_len` equal segments; training takes a random frame per segment,
  testing the middle one (clip k of K takes the point (k + 0.5) / K of the way through each segment).

Videos shorter than the span either loop (index mod n) or clamp (to n - 1), chosen by `short_video`.
Every function returns a list of ints in [0, num_frames).
"""

from __future__ import annotations

import numpy as np

SHORT_VIDEO_MODES = ("loop", "clamp")
SAMPLING_MODES = ("dense", "uniform")


def _fit(indices: np.ndarray, num_frames: int, short_video: str) -> list[int]:
    if short_video == "loop":
        indices = np.mod(indices, num_frames)
    elif short_video == "clamp":
        indices = np.clip(indices, 0, num_frames - 1)
    else:
        raise ValueError(f"short_video must be one of {SHORT_VIDEO_MODES}, got {short_video!r}")
    return [int(i) for i in indices]


def _check(num_frames: int, clip_len: int) -> None:
    if num_frames < 1:
        raise ValueError(f"cannot sample from a video with {num_frames} frames")
    if clip_len < 1:
        raise ValueError(f"clip_len must be >= 1, got {clip_len}")


def dense_train(
    num_frames: int, clip_len: int, stride: int, rng: np.random.Generator, short_video: str = "loop"
) -> list[int]:
    """A random dense clip: start uniform in [0, num_frames - clip_len * stride], else 0 for a short video."""
    _check(num_frames, clip_len)
    span = clip_len * stride
    start = int(rng.integers(0, num_frames - span + 1)) if num_frames >= span else 0
    return _fit(start + np.arange(clip_len) * stride, num_frames, short_video)


def dense_test(
    num_frames: int, clip_len: int, stride: int, num_clips: int, short_video: str = "loop"
) -> list[list[int]]:
    """K dense clips whose starts are evenly spread over the valid starts, each centred in its share."""
    _check(num_frames, clip_len)
    span = clip_len * stride
    if num_frames >= span:
        share = (num_frames - span + 1) / num_clips
        starts = (np.arange(num_clips) * share + share / 2).astype(np.int64)
    else:
        starts = np.zeros(num_clips, dtype=np.int64)
    return [_fit(s + np.arange(clip_len) * stride, num_frames, short_video) for s in starts]


def _segment_bounds(num_frames: int, clip_len: int) -> tuple[np.ndarray, np.ndarray]:
    edges = np.arange(clip_len + 1) * num_frames / clip_len
    return edges[:-1], edges[1:]


def uniform_train(num_frames: int, clip_len: int, rng: np.random.Generator, short_video: str = "clamp") -> list[int]:
    """One random frame per segment of `num_frames / clip_len` frames (TSN training). A video shorter than
    `clip_len` gives its frames in order, repeated (`clamp`, the default, as the authors' SampleFrames), or from the
    start again (`loop`: the clip's end jumps back to its start)."""
    _check(num_frames, clip_len)
    if num_frames < clip_len:  # segments shorter than a frame
        base = np.arange(clip_len) if short_video == "loop" else np.floor(np.arange(clip_len) * num_frames / clip_len)
        return _fit(base.astype(np.int64), num_frames, short_video)
    lo, hi = _segment_bounds(num_frames, clip_len)
    first, last = np.ceil(lo).astype(np.int64), np.ceil(hi).astype(np.int64) - 1  # integer frames inside [lo, hi)
    last = np.maximum(last, first)
    return _fit(rng.integers(first, last + 1), num_frames, short_video)


def uniform_test(num_frames: int, clip_len: int, num_clips: int = 1, short_video: str = "clamp") -> list[list[int]]:
    """Per clip k of K, the frame (k + 0.5) / K of the way through each segment (K = 1: the middle)."""
    _check(num_frames, clip_len)
    clips = []
    for k in range(num_clips):
        pos = (np.arange(clip_len) + (k + 0.5) / num_clips) * num_frames / clip_len
        idx = np.floor(pos).astype(np.int64)
        if num_frames < clip_len and short_video == "loop":
            idx = np.arange(clip_len) + k
        clips.append(_fit(idx, num_frames, short_video))
    return clips


def short_video_policy(mode: str, short_video: str) -> str:
    """`short_video`, or for "" the mode's own: `loop` for dense clips, `clamp` (frames in order) for uniform ones,
    as the authors' mmaction SampleFrames does; looping a TSN clip scrambles the order that SSv2 is about."""
    return short_video or ("clamp" if mode == "uniform" else "loop")


def train_indices(
    num_frames: int, mode: str, clip_len: int, stride: int, rng: np.random.Generator, short_video: str = ""
) -> list[int]:
    """One training clip for `mode` ('dense' or 'uniform'; stride is unused for uniform)."""
    short_video = short_video_policy(mode, short_video)
    if mode == "dense":
        return dense_train(num_frames, clip_len, stride, rng, short_video)
    if mode == "uniform":
        return uniform_train(num_frames, clip_len, rng, short_video)
    raise ValueError(f"data.sampling must be one of {SAMPLING_MODES}, got {mode!r}")


def test_indices(
    num_frames: int, mode: str, clip_len: int, stride: int, num_clips: int, short_video: str = ""
) -> list[list[int]]:
    """The K test clips for `mode`, in temporal order."""
    short_video = short_video_policy(mode, short_video)
    if mode == "dense":
        return dense_test(num_frames, clip_len, stride, num_clips, short_video)
    if mode == "uniform":
        return uniform_test(num_frames, clip_len, num_clips, short_video)
    raise ValueError(f"data.sampling must be one of {SAMPLING_MODES}, got {mode!r}")


test_indices.__test__ = False  # not a pytest test despite the name
