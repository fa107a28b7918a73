"""tools/bench_loader.py: the authors'-style pipeline (a) yields what training needs, and the tool runs end to end."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest

from aim_video.profiling.videos import scene_video
from tools.bench_loader import AuthorsStyle, Floor, Ours, cpu_seconds, main, measure_inline, plan_clips

pytestmark = pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg: apt-get install ffmpeg")


def test_the_three_pipelines_read_the_same_clip(tmp_path):
    path = scene_video(str(tmp_path / "v.mp4"), 170, 128, seconds=6)
    plan = plan_clips([path], "dense", 1)
    indices = plan[0][1]
    floor = Floor("decord")(path, indices)
    assert floor.shape == (len(set(indices)), 128, 170, 3)
    authors = AuthorsStyle("decord")(path, indices)
    assert authors.shape == (1, 3, 8, 224, 224) and authors.dtype == np.float32
    ours = Ours(plan, "decord").load(0)
    assert ours.shape == (1, 8, 3, 224, 224) and str(ours.dtype) == "torch.uint8"


def test_cli_prints_the_ratios_and_the_keyframe_sweep(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--sizes", "170x128", "--clips", "2", "--videos", "1", "--rounds", "1",
            "--backends", "decord,torchcodec", "--workers", "1", "--keyint-sweep", "8,0",
            "--sweep-tunes", "fastdecode,none", "--sweep-bframes", "0,-1"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert re.search(r"decord +170x128 +dense +prepared\(256,k16\)/raw +\d+\.\d\dx +k16/default-keyint at 256", out)
    assert re.search(r"decode-once-sample-2 / one clip per decode \(170x128, dense\): \d\.\d\dx", out)
    for enc in ("fastdecode-bf0", "fastdecode-bfdef", "none-bf0", "none-bfdef"):
        assert re.search(
            rf"decord +uniform +{enc} +8: [\d.]+ \([\d.]+x, [\d.]+ MiB, 32 keyframes\)  default: [\d.]+ \(1\.00x", out
        )  # 250 frames: a keyframe every 8 gives 32
    assert re.search(r"decord +dense +fastdecode-bf0/none-bfdef: 8: [\d.]+x  default: [\d.]+x", out)
    assert re.search(r"170x128@256k16 +uniform +torchcodec/decord \d+\.\d\dx", out)  # backends side by side


def test_ratios_are_paired_per_clip_and_the_clock_does_not_count_itself():
    """b/a was a ratio of two medians (median(c/a) / median(c/b)) while the output called it paired; the clock's
    process-table scan (~1 ms) fell inside every timed interval, pulling ratios toward 1."""
    now = [0.0]
    costs = {"a": [1.0, 1.0, 9.0], "b": [1.0, 3.0, 3.0], "c": [1.0, 1.0, 1.0]}  # seconds per clip k
    methods = {m: (lambda k, m=m: now.__setitem__(0, now[0] + costs[m][k])) for m in costs}
    r = measure_inline(methods, 3, 1, clock=lambda: now[0])
    assert r["b/a"] == 1.0  # paired: median(1/1, 1/3, 9/3); the old ratio of medians gave 0.33
    assert r["b/c"] == pytest.approx(1 / 3)
    t0 = cpu_seconds()
    spent = [cpu_seconds() for _ in range(1000)][-1] - t0
    assert spent < 0.05, spent  # ~1000 reads: microseconds each (a psutil scan was ~1 ms)
