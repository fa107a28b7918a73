"""Video decoding: the only module that imports decord or torchcodec, and PyAV's only reader (`encode` writes).

One batched read of a clip's sorted unique frame indices, duplicates restored afterwards. Readers are opened
where they are used (inside the DataLoader worker, per call), never pickled or shared across processes.

Frame accuracy: random access trusts the container's seek points and frame count; real files lie about both (see
`aim_video.data.verify`). Here, `num_frames` (the count that really decodes, from a verify report) bounds every
request; a read that fails inside the claimed count triggers one sequential count, and the discovered count is
reported (`ShortVideoError`, `discovered_frame_counts()`) and used for every later read in this process.
A `timeout_s` runs the read in a forked child that is killed when the limit passes (`aim_video.data.watchdog`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

# PyAV first: decord loads its own older libvpx with RTLD_GLOBAL, and a PyAV imported after it binds to that copy
# (libvpx-vp9 encoding then fails with EINVAL). Importing av before decord keeps each on its own libraries.
import av
import numpy as np
import torch

from aim_video.data import watchdog

BACKENDS = ("decord", "torchcodec", "pyav")
SEEK_MODES = ("exact", "approximate")
FFMPEG_HINT = "apt-get install -y ffmpeg"
log = logging.getLogger(__name__)


class VideoReadError(RuntimeError):
    """A video could not be opened or the requested frames could not be decoded."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self):  # picklable across the watchdog's pipe and DataLoader workers
        return (type(self), (self.path, self.reason))


class BackendUnavailable(VideoReadError):
    """The chosen decoding backend is not installed or cannot load its libraries."""


class ReadTimeout(VideoReadError):
    """The read did not finish within `timeout_s`; the decoding child was killed."""


class DecoderKilled(VideoReadError):
    """The decoding child was killed from outside (the out-of-memory killer, say), not by the video: transient."""


class ShortVideoError(VideoReadError):
    """The container claims more frames than decode: indices at or past `decodable` cannot be read."""

    def __init__(self, path: str, claimed: int, decodable: int):
        super().__init__(path, f"container claims {claimed} frames but only {decodable} decode")
        self.claimed = claimed
        self.decodable = decodable

    def __reduce__(self):
        return (type(self), (self.path, self.claimed, self.decodable))


@dataclass
class VideoInfo:
    num_frames: int  # as the container (or the backend's index) reports it
    fps: float
    height: int
    width: int


def _first_line(err: BaseException) -> str:
    """The line of an error message that says what went wrong: the last one that is not a bug-report link, without
    decord's time of day and source position (`[01:17:48] /github/.../video_reader.cc:486: `), which made one
    video's reason differ by worker and rank (counted under several names, examples filled with one file)."""
    text = [line for line in str(err).strip().splitlines() if line.strip() and "://" not in line]
    line = text[-1].strip().rstrip(". ") if text else type(err).__name__
    return re.sub(r"^\[\d\d:\d\d:\d\d\] (\S+\.(cc|cpp|h):\d+: )?", "", line)[:200]


class _DecordReader:
    def __init__(self, path: str, num_threads: int = 1, **_: Any):
        try:
            import decord
        except ImportError as err:  # pragma: no cover - decord is a pinned dependency
            raise BackendUnavailable(path, f"decord is not installed ({err}); pip install decord==0.6.0") from None
        try:
            self._vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=num_threads)
        except Exception as err:  # decord raises DECORDError (a RuntimeError) for anything it cannot open
            codec = _undecodable_codec(path, err)
            if codec:
                raise VideoReadError(
                    path,
                    f"decord cannot decode its {codec} video (decord 0.6's FFmpeg has no {codec} decoder): re-encode "
                    "it (tools/prepare_kinetics.py reencode) or use data.backend=torchcodec",
                ) from None
            raise VideoReadError(path, f"decord cannot open it: {_first_line(err)}") from None
        self.path = path
        self.num_frames = len(self._vr)
        self._fps = float(self._vr.get_avg_fps())

    @property
    def info(self) -> VideoInfo:  # decord has no size without decoding a frame: only pay for it when asked
        height, width = self._vr[0].shape[:2] if self.num_frames else (0, 0)
        self._vr.seek(0)
        return VideoInfo(self.num_frames, self._fps, int(height), int(width))

    def seek_points(self) -> list[int]:
        return [int(k) for k in self._vr.get_key_indices()]

    def get(self, indices: list[int]) -> np.ndarray:
        return self._vr.get_batch(indices).asnumpy()

    def close(self) -> None:
        del self._vr


