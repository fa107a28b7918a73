import json
import os

import numpy as np
import pytest
import torch

from aim_video.data import decode, encode
from aim_video.data.annotations import Annotations, VideoRecord, parse_list_file
from aim_video.data.prepare import (
    SETTINGS_FILE,
    EncodeResult,
    build_lists,
    check_decodes,
    constant_rate_option,
    ffmpeg_binary,
    finish_out_root,
    output_path,
    reencode_all,
    reencode_command,
    reencode_one,
    write_outputs_list,
)
from tests.data.conftest import decoded_frame_index, frame_code_video, make_video

pytestmark = pytest.mark.skipif(not __import__("shutil").which("ffmpeg"), reason="needs ffmpeg: apt-get install ffmpeg")


def keyframe_positions(path: str) -> list[int]:
    import subprocess

    cmd = ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "frame=key_frame", "-of", "csv=p=0"]
    out = subprocess.run([*cmd, path], capture_output=True, text=True, check=True).stdout.split()
    return [i for i, k in enumerate(out) if k.strip(",") == "1"]


def test_reencode_short_side_keyframes_and_frames(tmp_path):
    src = str(tmp_path / "src.mp4")
    encode.write_video(src, frame_code_video(40, 96, 128), fps=25)  # encoder's default keyframe interval
    dst = str(tmp_path / "out" / "dst.mp4")
    res = reencode_one(src, dst, short_side=64, keyint=8)
    assert res.status == "done", res.reason
    info = decode.probe(dst)
    assert (info.height, info.width, info.num_frames) == (64, 86, 40)  # 128 * 64 / 96 = 85.3 -> the nearest even width
    assert keyframe_positions(dst) == [0, 8, 16, 24, 32]
    a = decode.read_frames(src, [0, 13, 39], backend="pyav").float().mean((1, 2, 3))
    b = decode.read_frames(dst, [0, 13, 39], backend="pyav").float().mean((1, 2, 3))
    assert (a - b).abs().max() < 3  # same frames, resized
    assert reencode_one(src, dst, short_side=64, keyint=8).status == "skipped"
    assert not [f for f in os.listdir(tmp_path / "out") if ".tmp" in f]


def test_the_video_behind_a_cover_image_is_re_encoded_not_the_cover(tmp_path):
    """`-map 0:v:0` took the first video stream: a one-frame cover became the output, which decoded (as itself),
    was called done and trained as a still image; the decoders read FFmpeg's best stream, and so does the copy."""
    from tests.data.videos import with_cover

    src = with_cover(make_video(str(tmp_path / "plain.mp4"), 30), str(tmp_path / "covered.mkv"))
    res = reencode_one(src, str(tmp_path / "out.mp4"), short_side=64, keyint=8)
    assert res.status == "done", res.reason
    assert decode.probe(res.dst, "pyav").num_frames == decode.probe(src, "pyav").num_frames == 30


def x264_settings(path: str) -> str:
    """The options string x264 writes into the stream (an SEI message): what the encoder really used."""
    data = open(path, "rb").read()
    start = data.index(b"x264 - core")
    return data[start : data.index(b"\0", start)].decode("ascii", "replace")


def test_reencode_tunes_for_decoding_speed_unless_told_not_to(tmp_path):
    src = str(tmp_path / "src.mp4")
    encode.write_video(src, frame_code_video(24, 96, 128), fps=25)
    fast = reencode_one(src, str(tmp_path / "fast.mp4"), short_side=64, keyint=8)
    plain = reencode_one(src, str(tmp_path / "plain.mp4"), short_side=64, keyint=8, tune="none")
    assert fast.status == plain.status == "done", (fast.reason, plain.reason)
    fast_opts, plain_opts = x264_settings(fast.dst), x264_settings(plain.dst)
    assert " cabac=0 " in fast_opts and " deblock=0:" in fast_opts  # CAVLC, no deblocking filter
    assert " cabac=1 " in plain_opts and " deblock=1:" in plain_opts
    a = decode.read_frames(fast.dst, [0, 9, 23], backend="decord").float().mean((1, 2, 3))
    b = decode.read_frames(plain.dst, [0, 9, 23], backend="decord").float().mean((1, 2, 3))
    assert (a - b).abs().max() < 1  # the same frames


def picture_types(path: str) -> set[str]:
    import av
    from av.video.frame import PictureType

    with av.open(path) as container:
        return {PictureType(f.pict_type).name for f in container.decode(video=0)}


