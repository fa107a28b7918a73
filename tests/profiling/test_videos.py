import os

from aim_video.data import decode
from aim_video.profiling.videos import scene_video


def test_scene_detail_scales_with_the_picture(tmp_path):
    small = scene_video(str(tmp_path / "small.mp4"), 170, 128, seconds=2)
    large = scene_video(str(tmp_path / "large.mp4"), 680, 512, seconds=2)
    assert decode.probe(small) == decode.VideoInfo(50, 25.0, 128, 170)
    assert decode.probe(large) == decode.VideoInfo(50, 25.0, 512, 680)
    # the same scene with 16x the pixels: far fewer bytes per pixel, as with real footage (a texture fixed in
    # pixels would cost about 16x the bytes)
    assert os.path.getsize(large) < 6 * os.path.getsize(small)
    mtime = os.path.getmtime(small)
    assert scene_video(small, 170, 128, seconds=2) == small and os.path.getmtime(small) == mtime  # kept, not redone


def test_sensor_noise_makes_the_scene_costlier(tmp_path):
    mild = scene_video(str(tmp_path / "mild.mp4"), 170, 128, seconds=2)
    noisy = scene_video(str(tmp_path / "noisy.mp4"), 170, 128, seconds=2, noise=8)
    # noise is what P-frames cannot predict: it makes videos as costly to decode as the (bench --noise 12)
    assert os.path.getsize(noisy) > 1.5 * os.path.getsize(mild)