def _undecodable_codec(path: str, err: BaseException) -> str:
    """The codec of a video stream decord found no decoder for ("" when that is not why it failed).

    decord reports "cannot find video stream" when its FFmpeg (4.x, in the wheel) has no decoder for the stream,
    e.g. AV1, which YouTube serves for many videos today."""
    if "cannot find video stream" not in str(err):
        return ""
    try:
        with av.open(path) as container:
            return video_stream(container).codec_context.codec.canonical_name if container.streams.video else ""
    except Exception:  # noqa: BLE001 - not a video PyAV can open either: decord's own message stands
        return ""


def torchcodec_unavailable() -> str:
    """Why torchcodec cannot be used here ("" when it can): the reason names what to install."""
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
    except Exception as err:  # ImportError, or RuntimeError when FFmpeg's shared libraries are missing
        return (
            f"torchcodec cannot load: it needs FFmpeg's shared libraries (libavcodec 4-8); install them with "
            f"`{FFMPEG_HINT}` (Debian/Ubuntu) ({_first_line(err)})"
        )
    return ""


class _TorchCodecReader:
    def __init__(self, path: str, num_threads: int = 1, seek_mode: str = "exact", device: str = "cpu", **_: Any):
        reason = torchcodec_unavailable()
        if reason:
            raise BackendUnavailable(path, reason)
        if seek_mode not in SEEK_MODES:
            raise ValueError(f"unknown torchcodec seek_mode '{seek_mode}'; choose one of {', '.join(SEEK_MODES)}")
        from torchcodec.decoders import VideoDecoder

        try:
            self._dec = VideoDecoder(
                path, seek_mode=seek_mode, dimension_order="NHWC", num_ffmpeg_threads=num_threads, device=device
            )
        except Exception as err:
            raise VideoReadError(path, f"torchcodec cannot open it: {_first_line(err)}") from None
        self.path = path
        meta = self._dec.metadata
        self.num_frames = int(meta.num_frames or 0)
        self.info = VideoInfo(self.num_frames, float(meta.average_fps or 0.0), int(meta.height), int(meta.width))

    def get(self, indices: list[int]) -> np.ndarray:
        return self._dec.get_frames_at(indices=indices).data.cpu().numpy()

    def close(self) -> None:
        del self._dec


def video_stream(container: Any) -> Any:
    """The stream PyAV decodes: FFmpeg's best video stream, the one decord and torchcodec pick, not merely the
    first (an mkv can hold a cover image, or a thumbnail track, before the video)."""
    return container.streams.best("video") or container.streams.video[0]


def open_av(path: str, num_threads: int = 1) -> Any:
    """Open `path` with PyAV (threads set before the decoder opens); raises VideoReadError without a video stream."""
    try:
        container = av.open(path)
    except Exception as err:
        raise VideoReadError(path, f"PyAV cannot open it: {_first_line(err)}") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "no video stream (audio-only or not a video)")
    stream = video_stream(container)
    stream.thread_type = "AUTO" if num_threads != 1 else "SLICE"
    if num_threads > 1:
        stream.thread_count = num_threads
    return container


def video_stream_index(path: str) -> int:
    """The container's index of the stream every reader here decodes (`video_stream`), for tools that pick a stream
    themselves (ffmpeg's `-map 0:v:0` is the first video stream, a cover image or thumbnail track in some files)."""
    container = open_av(path)
    try:
        return int(video_stream(container).index)
    finally:
        container.close()


def packet_seek_points(path: str) -> tuple[list[int], int]:
    """Presentation indices of the packets the container flags as keyframes, and the packet count (no decoding)."""
    container = open_av(path)
    try:
        stamps, keys = [], []
        for packet in container.demux(video_stream(container)):
            if packet.size == 0:
                continue
            stamp = packet.pts if packet.pts is not None else packet.dts
            stamps.append(stamp if stamp is not None else len(stamps))
            keys.append(bool(packet.is_keyframe))
    finally:
        container.close()
    order = np.argsort(np.asarray(stamps), kind="stable").tolist()
    rank = {pos: r for r, pos in enumerate(order)}
    return sorted(rank[pos] for pos, key in enumerate(keys) if key), len(stamps)


