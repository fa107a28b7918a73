"""Decoding floors per backend, the watchdog's overhead, and verify's cost, side by side in one run.

    python tools/bench_decode.py --clips 24 --out-dir /tmp/bench_decode

On generated 10 s, 25 fps h264 videos (`aim_video.profiling.videos.scene_video`: 340x256 and 1280x720 with the
encoder's default keyframe interval, and 340x256 with a keyframe every 16 frames), for dense 8x16 clips at seeded
random starts (the same clips for every backend): clips/s of `decode.read_frames` per backend (the decode floor the
loader is held to) with every ratio printed to decord's, the guarded read (`timeout_s`, decoding in the watchdog's
child) in its own rows beside the plain ones, and `verify.check_video` as a multiple of one sequential PyAV decode
of the same file (to RGB, and without colour conversion). Backends run round-robin, clip by clip, so load on a
shared machine hits all of them alike; medians are reported.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

# run from a checkout: the repo root on the path, tools/ off it (tools/profile.py would shadow the stdlib profile)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aim_video.data import decode, verify  # noqa: E402
from aim_video.profiling.videos import scene_video  # noqa: E402

VIDEOS = {"340x256": (256, 340, None), "1280x720": (720, 1280, None), "340x256_keyint16": (256, 340, 16)}


def dense_clips(num_frames: int, count: int, length: int = 8, stride: int = 16) -> list[list[int]]:
    rng = np.random.default_rng(1)
    span = (length - 1) * stride + 1
    return [list(range(s, s + span, stride)) for s in rng.integers(0, num_frames - span + 1, count).tolist()]


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def sequential_decode(path: str, rgb: bool = True) -> int:
    """One sequential PyAV decode of every frame, converted to RGB (what a reader returns) or not (decoding only)."""
    container = decode.open_av(path)
    try:
        return sum(1 for _ in decode.iter_decoded(container, rgb=rgb))
    finally:
        container.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--out-dir", default="/tmp/bench_decode")
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)
    variants = {"decord": ("decord", {}), "pyav": ("pyav", {}), "decord+timeout": ("decord", {"timeout_s": 60.0})}
    if not decode.torchcodec_unavailable():
        variants["torchcodec-exact"] = ("torchcodec", {"seek_mode": "exact"})
        variants["torchcodec-approx"] = ("torchcodec", {"seek_mode": "approximate"})
        variants["torchcodec-exact+timeout"] = ("torchcodec", {"seek_mode": "exact", "timeout_s": 60.0})
    print(f"dense 8x16 clips, {args.clips} per backend and video; clips/s (median per clip); ratio to decord")
    for name, (h, w, gop) in VIDEOS.items():
        path = scene_video(os.path.join(args.out_dir, f"scene_{name}.mp4"), w, h, gop=gop)
        clips = dense_clips(decode.probe(path, "pyav").num_frames, args.clips)
        for backend, kw in variants.values():  # warm-up: imports, first open
            decode.read_frames(path, clips[0], backend, **kw)
        times: dict[str, list[float]] = {v: [] for v in variants}
        for clip in clips:
            for label, (backend, kw) in variants.items():
                if label == "pyav" and h > 256:
                    continue  # sequential from the start: minutes at 720p, and only a fallback
                times[label].append(timed(decode.read_frames, path, clip, backend, **kw))
        base = 1.0 / statistics.median(times["decord"])
        cells = []
        for label, t in times.items():
            if t:
                rate = 1.0 / statistics.median(t)
                cells.append(f"{label} {rate:.1f} ({rate / base:.2f}x)")
        print(f"{name}: " + ", ".join(cells))
        seq = statistics.median(timed(sequential_decode, path) for _ in range(3))
        raw = statistics.median(timed(sequential_decode, path, False) for _ in range(3))
        for backend, mode in [("decord", "exact"), ("torchcodec", "exact")]:
            if backend == "torchcodec" and "torchcodec-exact" not in variants:
                continue
            ver = statistics.median(timed(verify.check_video, path, backend, mode) for _ in range(3))
            print(f"  verify {backend}: {ver:.2f} s = {ver / seq:.2f}x one sequential decode to RGB ({seq:.2f} s), "
                  f"{ver / raw:.2f}x one without colour conversion ({raw:.2f} s)")  # fmt: skip


if __name__ == "__main__":
    main()
