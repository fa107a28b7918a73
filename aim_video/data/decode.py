"""Video decoding: the only module that imports decord, torchcodec or PyAV.

One batched read of a clip's sorted unique frame indices, duplicates restored afterwards. Readers are opened
where they are used (inside the DataLoader worker), never pickled or shared across processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

BACKENDS = ("decord", "torchcodec", "pyav")


class VideoReadError(RuntimeError):
    """A video could not be opened or the requested frames could not be decoded."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class BackendUnavailable(VideoReadError):
    """The chosen decoding backend is not installed or cannot load its libraries."""


@dataclass
class VideoInfo:
    num_frames: int  # as the container reports it
    fps: float
    height: int
    width: int


class _DecordReader:
    def __init__(self, path: str, num_threads: int = 1):
        try:
            import decord
        except ImportError as err:  # pragma: no cover - decord is a pinned dependency
            raise BackendUnavailable(path, f"decord is not installed ({err}); pip install decord==0.6.0") from None
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        except Exception as err:  # decord raises DECORDError (a RuntimeError) for anything it cannot open
            raise VideoReadError(path, f"decord cannot open it: {str(err).splitlines()[0][:200]}") from None
        self.path = path
        self.num_frames = len(self._vr)
        height, width = self._vr[0].shape[:2] if self.num_frames else (0, 0)
        self.info = VideoInfo(self.num_frames, float(self._vr.get_avg_fps()), height, width)

    def get(self, indices: list[int]) -> np.ndarray:
        return self._vr.get_batch(indices).asnumpy()

    def close(self) -> None:
        del self._vr


class _TorchCodecReader:
    def __init__(self, path: str, num_threads: int = 1, seek_mode: str = "exact", device: str = "cpu"):
        try:
            from torchcodec.decoders import VideoDecoder
        except Exception as err:  # ImportError, or RuntimeError when FFmpeg's shared libraries are missing
            raise BackendUnavailable(
                path,
                "torchcodec cannot load (it needs FFmpeg 4-7 shared libraries: `apt-get install -y ffmpeg` on "
                f"Debian/Ubuntu): {str(err).splitlines()[0][:200]}",
            ) from None
        try:
            self._dec = VideoDecoder(
                path, seek_mode=seek_mode, dimension_order="NHWC", num_ffmpeg_threads=num_threads, device=device
            )
        except Exception as err:
            raise VideoReadError(path, f"torchcodec cannot open it: {str(err).splitlines()[0][:200]}") from None
        self.path = path
        meta = self._dec.metadata
        self.num_frames = int(meta.num_frames or 0)
        self.info = VideoInfo(self.num_frames, float(meta.average_fps or 0.0), int(meta.height), int(meta.width))

    def get(self, indices: list[int]) -> np.ndarray:
        return self._dec.get_frames_at(indices=indices).data.cpu().numpy()

    def close(self) -> None:
        del self._dec


class _PyAVReader:
    """Sequential decode from the start: slow, but exact whatever the container's seek points claim."""

    def __init__(self, path: str, num_threads: int = 1):
        try:
            import av
        except ImportError as err:  # pragma: no cover
            raise BackendUnavailable(path, f"PyAV is not installed ({err}); pip install av") from None
        self._av = av
        try:
            self._container = av.open(path)
        except Exception as err:
            raise VideoReadError(path, f"PyAV cannot open it: {str(err).splitlines()[0][:200]}") from None
        if not self._container.streams.video:
            self._container.close()
            raise VideoReadError(path, "no video stream (audio-only or not a video)")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO" if num_threads != 1 else "SLICE"
        self.path = path
        self.num_frames = int(stream.frames or 0)
        rate = stream.average_rate or stream.guessed_rate or 0
        self.info = VideoInfo(self.num_frames, float(rate), int(stream.codec_context.height), int(stream.codec_context.width))

    def get(self, indices: list[int]) -> np.ndarray:
        wanted = set(indices)
        last = max(indices)
        out: dict[int, np.ndarray] = {}
        self._container.seek(0)
        for i, frame in enumerate(self._container.decode(video=0)):
            if i in wanted:
                out[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
        missing = [i for i in indices if i not in out]
        if missing:
            raise VideoReadError(self.path, f"only {len(out)} of the requested frames decode; first missing {missing[0]}")
        return np.stack([out[i] for i in indices])

    def close(self) -> None:
        self._container.close()


_READERS = {"decord": _DecordReader, "torchcodec": _TorchCodecReader, "pyav": _PyAVReader}


def open_reader(path: str, backend: str = "decord", num_threads: int = 1, **kwargs):
    """Open `path` with one backend; raises VideoReadError naming the file and the reason."""
    if backend not in _READERS:
        raise ValueError(f"unknown decoding backend '{backend}'; choose one of {', '.join(BACKENDS)}")
    if not os.path.isfile(path):
        raise VideoReadError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "empty file (0 bytes)")
    return _READERS[backend](path, num_threads=num_threads, **kwargs)