def index_seek_points(path: str) -> list[int]:
    """Frames the container's seek index flags as keyframes (an mp4's stss), where demuxers seek to.

    Packet flags can differ from the index (FFmpeg's mov demuxer flags packets from the bitstream in newer
    versions), so verify takes both. decord exposes the index; [] where it cannot open the file.
    """
    try:
        return [int(k) for k in _DecordReader(path).seek_points()]
    except VideoReadError:
        return []


def quarter_turns(frame: Any) -> int:
    """Counter-clockwise quarter turns (0-3) that show a decoded PyAV frame upright.

    Phone videos store the picture as the sensor saw it plus a display matrix ("rotate" 90/180/270). decord and
    torchcodec return frames turned as a player shows them, so every PyAV path here turns them the same way:
    whichever backend reads a file, the frames and their size agree. (Mirroring in a display matrix is ignored,
    as decord ignores it.)
    """
    return round((getattr(frame, "rotation", 0) or 0) / 90) % 4


def to_rgb(frame: Any) -> np.ndarray:
    """A decoded PyAV frame as RGB uint8 [H, W, 3], upright (see `quarter_turns`)."""
    img = frame.to_ndarray(format="rgb24")
    turns = quarter_turns(frame)
    return np.ascontiguousarray(np.rot90(img, turns)) if turns else img


def iter_decoded(container: Any, rgb: bool = True) -> Iterator[Any]:
    """Decode the main video stream from the start, in presentation order, skipping packets that fail to decode.

    This is the reference: it never seeks, so it does not depend on the container's seek points or frame count.
    Yields upright RGB uint8 [H, W, 3] arrays (`to_rgb`), or the raw `av.VideoFrame` with `rgb=False`.
    """
    stream = video_stream(container)
    decode_error = getattr(av, "FFmpegError", Exception)

    def _out(frame: Any) -> Any:
        return to_rgb(frame) if rgb else frame

    for packet in container.demux(stream):
        try:
            frames = packet.decode()  # the flush packet at the end (size 0) drains the decoder
        except decode_error:  # an undecodable packet: the frame it claims does not exist
            continue
        for frame in frames:
            yield _out(frame)


def count_decodable(path: str, num_threads: int = 1) -> int:
    """How many frames really decode (one sequential decode without colour conversion)."""
    container = open_av(path, num_threads)
    try:
        return sum(1 for _ in iter_decoded(container, rgb=False))
    finally:
        container.close()


class _PyAVReader:
    """Sequential decode from the start: slow, but exact whatever the container's seek points claim.

    Each pass opens the file afresh rather than seeking back: a seek to the stream's start time lands on the second
    keyframe of an MPEG-TS file with B-frames (its first frame is presented after its start time), and every index
    read after it was one group late.
    """

    def __init__(self, path: str, num_threads: int = 1, **_: Any):
        self.path, self._threads = path, num_threads
        self._container = open_av(path, num_threads)
        stream = video_stream(self._container)
        claimed = int(stream.frames or 0)
        if claimed <= 0:  # webm/mkv do not store a count: count packets (no decoding)
            claimed = sum(1 for p in self._container.demux(stream) if p.size > 0)
        self.num_frames = claimed
        self._fps = float(stream.average_rate or stream.guessed_rate or 0)

    def _from_start(self) -> Any:
        """The container opened again at its first packet (see the class docstring for why not a seek)."""
        self._container.close()
        self._container = open_av(self.path, self._threads)
        return self._container

    @property
    def info(self) -> VideoInfo:  # the upright size needs the display rotation, which comes with a decoded frame
        height = width = 0
        for frame in iter_decoded(self._from_start(), rgb=False):
            height, width = (frame.width, frame.height) if quarter_turns(frame) % 2 else (frame.height, frame.width)
            break
        return VideoInfo(self.num_frames, self._fps, int(height), int(width))

    def seek_points(self) -> list[int]:
        return packet_seek_points(self.path)[0]

    def get(self, indices: list[int]) -> np.ndarray:
        wanted, last = set(indices), max(indices)
        out: dict[int, np.ndarray] = {}
        decoded = 0
        for i, frame in enumerate(iter_decoded(self._from_start())):
            decoded = i + 1
            if i in wanted:
                out[i] = frame
            if i >= last:
                break
        if len(out) < len(wanted):
            raise ShortVideoError(self.path, self.num_frames, decoded)
        return np.stack([out[i] for i in indices])

    def close(self) -> None:
        self._container.close()


