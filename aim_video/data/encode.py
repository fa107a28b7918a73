"""Video encoding with PyAV: test and demo videos (`write_video`) and the prepare tool's exact re-encode (`transcode`).

Every output is written atomically (a temporary name in the same folder, then a rename). Decoding, and every read
of a video, stays in `aim_video.data.decode`.
"""

from __future__ import annotations

import itertools
import os
from fractions import Fraction
from typing import Any

import av
import numpy as np
import torch

from aim_video.data.decode import VideoReadError, iter_decoded, open_av, quarter_turns, video_stream


def write_video(
    path: str,
    frames: np.ndarray | torch.Tensor,
    fps: float = 25.0,
    codec: str = "libx264",
    gop: int | None = None,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    rotation: int = 0,
) -> None:
    """Encode uint8 RGB frames [T, H, W, C] to `path` atomically (temporary name, then rename).

    `rotation` (degrees counter-clockwise, a multiple of 90) is stored as the display matrix, as phones do: the
    frames are kept as given and readers show them turned."""
    arr = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or not len(arr):
        raise ValueError(f"write_video needs uint8 [T, H, W, 3] frames, T >= 1, got {arr.dtype} {tuple(arr.shape)}")
    _encode(
        path,
        (av.VideoFrame.from_ndarray(img, format="rgb24") for img in arr),
        arr.shape[2],
        arr.shape[1],
        fps,
        codec,
        gop,
        pix_fmt,
        options,
        rotation,
    )


def _encode(
    path: str,
    frames: Any,
    width: int,
    height: int,
    fps: float,
    codec: str,
    gop: int | None,
    pix_fmt: str,
    options: dict[str, str] | None,
    rotation: int = 0,
) -> int:
    """Encode PyAV frames to `path` atomically; `rotation` (degrees counter-clockwise) goes in the display matrix."""
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    stem, ext = os.path.splitext(name)
    # hidden (class-folder trees skip it) with the extension PyAV picks the container by: a run killed mid-write
    # (repair's time limit) leaves nothing that lists as a video
    tmp = os.path.join(folder, f".{stem}.tmp{os.getpid()}{ext}")
    count = 0
    try:
        with av.open(tmp, mode="w") as container:
            rate = Fraction(fps).limit_denominator(1001)
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
            if gop is not None:
                stream.codec_context.gop_size = gop
            if options:
                stream.options = dict(options)
            if rotation % 360:
                stream.set_display_rotation(rotation)
            for frame in frames:
                frame.pts, frame.time_base = count, 1 / rate  # constant frame rate: frame i shows at i / fps
                frame.pict_type = 0  # NONE: the encoder places keyframes, not the source's frame types
                for packet in stream.encode(frame):
                    container.mux(packet)
                count += 1
            for packet in stream.encode():
                container.mux(packet)
        if count:  # no frame: nothing to publish (the caller says why)
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return count


X264_TUNES = ("film", "animation", "grain", "stillimage", "fastdecode", "zerolatency", "psnr", "ssim")


def x264_tune(tune: str) -> str:
    """`tune` checked against x264's tunes ("" or "none": no tune -> ""; several joined by commas)."""
    if not tune or tune == "none":
        return ""
    unknown = [t for t in tune.split(",") if t not in X264_TUNES]
    if unknown:
        raise ValueError(f"unknown x264 tune {unknown[0]!r}: use one of {', '.join(X264_TUNES)}, or 'none'")
    return tune


def transcode(
    src: str,
    dst: str,
    keyint: int = 16,
    short_side: int = 0,
    crf: int = 23,
    num_threads: int = 1,
    tune: str = "fastdecode",
) -> int:
    """Re-encode `src` to an h264 `dst` that random access reads exactly; returns the number of frames written.

    Decodes sequentially (never trusting the source's seek points or count, skipping undecodable packets), then
    encodes at a constant frame rate (the source's average) with a closed GOP of exactly `keyint` frames (true
    IDR keyframes, no scene-cut keyframes), no B-frames, optionally resized to `short_side` (even sizes), with
    x264's `tune` ("" or "none": none; fastdecode by default, as `tools/prepare_kinetics.py reencode`).
    `src` is only read; `dst` is written atomically.
    """
    container = open_av(src, num_threads)
    try:
        stream = video_stream(container)
        rate = stream.average_rate or stream.guessed_rate or 25
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        if short_side > 0:
            scale = short_side / min(width, height)
            width, height = round(width * scale), round(height * scale)
        width, height = width - width % 2, height - height % 2
        params = f"keyint={keyint}:min-keyint={keyint}:scenecut=0:open-gop=0:bframes=0"
        tune = x264_tune(tune)
        options = {"crf": str(crf), "x264-params": params} | ({"tune": tune} if tune else {})
        frames = iter_decoded(container, rgb=False)
        first = next(frames, None)
        if first is not None:  # the source's display rotation is kept (the picture itself is not turned)
            frames = itertools.chain([first], frames)
        resized = (f.reformat(width=width, height=height, format="yuv420p") for f in frames)
        count = _encode(
            dst,
            resized,
            width,
            height,
            float(rate),
            "libx264",
            keyint,
            "yuv420p",
            options,
            rotation=90 * quarter_turns(first) if first is not None else 0,
        )
    finally:
        container.close()
    if count == 0:
        raise VideoReadError(src, "no frame decodes; nothing to re-encode")
    return count
