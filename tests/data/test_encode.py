"""encode.py: the prepare tool's re-encode (true keyframes, rotation kept, the source only read) and write_video."""

from __future__ import annotations

import os

import numpy as np
import pytest

from aim_video.data import decode, encode
from tests.data.videos import false_keyframes, make_frames, make_h264, mean_abs_diff, sequential_frames


def test_transcode_gives_true_keyframes_every_keyint(tmp_path):
    src = false_keyframes(make_h264(str(tmp_path / "src.mp4")), str(tmp_path / "kf.mp4"))
    before = os.path.getmtime(src), open(src, "rb").read()
    dst = str(tmp_path / "out" / "fixed.mp4")
    assert encode.transcode(src, dst, keyint=16, short_side=64) == 300
    assert (os.path.getmtime(src), open(src, "rb").read()) == before  # the original is only read
    points, packets = decode.packet_seek_points(dst)
    assert packets == 300 and points == list(range(0, 300, 16))
    assert decode.probe(dst, "pyav") == decode.VideoInfo(300, 25.0, 64, 96)
    assert not [f for f in os.listdir(tmp_path / "out") if ".tmp" in f]
    settings = open(dst, "rb").read()
    assert b" cabac=0 " in settings and b" bframes=0 " in settings  # tuned for decoding speed, no B-frames


def test_write_video_rejects_wrong_arrays(tmp_path):
    with pytest.raises(ValueError, match=r"uint8 \[T, H, W, 3\]"):
        encode.write_video(str(tmp_path / "x.mp4"), np.zeros((2, 8, 8, 3), np.float32))


def test_transcode_keeps_the_display_rotation(tmp_path):
    src = str(tmp_path / "portrait.mp4")
    encode.write_video(src, make_frames(20), fps=25, rotation=90)
    dst = str(tmp_path / "fixed.mp4")
    assert encode.transcode(src, dst, keyint=8) == 20
    assert mean_abs_diff(sequential_frames(dst), sequential_frames(src)) < 3.0
    assert decode.probe(dst, "pyav") == decode.probe(src, "pyav") == decode.VideoInfo(20, 25.0, 96, 64)


def test_a_source_where_no_frame_decodes_is_named_as_such(tmp_path):
    """Nothing was encoded, so the temporary file never existed and the rename's FileNotFoundError hid the reason."""
    import av

    src = make_h264(str(tmp_path / "src.mp4"), n=10, gop=5)
    garbage = str(tmp_path / "garbage.mkv")
    with av.open(src) as inp, av.open(garbage, "w") as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for k, packet in enumerate(p for p in inp.demux(inp.streams.video[0]) if p.size > 0):
            noise = av.Packet(np.random.default_rng(k).integers(0, 256, 300, np.uint8).tobytes())
            noise.stream, noise.time_base, noise.pts, noise.dts = stream, packet.time_base, packet.pts, packet.dts
            out.mux(noise)
    dst = str(tmp_path / "out" / "fixed.mp4")
    with pytest.raises(decode.VideoReadError, match="no frame decodes; nothing to re-encode"):
        encode.transcode(garbage, dst)
    assert os.listdir(tmp_path / "out") == []
    with pytest.raises(ValueError, match="T >= 1"):
        encode.write_video(dst, np.zeros((0, 8, 8, 3), np.uint8))


def test_the_file_being_written_is_hidden_from_class_folder_trees(tmp_path, monkeypatch):
    """A run killed mid-write (repair's time limit) left `name.tmpPID.mp4`, which a class-folder tree listed."""
    seen = []
    real_open = encode.av.open

    def spy(path, *args, **kwargs):
        seen.append(os.path.basename(str(path)))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(encode.av, "open", spy)
    encode.write_video(str(tmp_path / "clip.mp4"), make_frames(4))
    assert seen == [f".clip.tmp{os.getpid()}.mp4"] and os.listdir(tmp_path) == ["clip.mp4"]


def test_transcode_to_a_short_side_that_gives_odd_sizes_rounds_them_down_to_even(tmp_path):
    """yuv420p needs even sizes: short side 45 of a 64x96 video is 45x67.5 -> 44x68."""
    src = str(tmp_path / "src.mp4")
    encode.write_video(src, make_frames(10, 64, 96), fps=25)
    dst = str(tmp_path / "dst.mp4")
    assert encode.transcode(src, dst, keyint=8, short_side=45) == 10
    info = decode.probe(dst, "pyav")
    assert (info.num_frames, info.height, info.width) == (10, 44, 68)