_READERS: dict[str, type] = {"decord": _DecordReader, "torchcodec": _TorchCodecReader, "pyav": _PyAVReader}


def register_backend(name: str, reader_cls: type) -> None:
    """Add a reader class (`__init__(path, num_threads, **opts)`, `.num_frames`, `.info`, `.get(indices)`, `.close()`).

    Used by tests for a reader that sleeps past the watchdog's limit; real decoding stays in this module.
    """
    _READERS[name] = reader_cls


def backend_names() -> list[str]:
    """The decoding backends `data.backend` may name (the built-in ones and any registered)."""
    return list(_READERS)


def open_reader(path: str, backend: str = "decord", num_threads: int = 1, **kwargs: Any) -> Any:
    """Open `path` with one backend; raises VideoReadError naming the file and the reason.

    kwargs: `seek_mode` ("exact" | "approximate") and `device` ("cpu" | "cuda" | "cuda:N") for torchcodec.
    """
    if backend not in _READERS:
        raise ValueError(f"unknown decoding backend '{backend}'; choose one of {', '.join(_READERS)}")
    return open_with(_READERS[backend], path, num_threads, **kwargs)


def open_with(reader_cls: type, path: str, num_threads: int = 1, **kwargs: Any) -> Any:
    """`open_reader` with the reader class itself (the watchdog's forked child may not know a backend registered
    after the fork, but the class travels to it)."""
    if not os.path.isfile(path):
        raise VideoReadError(path, "file not found")
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "empty file (0 bytes)")
    try:
        return reader_cls(path, num_threads=num_threads, **kwargs)
    except BackendUnavailable:
        raise
    except VideoReadError:
        if _without_video(path):  # decord and torchcodec say so in words of their internals
            raise VideoReadError(path, "no video stream (audio-only or not a video)") from None
        raise


def _without_video(path: str) -> bool:
    """Whether FFmpeg opens the file and finds no video stream in it (False when it cannot tell)."""
    try:
        with av.open(path) as container:
            return not container.streams.video
    except Exception:  # noqa: BLE001 - not even a container: another error says why
        return False


def probe(path: str, backend: str = "decord", **kwargs: Any) -> VideoInfo:
    reader = open_reader(path, backend, **kwargs)
    try:
        return reader.info
    finally:
        reader.close()


# Frame counts found at read time to be lower than the container claims (per process; reported, and used to bound
# every later read of the same file).
_DISCOVERED: dict[str, tuple[int, int]] = {}


def discovered_frame_counts() -> dict[str, tuple[int, int]]:
    """{path: (claimed, decodable)} for files this process found to hold fewer frames than they claim."""
    return dict(_DISCOVERED)


# Files the backend could not open or failed to decode, read with the fallback instead (per process): {path: why}.
# Later reads of the same file go straight to the fallback.
_FALLBACKS: dict[str, str] = {}


def fallback_reason(path: str) -> str:
    """Why this process reads `path` with the fallback backend ("" when it does not)."""
    return _FALLBACKS.get(path, "")