def test_reencode_writes_no_b_frames_unless_told_to(tmp_path):
    src = str(tmp_path / "src.mp4")
    encode.write_video(src, frame_code_video(32, 96, 128), fps=25)
    plain = reencode_one(src, str(tmp_path / "plain.mp4"), short_side=64, keyint=16)
    with_b = reencode_one(src, str(tmp_path / "b.mp4"), short_side=64, keyint=16, bframes=None)
    assert plain.status == with_b.status == "done", (plain.reason, with_b.reason)
    assert " bframes=0 " in x264_settings(plain.dst)
    assert " bframes=3 " in x264_settings(with_b.dst)  # x264's default
    assert "B" in picture_types(with_b.dst)  # the setting took: B-frames are in the stream
    assert picture_types(plain.dst) == {"I", "P"}
    wanted = [0, 9, 23, 31]
    for path in (plain.dst, with_b.dst):  # random access returns the frames asked for, either way
        frames = decode.read_frames(path, wanted, backend="decord").numpy()
        assert [decoded_frame_index(f, 32) for f in frames] == wanted
    with pytest.raises(ValueError, match="bframes must be >= 0"):
        reencode_one(src, str(tmp_path / "bad.mp4"), bframes=-2)


def test_portrait_and_small_videos_are_not_upscaled(tmp_path):
    tall = str(tmp_path / "tall.mp4")
    encode.write_video(tall, np.zeros((4, 128, 64, 3), np.uint8))
    res = reencode_one(tall, str(tmp_path / "tall_out.mp4"), short_side=32)
    assert res.status == "done" and decode.probe(res.dst).width == 32 and decode.probe(res.dst).height == 64
    small = make_video(str(tmp_path / "small.mp4"), 8)  # 48x64, below the short side asked
    res = reencode_one(small, str(tmp_path / "small_out.mp4"), short_side=256)
    assert res.status == "done" and (decode.probe(res.dst).height, decode.probe(res.dst).width) == (48, 64)


def test_a_phone_video_is_re_encoded_upright(tmp_path):
    """ffmpeg turns the picture by the display matrix (autorotate) before scaling: the copy shows what the
    original showed, at the short side of the turned picture, and needs no matrix."""
    src = str(tmp_path / "phone.mp4")
    encode.write_video(src, frame_code_video(16, 128, 192), fps=25, rotation=90)  # shown 192 high, 128 wide
    res = reencode_one(src, str(tmp_path / "out.mp4"), short_side=96, keyint=8)  # (decord: >= 64 px wide)
    assert res.status == "done", res.reason
    assert decode.probe(res.dst) == decode.VideoInfo(16, 25.0, 144, 96)
    shown = decode.read_frames(src, [0, 9], backend="decord").permute(0, 3, 1, 2).float()
    shown = torch.nn.functional.interpolate(shown, size=(144, 96), mode="area")
    copy = decode.read_frames(res.dst, [0, 9], backend="decord").permute(0, 3, 1, 2).float()
    # the same picture, shrunk (about 6 on this pattern of sharp wraps); upside down or mirrored: 40-80
    assert (shown - copy).abs().mean() < 10
    assert (shown.flip(-1, -2) - copy).abs().mean() > 30 and (shown.flip(-1) - copy).abs().mean() > 30