def probe(path: str, backend: str = "decord") -> VideoInfo:
    reader = open_reader(path, backend)
    try:
        return reader.info
    finally:
        reader.close()


def read_frames(
    path: str,
    indices: Sequence[int] | Callable[[int], Sequence[int]],
    backend: str = "decord",
    num_threads: int = 1,
    fallback: str = "",
    num_frames: int | None = None,
) -> torch.Tensor:
    """Decode `indices` of `path` as uint8 [T, H, W, C] in the order given (duplicates allowed).

    The sorted unique indices are read in one batched call. `num_frames`, when known to be the count that really
    decodes, bounds the request: an index at or past it is an error, never passed to the decoder (decord can spin
    forever past the real end of a file that over-reports its length).
    `indices` may be a function of the usable frame count returning the indices: the loader samples a clip from
    the count of the reader it already opened, so each clip costs one open.
    """
    if not callable(indices) and len(indices) == 0:
        raise ValueError("read_frames needs at least one frame index")
    try:
        reader = open_reader(path, backend, num_threads)
    except BackendUnavailable:
        raise
    except VideoReadError:
        if not fallback or fallback == backend:
            raise
        reader = open_reader(path, fallback, num_threads)
    try:
        limit = reader.num_frames if num_frames is None else min(num_frames, reader.num_frames or num_frames)
        if limit <= 0:
            raise VideoReadError(path, "no decodable frames")
        if callable(indices):
            indices = indices(limit)
            if len(indices) == 0:
                raise ValueError("read_frames: the index function returned no frame index")
        uniq = sorted(set(int(i) for i in indices))
        if uniq[0] < 0 or uniq[-1] >= limit:
            raise VideoReadError(path, f"frame index {uniq[-1] if uniq[-1] >= limit else uniq[0]} outside 0..{limit - 1}")
        try:
            frames = reader.get(uniq)
        except VideoReadError:
            raise
        except Exception as err:
            raise VideoReadError(path, f"{backend} failed to decode frames {uniq[0]}..{uniq[-1]}: "
                                       f"{str(err).splitlines()[0][:200]}") from None
    finally:
        reader.close()
    if frames.shape[0] != len(uniq):
        raise VideoReadError(path, f"asked for {len(uniq)} frames, decoder returned {frames.shape[0]}")
    frames = torch.from_numpy(np.ascontiguousarray(frames))
    if len(indices) == len(uniq) and all(int(i) == u for i, u in zip(indices, uniq, strict=True)):
        return frames  # already in order: no gather copy (about 3 ms for an 8x256x340 clip)
    position = {idx: k for k, idx in enumerate(uniq)}
    order = torch.as_tensor([position[int(i)] for i in indices])
    return frames[order]


def write_video(path: str, frames: np.ndarray | torch.Tensor, fps: float = 25.0, codec: str = "libx264",
                gop: int | None = None, pix_fmt: str = "yuv420p", options: dict[str, str] | None = None) -> None:
    """Encode uint8 RGB frames [T, H, W, C] to `path` atomically (temporary name, then rename)."""
    import av

    arr = frames.numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"write_video needs uint8 [T, H, W, 3] frames, got {arr.dtype} {tuple(arr.shape)}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{os.getpid()}{ext}"
    from fractions import Fraction

    with av.open(tmp, mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height = arr.shape[2], arr.shape[1]
        stream.pix_fmt = pix_fmt
        if gop is not None:
            stream.codec_context.gop_size = gop
        if options:
            stream.options = dict(options)
        for img in arr:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
