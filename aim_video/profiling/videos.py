"""Generated videos for the decoding and loader benchmarks: one scene, filmed at any resolution.

Real datasets hold the same kind of footage at many sizes, and a short-side-256 copy of a 720p video is that video
filmed with fewer pixels: its detail shrinks with the picture, and it takes several times fewer bytes. The scene here
is defined in units of the frame height (a texture with detail at three scales, a camera that pans, a block that
crosses the frame, mild sensor noise), so the 340x256 and 1280x720 videos show the same content, and a 720p video
shrunk to 256 resembles the 340x256 one. (A texture fixed in pixels puts 3 px detail into every resolution: shrunk
from 720p to 256 it turns into noise, and the copy costs more bytes than the 720p original.)
"""

from __future__ import annotations

import os

import numpy as np

from aim_video.data import encode


def scene_video(
    path: str,
    width: int,
    height: int,
    seconds: float = 10.0,
    fps: float = 25.0,
    gop: int | None = None,
    seed: int = 0,
    noise: float = 3.0,
) -> str:
    """Write the benchmark scene to `path` as h264 (x264 defaults; `gop` frames between keyframes if given).

    `noise` is the std of the sensor noise in uint8 levels (the bench's `--noise`): 3 is mild; 12 makes videos like
    the ones issue 3 was measured on (the authors'-style pipeline loads 7.1 clips/s from them at 340x256, the
    issue's 7.5; a keyframe every 16 adds 17% to the bytes, the issue's 9%).

    Nothing is written when `path` exists. Returns `path`.
    """
    if os.path.exists(path):
        return path
    import cv2

    rng = np.random.default_rng(seed)
    n = int(seconds * fps)
    pan = height / 256  # the camera moves 1 (down) and 2 (right) rows of a 256-row frame per frame
    big_h, big_w = int(height + n * pan) + 2, int(width + 2 * n * pan) + 2

    def texture(cells_per_height: float) -> np.ndarray:
        cell = height / cells_per_height
        rows, cols = int(big_h / cell) + 3, int(big_w / cell) + 3
        coarse = rng.integers(0, 256, (rows, cols, 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (int(cols * cell), int(rows * cell)), interpolation=cv2.INTER_CUBIC)
        return smooth[:big_h, :big_w].astype(np.float32)

    scene = 0.5 * texture(8) + 0.3 * texture(32) + 0.2 * texture(85)
    block_h, block_w = height // 5, width // 5
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        y, x = round(i * pan), round(2 * i * pan)
        frame = scene[y : y + height, x : x + width].copy()
        bx = int(7 * i * pan) % max(1, width - block_w)
        frame[height // 3 : height // 3 + block_h, bx : bx + block_w] = (200, 60, 60)
        frame += rng.normal(0, noise, frame.shape)
        frames[i] = np.clip(frame, 0, 255)
    encode.write_video(path, frames, fps=fps, gop=gop)
    return path