def read_frames(
    path: str,
    indices: Sequence[int] | Callable[[int], Sequence[int]],
    backend: str = "decord",
    num_threads: int = 1,
    fallback: str = "",
    num_frames: int | None = None,
    *,
    seek_mode: str = "exact",
    device: str = "cpu",
    timeout_s: float | None = None,
) -> torch.Tensor:
    """Decode `indices` of `path` as uint8 [T, H, W, C] in the order given (duplicates allowed).

    The sorted unique indices are read in one batched call. `num_frames`, when known to be the count that really
    decodes (verify report), bounds the request: an index at or past it is an error, never passed to the decoder
    (decord can spin forever past the real end of a file that over-reports its length). `indices` may be a function
    of the usable frame count returning the indices: the loader samples a clip from the count of the reader it
    already opened, so each clip costs one open. A read that fails inside the claimed count triggers one sequential
    count: if the file is shorter than it claims, the count is logged (a warning of the process that read it) and
    kept for this process (`discovered_frame_counts`), the sampling function is called again with the real count
    and the read retried (fixed indices past the real end raise `ShortVideoError` naming both counts); later reads
    in this process start from the real count.
    `fallback` names a backend tried when `backend` cannot open the file. `timeout_s` > 0 runs the read in a child
    process killed after that many seconds (`ReadTimeout`); None or 0 reads in this process with no overhead.
    A decoding child killed from outside (`DecoderKilled`: the out-of-memory killer, a signal meant for another
    process) says nothing of the file by itself, so the read is tried once more; killed again, the file is taken to
    be the cause (a decode that needs more memory than the machine has): it is read with `fallback` from then on,
    or, without one, fails as an unreadable file (a training set skips it for the run).
    """
    args = (path, indices, backend, num_threads, fallback, num_frames)
    kwargs = {"seek_mode": seek_mode, "device": device, "timeout_s": timeout_s}
    for _ in range(2):
        try:
            return _read_frames_once(*args, **kwargs)
        except DecoderKilled as err:
            killed = err
    used = fallback if fallback and path in _FALLBACKS else backend
    why = f"its {used} decoder was killed twice in a row ({killed.reason})"
    why += ": decoding it may take more memory than the machine has free"
    if not fallback or used == fallback or not os.path.isfile(path):
        raise VideoReadError(path, why) from None
    _FALLBACKS[path] = f"read with {fallback}: {why}"
    try:
        return _read_frames_once(*args, **kwargs)
    except DecoderKilled as err:
        raise VideoReadError(path, f"{why}; {fallback}'s too ({err.reason})") from None


def _read_frames_once(
    path: str,
    indices: Sequence[int] | Callable[[int], Sequence[int]],
    backend: str,
    num_threads: int,
    fallback: str,
    num_frames: int | None,
    *,
    seek_mode: str,
    device: str,
    timeout_s: float | None,
) -> torch.Tensor:
    """One try of `read_frames`: a killed decoding child raises `DecoderKilled`."""
    if not callable(indices) and len(indices) == 0:
        raise ValueError("read_frames needs at least one frame index")
    opts: dict[str, Any] = {"seek_mode": seek_mode, "device": device} if backend == "torchcodec" else {}
    deadline = watchdog.Deadline(timeout_s) if timeout_s else None

    def _open(name: str, name_opts: dict[str, Any]) -> Any:
        if deadline is not None:
            return watchdog.GuardedReader(path, name, num_threads, name_opts, deadline)
        return open_reader(path, name, num_threads, **name_opts)

    try:
        if fallback and fallback != backend and path in _FALLBACKS:  # the backend failed to open it before
            reader, used = _open(fallback, {}), fallback
        else:
            reader, used = _open(backend, opts), backend
    except (BackendUnavailable, ReadTimeout, DecoderKilled):  # not the file's doing: no fallback for it
        raise
    except VideoReadError as err:
        if not fallback or fallback == backend or not os.path.isfile(path) or os.path.getsize(path) == 0:
            raise  # no other backend opens a file that is not there
        try:
            reader, used = _open(fallback, {}), fallback
        except (BackendUnavailable, ReadTimeout, DecoderKilled):
            raise
        except VideoReadError as second:
            raise VideoReadError(
                path,
                f"neither {backend} nor {fallback} can open it ({backend}: {err.reason}; {fallback}: {second.reason}): "
                "it is probably truncated or not a video; download it again or drop it from the list "
                "(`tools/prepare_kinetics.py verify` finds every such file)",
            ) from None
        _FALLBACKS[path] = f"read with {fallback}: {err.reason}"
    try:
        limit = reader.num_frames if num_frames is None else min(num_frames, reader.num_frames or num_frames)
        real_count = _DISCOVERED[path][1] if path in _DISCOVERED else limit  # found short by an earlier read here
        if min(limit, real_count) <= 0:
            raise VideoReadError(path, "no decodable frames")
        # a sampling function samples in the count every process sees, then again in the real count only if its
        # indices pass it, as a process that finds the file short by this read does: the same clip either way
        chosen, uniq = _choose(path, indices, limit if callable(indices) else min(limit, real_count))
        if uniq[-1] >= real_count:
            chosen, uniq = _choose(path, indices, real_count)
        try:
            frames = reader.get(uniq)
        except (ReadTimeout, DecoderKilled):
            raise
        except Exception as err:
            known = num_frames is not None or path in _DISCOVERED  # the limit already is the real count
            real = err.decodable if isinstance(err, ShortVideoError) else None if known else _recount(reader, path)
            retry_with: Any = None
            if real is not None and 0 < real < limit:
                _DISCOVERED[path] = (reader.num_frames, real)
                log.warning(
                    "%s: container claims %d frames but only %d decode; reads are bounded by %d from now on "
                    "(run `tools/prepare_kinetics.py verify` to find such files up front)",
                    *(path, reader.num_frames, real, real),
                )
                if not callable(indices) and uniq[-1] >= real:  # fixed indices past the end: this read fails
                    raise ShortVideoError(path, reader.num_frames, real) from None
                chosen, uniq = _choose(path, indices, real)  # a sampling function re-samples inside the real count
                retry_with = reader
            frames = _read_again(path, uniq, retry_with, fallback if fallback != used else "", _open, used, err)
    finally:
        reader.close()
    if frames.shape[0] != len(uniq):
        raise VideoReadError(path, f"asked for {len(uniq)} frames, decoder returned {frames.shape[0]}")
    out = torch.from_numpy(np.ascontiguousarray(frames))
    if len(chosen) == len(uniq) and all(int(i) == u for i, u in zip(chosen, uniq, strict=True)):
        return out  # already sorted and unique: no gather copy (about 3 ms for an 8x256x340 clip)
    position = {idx: k for k, idx in enumerate(uniq)}
    return out[torch.as_tensor([position[int(i)] for i in chosen])]


