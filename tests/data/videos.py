"""Test videos made at test time with PyAV: clean files in several codecs and remuxes that break random access.

Each broken file reproduces one failure class seen in published videos (issue 10) by rewriting the packets of a
clean h264 file (no re-encode): false keyframe flags, a timestamp gap, an undecodable packet at the end.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import av
import numpy as np

from aim_video.data import decode, encode

H, W = 64, 96  # decord 0.6.0 mis-copies frames narrower than ~64 px (row padding); keep test videos wider


def make_frames(n: int, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """uint8 [n, h, w, 3]: a textured background sliding left plus a coloured square, so every frame differs."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    out = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        img = np.roll(base, 2 * i, axis=1)
        y, x = (3 * i) % (h - 16), (5 * i) % (w - 16)
        img[y : y + 16, x : x + 16] = ((37 * i) % 256, 255 - (11 * i) % 256, (7 * i) % 256)
        out[i] = img
    return out


def sequential_frames(path: str) -> np.ndarray:
    """The reference: every frame that decodes, in order, from one sequential PyAV decode."""
    container = decode.open_av(path)
    try:
        return np.stack(list(decode.iter_decoded(container)))
    finally:
        container.close()


def make_h264(
    path: str, n: int = 300, gop: int = 250, bframes: int = 0, seed: int = 0, pix_fmt: str = "yuv420p"
) -> str:
    frames = make_frames(n, seed=seed)
    encode.write_video(path, frames, fps=25, gop=gop, pix_fmt=pix_fmt, options={"bf": str(bframes)})
    return path


def _remux(src: str, dst: str, edit: Callable[[int, Any], None], tail: Callable[[Any, Any, list], None] | None = None):
    """Copy `src`'s video packets into `dst` unchanged except for `edit(k, packet)` (k in decode order)."""
    with av.open(src) as inp, av.open(dst, "w") as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        packets = [p for p in inp.demux(in_stream) if p.size > 0]
        for k, packet in enumerate(packets):
            edit(k, packet)
            packet.stream = out_stream
            out.mux(packet)
        if tail is not None:
            tail(out, out_stream, packets)
    return dst


def rotated(src: str, dst: str, degrees: int) -> str:
    """The same packets with a display matrix turning the picture `degrees` counter-clockwise (a phone video)."""
    with av.open(src) as inp, av.open(dst, "w") as out:
        in_stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(in_stream)
        out_stream.set_display_rotation(degrees)
        for packet in [p for p in inp.demux(in_stream) if p.size > 0]:
            packet.stream = out_stream
            out.mux(packet)
    return dst


def with_cover(src: str, dst: str) -> str:
    """An mkv holding a one-frame image stream (cover art, a thumbnail track) before `src`'s video packets."""
    with av.open(src) as inp, av.open(dst, "w", format="matroska") as out:
        in_stream = inp.streams.video[0]
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = in_stream.width, in_stream.height, "yuvj420p"
        video = out.add_stream_from_template(in_stream)
        picture = av.VideoFrame.from_ndarray(np.full((in_stream.height, in_stream.width, 3), 200, np.uint8))
        for packet in [*cover.encode(picture.reformat(format="yuvj420p")), *cover.encode()]:
            out.mux(packet)
        for packet in [p for p in inp.demux(in_stream) if p.size > 0]:
            packet.stream = video
            out.mux(packet)
    return dst


def false_keyframes(src: str, dst: str, at: tuple[int, ...] = (40, 110, 180)) -> str:
    """Set the keyframe flag on ordinary P-frame packets: the container's index lists them as seek points."""

    def edit(k: int, packet: Any) -> None:
        if k in at:
            packet.is_keyframe = True

    return _remux(src, dst, edit)


def timestamp_gap(src: str, dst: str, after: int = 150, frames: int = 3) -> str:
    """Shift the timestamps of packets `after`.. by `frames` frame durations (needs a file without B-frames)."""

    def edit(k: int, packet: Any) -> None:
        if k >= after:
            packet.pts += frames * packet.duration
            packet.dts += frames * packet.duration

    return _remux(src, dst, edit)


def undecodable_tail(src: str, dst: str) -> str:
    """Append one packet of garbage: the container claims one frame more than decodes."""

    def tail(out: Any, stream: Any, packets: list) -> None:
        last = packets[-1]
        payload = bytes([0, 0, 0, 1, 0x65]) + np.random.default_rng(0).integers(0, 256, 200, np.uint8).tobytes()
        packet = av.Packet(payload)
        packet.stream = stream
        packet.time_base = last.time_base
        packet.pts, packet.dts, packet.duration = last.pts + last.duration, last.dts + last.duration, last.duration
        out.mux(packet)

    return _remux(src, dst, lambda k, p: None, tail)


class SleepyReader:
    """Test backend whose read sleeps past any limit: tests the watchdog, not decoding (registered as "sleepy")."""

    def __init__(self, path: str, num_threads: int = 1, **_: Any):
        self.path, self.num_frames = path, 100
        self.info = decode.VideoInfo(100, 25.0, H, W)

    def get(self, indices: list[int]) -> np.ndarray:
        time.sleep(3600)
        return np.zeros((len(indices), H, W, 3), np.uint8)

    def close(self) -> None:
        pass


class HangOnNameReader:
    """Test backend: decord for every file except those whose name starts with "hang", whose read sleeps past any
    limit (tests the watchdog inside a real training loader, not decoding; registered as "hang_on_name")."""

    def __init__(self, path: str, num_threads: int = 1, **_: Any):
        self.path = path
        self.hangs = os.path.basename(path).startswith("hang")
        self._inner = None if self.hangs else decode.open_reader(path, "decord", num_threads)
        self.num_frames = 100 if self._inner is None else self._inner.num_frames

    @property
    def info(self) -> decode.VideoInfo:
        return decode.VideoInfo(100, 25.0, H, W) if self._inner is None else self._inner.info

    def get(self, indices: list[int]) -> np.ndarray:
        if self._inner is None:
            time.sleep(3600)
        return self._inner.get(indices)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


def mean_abs_diff(a: Any, b: Any) -> float:
    return float(np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16)).mean())
