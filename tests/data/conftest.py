"""Tiny test videos, made at test time with encode.write_video (no outside files)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from aim_video.data import encode


def frame_code_video(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 [T, H, W, 3] whose frame i is flat grey level (8 * i) % 256 in a left band and ramps elsewhere.

    A frame's index is readable back from the band's mean: `decoded_frame_index`.
    """
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    ramp = (np.arange(width, dtype=np.int64)[None, :] * 5 + np.arange(height)[:, None] * 3) % 256
    for i in range(num_frames):
        frames[i, :, :, 0] = ramp
        frames[i, :, :, 1] = (ramp[::-1] + 7 * i) % 256
        frames[i, :, :, 2] = 128
        frames[i, :, : width // 4, :] = (8 * i) % 256
    return frames


def decoded_frame_index(frame_hwc: np.ndarray, num_frames: int) -> int:
    """Inverse of frame_code_video's band code (valid for num_frames <= 32)."""
    level = float(np.asarray(frame_hwc)[:, : frame_hwc.shape[1] // 4 - 2].mean())
    return int(round(level / 8)) % 32


def make_video(path: str, num_frames: int = 24, height: int = 48, width: int = 64, fps: float = 25.0) -> str:
    encode.write_video(path, frame_code_video(num_frames, height, width), fps=fps, gop=8)
    return path


@pytest.fixture(scope="session")
def video_dir(tmp_path_factory) -> str:
    """Two classes of three 24-frame 48x64 videos each: root/<class>/<name>.mp4."""
    root = str(tmp_path_factory.mktemp("videos"))
    for cls in ("archery", "bowling"):
        os.makedirs(os.path.join(root, cls))
        for k in range(3):
            make_video(os.path.join(root, cls, f"v{k}.mp4"), num_frames=20 + 2 * k)
    return root


def write_audio_only(path: str, seconds: float = 0.5) -> str:
    import av

    rate = 16000
    with av.open(path, "w") as container:
        stream = container.add_stream("aac", rate=rate)
        for k in range(int(seconds * rate / 1024)):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = rate, k * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_overclaiming(path: str, num_frames: int = 60) -> str:
    """An mp4 whose index (moov first, 'faststart') lists `num_frames` frames but whose data stops at 60%."""
    import av

    tmp = path + ".full.mp4"
    with av.open(tmp, "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for img in frame_code_video(num_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    data = open(tmp, "rb").read()
    os.remove(tmp)
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * 0.6)])
    return path


def make_corrupt_corpus(folder: str) -> dict[str, str]:
    """name -> path of each broken kind (the 'missing' path does not exist); plus two good videos."""
    os.makedirs(folder, exist_ok=True)
    p = {
        name: os.path.join(folder, f"{name}.mp4")
        for name in (
            "empty",
            "truncated",
            "text",
            "missing",
            "one_frame",
            "audio_only",
            "overclaiming",
            "good_a",
            "good_b",
        )
    }
    open(p["empty"], "wb").close()
    make_video(p["good_a"], 24)
    make_video(p["good_b"], 30)
    data = open(p["good_a"], "rb").read()
    with open(p["truncated"], "wb") as f:
        f.write(data[: len(data) // 2])
    with open(p["text"], "w") as f:
        f.write("this is not a video\n" * 20)
    make_video(p["one_frame"], 1)
    write_audio_only(p["audio_only"])
    write_overclaiming(p["overclaiming"])
    return p


def installed_backends() -> list[str]:
    """Every decoding backend that loads here (torchcodec needs FFmpeg's shared libraries)."""
    names = ["decord", "pyav"]
    try:
        import torchcodec.decoders  # noqa: F401  (only to know whether its FFmpeg libraries load)

        names.append("torchcodec")
    except Exception:
        pass
    return names


# a Kinetics CSV's train rows: a label with spaces and parentheses, two clips of one class, the is_cc column
KINETICS = """label,youtube_id,time_start,time_end,split,is_cc
"passing American football (in game)",abc,14,24,train,0
abseiling,def,0,10,train,0
abseiling,ghi,5,15,train,0
zumba,jkl,100,110,train,1
"""


def touch(path: str) -> str:
    """An empty file at `path`, its folders made: annotation tests need names, not videos."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return path