def _choose(
    path: str, indices: Sequence[int] | Callable[[int], Sequence[int]], limit: int
) -> tuple[Sequence[int], list[int]]:
    """The indices asked for (calling the sampling function once) and their sorted unique set, checked against limit."""
    chosen = indices(limit) if callable(indices) else indices
    if len(chosen) == 0:
        raise ValueError("read_frames: the index function returned no frame index")
    odd = [i for i in chosen if isinstance(i, bool) or int(i) != i]
    if odd:  # int() would truncate 1.5 to frame 1 without a word
        raise ValueError(f"read_frames: frame indices must be integers, got {odd[:3]}")
    uniq = sorted({int(i) for i in chosen})
    if uniq[0] < 0 or uniq[-1] >= limit:
        raise VideoReadError(path, f"frame index {uniq[-1] if uniq[-1] >= limit else uniq[0]} outside 0..{limit - 1}")
    return chosen, uniq


def _read_again(
    path: str, uniq: list[int], reader: Any, fallback: str, opener: Callable, used: str, first: BaseException
) -> np.ndarray:
    """After a failed read: the same reader (indices re-chosen inside the real count), else the fallback backend
    (decord fails now and then on the last real frames of a file with an undecodable tail; PyAV does not)."""
    if reader is not None:
        try:
            return reader.get(uniq)
        except (ReadTimeout, DecoderKilled):
            raise
        except Exception as err:
            first = err
    if fallback:
        other = opener(fallback, {})
        try:
            frames = other.get(uniq)
        finally:
            other.close()
        _FALLBACKS[path] = f"read with {fallback}: {used} failed to decode frames {uniq[0]}..{uniq[-1]}: " + (
            first.reason if isinstance(first, VideoReadError) else _first_line(first)
        )
        return frames
    if isinstance(first, VideoReadError):
        raise first
    raise VideoReadError(path, f"{used} failed to decode frames {uniq[0]}..{uniq[-1]}: {_first_line(first)}") from None


def _recount(reader: Any, path: str) -> int | None:
    """The real frame count after a failed read (one sequential decode, only on failure)."""
    try:
        return reader.count_decodable() if isinstance(reader, watchdog.GuardedReader) else count_decodable(path)
    except (ReadTimeout, DecoderKilled):
        raise
    except VideoReadError:
        return None