def test_failures_are_reported_not_raised(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    good = make_video(str(tmp_path / "good.mp4"), 8)
    pairs = [(str(bad), str(tmp_path / "o" / "bad.mp4")), (good, str(tmp_path / "o" / "good.mp4")),
             (str(tmp_path / "gone.mp4"), str(tmp_path / "o" / "gone.mp4"))]  # fmt: skip
    results = reencode_all(pairs, jobs=2, progress=False, short_side=32)
    assert [r.status for r in results] == ["failed", "done", "failed"]
    assert "PyAV cannot open it" in results[0].reason and results[2].reason == "source file not found"
    assert not os.path.exists(tmp_path / "o" / "bad.mp4")
    assert check_decodes(str(bad)) != "" and check_decodes(results[1].dst) == ""


def test_output_path_mirrors_the_tree():
    assert output_path("/d/k400/abseiling/x.webm", "/d/k400", "/o") == "/o/abseiling/x.mp4"
    with pytest.raises(ValueError, match="not inside the source root"):
        output_path("/elsewhere/x.mp4", "/d/k400", "/o")


def test_build_lists_from_kinetics_csvs(tmp_path):
    root = tmp_path / "videos"
    clips = (("abseiling", "a_000001_000011"), ("zumba", "b_000002_000012"), ("zumba", "c_000003_000013"),
             ("air drumming", "d_000004_000014"))  # fmt: skip  # folders named by the label, space and all
    for cls, name in clips:
        os.makedirs(root / cls, exist_ok=True)
        (root / cls / f"{name}.mp4").write_bytes(b"x")
    (tmp_path / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nzumba,b,2,12,train\nabseiling,a,1,11,train\n"
        "zumba,missing,5,15,train\nair drumming,d,4,14,train\n"
    )
    (tmp_path / "val.csv").write_text("label,youtube_id,time_start,time_end,split\nzumba,c,3,13,val\n")
    out = build_lists({"val": str(tmp_path / "val.csv"), "train": str(tmp_path / "train.csv")}, str(root),
                      str(tmp_path / "lists"))  # fmt: skip
    assert out["train"][1:] == (3, 1) and out["val"][1:] == (1, 0)
    assert open(out["train"][0]).read() == (
        "zumba/b_000002_000012.mp4 2\nabseiling/a_000001_000011.mp4 0\nair drumming/d_000004_000014.mp4 1\n"
    )
    assert open(out["val"][0]).read() == "zumba/c_000003_000013.mp4 2\n"
    assert open(out["classes"][0]).read() == "abseiling\nair drumming\nzumba\n"
    records = parse_list_file(out["train"][0], str(root))  # the list it wrote reads back, the spaced path too
    assert [(r.label, os.path.exists(r.path)) for r in records] == [(2, True), (0, True), (1, True)]


def test_encoder_settings_fill_the_defaults_and_name_an_unknown_option():
    from aim_video.data.prepare import encoder_settings

    settings = encoder_settings(keyint=8, tune="none")
    assert settings["keyint"] == 8 and settings["tune"] == "" and settings["bframes"] == 0
    assert settings["short_side"] == 256 and "src" not in settings and "threads" not in settings
    assert encoder_settings(tune="fastdecode") == encoder_settings()  # the same encoding, however it was spelled
    with pytest.raises(ValueError, match=r"unknown re-encoding option\(s\) \['key_int'\]"):
        encoder_settings(key_int=8)


def test_a_pair_listed_twice_is_encoded_once_and_two_sources_of_one_output_are_named(tmp_path):
    """Threads of one process shared a temporary name, so a video listed twice crashed the run with --jobs 2; and
    `a/x.mp4` next to `a/x.webm` (one output) was reported as 'already done'."""
    src = make_video(str(tmp_path / "a" / "x.mp4"), 8)
    other = make_video(str(tmp_path / "a" / "x.mkv"), 8)
    dst = str(tmp_path / "o" / "a" / "x.mp4")
    results = reencode_all([(src, dst), (src, dst), (other, dst)], jobs=2, progress=False, short_side=32)
    assert [r.status for r in results] == ["done", "done", "failed"]
    assert results[2].reason == f"{src} has the same output {dst}: rename one of the two sources"
    assert os.listdir(tmp_path / "o" / "a") == ["x.mp4"]  # no temporary left behind


def test_a_killed_runs_temporary_copy_is_removed_when_its_video_is_encoded_again(tmp_path):
    """SIGKILL left `dst.<pid>-<thread>.partial` files that no later run removed (a video's size of disk each)."""
    import subprocess

    src = make_video(str(tmp_path / "x.mp4"), 8)
    dst = str(tmp_path / "o" / "x.mp4")
    os.makedirs(tmp_path / "o")
    gone = subprocess.Popen(["true"])
    gone.wait()  # a process id that no longer runs
    dead = f"{dst}.{gone.pid}-140000.partial"
    alive = f"{dst}.{os.getppid()}-140001.partial"  # a running process's: maybe a run encoding it right now
    for path in (dead, alive):
        open(path, "wb").write(b"x" * 100)
    assert reencode_all([(src, dst)], progress=False, short_side=32)[0].status == "done"
    assert sorted(os.listdir(tmp_path / "o")) == sorted(["x.mp4", os.path.basename(alive)])


def test_ctrl_c_stops_after_the_videos_being_encoded(tmp_path, monkeypatch):
    """The pool's exit ran every queued video before the KeyboardInterrupt came through: a Ctrl-C during a Kinetics
    re-encode went on for the whole list."""
    import time

    import aim_video.data.prepare as prepare

    started = []

    def encode(src, dst, **_):
        started.append(src)
        if len(started) == 2:
            raise KeyboardInterrupt
        time.sleep(0.05)
        return prepare.EncodeResult(src, dst, "done")

    monkeypatch.setattr(prepare, "reencode_one", encode)
    pairs = [(str(tmp_path / f"{i}.mp4"), str(tmp_path / "o" / f"{i}.mp4")) for i in range(40)]
    with pytest.raises(KeyboardInterrupt):
        reencode_all(pairs, jobs=2, progress=False)
    assert len(started) <= 4  # the two in flight and at most the next ones the threads had taken


def test_a_run_killed_before_any_output_neither_lists_its_temporary_nor_locks_the_settings(tmp_path):
    from aim_video.data.annotations import parse_class_folders
    from aim_video.data.prepare import claim_out_root, encoder_settings

    out = tmp_path / "o"
    claim_out_root(str(out), encoder_settings(keyint=8))
    os.makedirs(out / "cls")  # what ffmpeg finished after its parent was killed:
    os.replace(make_video(str(tmp_path / "x.mp4"), 8), out / "cls" / "x.mp4.1234-5678.partial")
    assert parse_class_folders(str(out))[0] == []  # not a video to train on
    claim_out_root(str(out), encoder_settings(keyint=16))  # no video holds the first settings: nothing to mix
    make_video(str(out / "cls" / "y.mp4"), 8)
    with pytest.raises(ValueError, match="keyint=16 \\(this run: 4\\)"):
        claim_out_root(str(out), encoder_settings(keyint=4))


def test_build_lists_writes_nothing_unless_every_split_reads(tmp_path):
    root = tmp_path / "videos"
    (root / "zumba").mkdir(parents=True)
    (root / "zumba" / "b_000002_000012.mp4").write_bytes(b"x")
    (tmp_path / "train.csv").write_text("label,youtube_id,time_start,time_end,split\nzumba,b,2,12,train\n")
    (tmp_path / "test.csv").write_text("youtube_id,time_start,time_end,split\ngone,1,11,test\n")
    sources = {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")}
    with pytest.raises(Exception, match="test.csv: no videos left"):
        build_lists(sources, str(root), str(tmp_path / "lists"))
    assert not os.path.exists(tmp_path / "lists")
    # a test folder elsewhere: its own root, the classes from the class map, no train source needed
    (tmp_path / "test_videos").mkdir()
    (tmp_path / "test_videos" / "gone_000001_000011.mp4").write_bytes(b"x")
    (tmp_path / "classes.txt").write_text("zumba\n")
    out = build_lists({"test": str(tmp_path / "test.csv")}, str(tmp_path / "test_videos"), str(tmp_path / "lists"),
                      class_map=str(tmp_path / "classes.txt"))  # fmt: skip
    assert open(out["test"][0]).read() == "gone_000001_000011.mp4 -1\n" and sorted(os.listdir(tmp_path / "lists")) == [
        "classes.txt", "test.txt"]  # fmt: skip
    with pytest.raises(ValueError, match="without a train source the classes are unknown"):
        build_lists({"test": str(tmp_path / "test.csv")}, str(tmp_path / "test_videos"), str(tmp_path / "l2"))


def test_constant_frame_rate_is_asked_for_in_the_spelling_the_ffmpeg_knows(tmp_path):
    """FFmpeg 5.1+ says -fps_mode; 4.x (Ubuntu 22.04) only -vsync, and refuses every encode given -fps_mode."""
    assert constant_rate_option(ffmpeg_binary()) == ("-fps_mode", "cfr")  # this machine's FFmpeg 5.1
    old = tmp_path / "ffmpeg44"
    old.write_text("#!/bin/sh\necho '-vsync            video sync method'\necho '-r rate           set frame rate'\n")
    old.chmod(0o755)
    assert constant_rate_option(str(old)) == ("-vsync", "cfr")


def test_absolute_lists_under_a_relative_root_and_repeats_or_leaks_are_named(tmp_path, monkeypatch, capsys):
    """`lists --absolute --root raw` wrote `raw/zumba/...` (relative: data.root=raw then read raw/raw/...); a val CSV
    listing a clip twice, or a train clip, was written without a word and evaluation counted the repeat twice."""
    monkeypatch.chdir(tmp_path)
    for cls, name in (("zumba", "b_000002_000012"), ("abseiling", "a_000001_000011")):
        os.makedirs(tmp_path / "raw" / cls, exist_ok=True)
        (tmp_path / "raw" / cls / f"{name}.mp4").write_bytes(b"x")
    head = "label,youtube_id,time_start,time_end,split\n"
    (tmp_path / "train.csv").write_text(head + "zumba,b,2,12,train\nabseiling,a,1,11,train\n")
    (tmp_path / "val.csv").write_text(head + "zumba,b,2,12,val\nzumba,b,2,12,val\n")
    out = build_lists({"train": "train.csv", "val": "val.csv"}, "raw", "lists", relative=False)
    assert open(out["train"][0]).read().splitlines()[0] == f"{tmp_path}/raw/zumba/b_000002_000012.mp4 1"
    err = capsys.readouterr().err
    assert "val: 1 videos are listed more than once, e.g. " + str(tmp_path / "raw" / "zumba") in err
    assert "val: 1 videos are also in train, e.g. " + str(tmp_path / "raw" / "zumba") in err


def test_keyint_0_keeps_the_encoders_keyframe_placement():
    cmd = reencode_command("in.mp4", "out.mp4", keyint=0)
    assert "-g" not in cmd and "-sc_threshold" not in cmd and "+cgop" not in cmd
    cmd = reencode_command("in.mp4", "out.mp4", keyint=8)
    assert cmd[cmd.index("-g") + 1] == "8" and cmd[cmd.index("-keyint_min") + 1] == "8"


def test_the_outputs_list_leaves_out_the_videos_that_failed(tmp_path):
    out = str(tmp_path / "o")
    ann = Annotations([VideoRecord("/s/a.mp4", 0, (0,)), VideoRecord("/s/b.mp4", 1, (1,)),
                       VideoRecord("/s/c.mp4", 1, (1,))])  # fmt: skip
    results = [
        EncodeResult("/s/a.mp4", f"{out}/a.mp4", "done"),
        EncodeResult("/s/b.mp4", f"{out}/b.mp4", "failed", "x"),
        EncodeResult("/s/c.mp4", f"{out}/c.mp4", "skipped"),
    ]
    path = str(tmp_path / "new.txt")
    assert write_outputs_list(path, ann, results, out) == 2
    assert open(path).read() == "a.mp4 0\nc.mp4 1\n"


def test_an_output_written_in_the_overwrites_own_second_counts_as_new(tmp_path):
    """_older: a tie is this run's output (coarse file-system times), so the overwrite can finish."""
    video = tmp_path / "a.mp4"
    video.write_bytes(b"x")
    started = 1_700_000_000.0
    os.utime(video, (started, started))
    record = {"encoder": {}, "ffmpeg": "", "overwriting": True, "overwrite_started": started}
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(record))
    assert finish_out_root(str(tmp_path)) == 0
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["overwriting"] is False
    os.utime(video, (started - 1, started - 1))
    record["overwriting"] = True
    (tmp_path / SETTINGS_FILE).write_text(json.dumps(record))
    assert finish_out_root(str(tmp_path)) == 1


def test_the_train_split_is_not_warned_of_sharing_videos_with_itself(tmp_path, capsys):
    from aim_video.data.prepare import build_lists

    for cls, name in (("zumba", "b_000002_000012"), ("abseiling", "a_000001_000011")):
        os.makedirs(tmp_path / "raw" / cls, exist_ok=True)
        (tmp_path / "raw" / cls / f"{name}.mp4").write_bytes(b"x")
    head = "label,youtube_id,time_start,time_end,split\n"
    (tmp_path / "train.csv").write_text(head + "zumba,b,2,12,train\nabseiling,a,1,11,train\n")
    build_lists({"train": str(tmp_path / "train.csv")}, str(tmp_path / "raw"), str(tmp_path / "lists"))
    assert "warning" not in capsys.readouterr().err


def test_an_output_older_than_a_pending_overwrite_is_encoded_again(tmp_path):
    from aim_video.data.prepare import reencode_one
    from tests.data.conftest import make_video

    src = make_video(str(tmp_path / "src.mp4"), 8)
    dst = str(tmp_path / "o" / "dst.mp4")
    assert reencode_one(src, dst, short_side=32).status == "done"
    os.utime(dst, (1_000_000_000, 1_000_000_000))
    assert reencode_one(src, dst, short_side=32, stale_before=1_500_000_000.0).status == "done"
    assert os.path.getmtime(dst) > 1_500_000_000
    assert reencode_one(src, dst, short_side=32, stale_before=1_500_000_000.0).status == "skipped"
