import json
import os
import shutil

import av
import pytest

from aim_video.data import verify
from aim_video.data.annotations import write_lines
from tests.data.conftest import make_video
from tests.data.test_prepare import x264_settings
from tests.data.videos import make_h264

pytestmark = pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg: apt-get install ffmpeg")


def test_cli_lists_and_reencode(tmp_path, capsys):
    from tools.prepare_kinetics import main

    root = tmp_path / "videos"
    os.makedirs(root / "a")
    make_video(str(root / "a" / "v0.mp4"), 8)
    (root / "a" / "broken.mp4").write_text("nope")
    assert main(["lists", "--train", str(root), "--out-dir", str(tmp_path / "lists"), "--root", str(root)]) == 0
    assert open(tmp_path / "lists" / "train.txt").read() == "a/broken.mp4 0\na/v0.mp4 0\n"
    args = ["reencode", "--list", str(tmp_path / "lists" / "train.txt"), "--root", str(root), "--out-root",
            str(tmp_path / "out"), "--out-list", str(tmp_path / "lists" / "train_out.txt"), "--short-side", "32",
            "--jobs", "2"]  # fmt: skip
    assert main(args) == 1  # one failure
    text = capsys.readouterr().out
    assert "re-encoded 1, skipped 0 (already done), failed 1" in text and "broken.mp4: PyAV cannot open it" in text
    assert open(tmp_path / "lists" / "train_out.txt").read() == "a/v0.mp4 0\n"
    main(args)
    assert "re-encoded 0, skipped 1" in capsys.readouterr().out
    write_lines(str(tmp_path / "x.txt"), ["nothing.mp4 0"])
    assert main(["reencode", "--list", str(tmp_path / "x.txt"), "--out-root", str(tmp_path / "o")]) == 2


def test_cli_reencode_of_a_csv_with_several_splits_lists_one_split_and_missing_sources_fail(tmp_path, capsys):
    """--out-list of a CSV holding train and val rows listed both as one (a train list with val videos in it), and
    sources listed under 'failures:' ended with exit status 0."""
    from tools.prepare_kinetics import main

    root = tmp_path / "videos"
    for cls, name in (("abseiling", "a_000001_000011"), ("zumba", "b_000002_000012")):
        make_video(str(root / cls / f"{name}.mp4"), 8)
    csv = tmp_path / "k.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nabseiling,a,1,11,train\nzumba,b,2,12,val\n")
    args = ["reencode", "--list", str(csv), "--root", str(root), "--out-root", str(tmp_path / "out"), "--short-side",
            "32", "--jobs", "1", "--out-list", str(tmp_path / "train_32.txt")]  # fmt: skip
    assert main(args) == 2
    assert "holds the splits train, val: --out-list would list them all as one" in capsys.readouterr().err
    assert main([*args, "--split", "train"]) == 0
    assert open(tmp_path / "train_32.txt").read() == "abseiling/a_000001_000011.mp4 0\n"
    csv.write_text(csv.read_text() + "zumba,gone,3,13,train\n")
    assert main([*args, "--split", "train"]) == 1  # a source missing: listed, and a failure
    assert "gone_000003_000013.mp4: source file not found" in capsys.readouterr().out
    # `validate` (Kinetics' own name) and `val` are one split: a val CSV of both was refused as two
    csv.write_text("label,youtube_id,time_start,time_end,split\nabseiling,a,1,11,validate\nzumba,b,2,12,val\n")
    out_list = str(tmp_path / "val_32.txt")
    assert main([*args[:-1], out_list, "--class-map", str(tmp_path / "classes.txt")]) == 2  # no class map yet
    write_lines(str(tmp_path / "classes.txt"), ["abseiling", "zumba"])
    assert main([*args[:-1], out_list, "--class-map", str(tmp_path / "classes.txt")]) == 0
    assert open(out_list).read().splitlines() == ["abseiling/a_000001_000011.mp4 0", "zumba/b_000002_000012.mp4 1"]


def test_cli_refuses_settings_that_would_fail_every_video(tmp_path, capsys):
    """--fps 0 failed each video with "no video stream", --preset bogus with ffmpeg's error, --keyint 0 likewise;
    a negative --short-side kept the size and --crf 99 went to x264. argparse refuses them before any work."""
    from tools.prepare_kinetics import main

    args = ["reencode", "--list", str(tmp_path / "l.txt"), "--out-root", str(tmp_path / "o")]
    for flag, value, why in [("--fps", "0", "0 is not above 0"), ("--keyint", "0", "0 is below 1"),
                             ("--short-side", "-5", "-5 is below 0"), ("--crf", "99", "outside x264's 0-51"),
                             ("--jobs", "0", "0 is below 1"), ("--preset", "bogus", "invalid choice: 'bogus'"),
                             ("--keyint", "x", "invalid integer value: 'x'")]:  # fmt: skip
        with pytest.raises(SystemExit) as stopped:
            main([*args, flag, value])
        assert stopped.value.code == 2 and f"argument {flag}: " in (err := capsys.readouterr().err) and why in err
    with pytest.raises(SystemExit):
        main(["verify", "--list", "l.txt", "--report", "r.json", "--timeout", "-1"])
    assert "--timeout: -1 is below 0" in capsys.readouterr().err  # 0 is allowed: no limit (as before)
    assert main(["verify", "--list", str(tmp_path / "l.txt"), "--report", "r.json", "--timeout", "0"]) == 2  # no list
    assert not os.path.exists(tmp_path / "o")


def test_cli_names_an_unknown_x264_tune_before_encoding(tmp_path, capsys):
    from tools.prepare_kinetics import main

    make_video(str(tmp_path / "v.mp4"), 8)
    write_lines(str(tmp_path / "l.txt"), ["v.mp4 0"])
    args = ["reencode", "--list", str(tmp_path / "l.txt"), "--root", str(tmp_path), "--out-root", str(tmp_path / "o")]
    assert main([*args, "--tune", "fastdecod"]) == 2
    assert "unknown x264 tune 'fastdecod': use one of film, animation" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")  # nothing encoded
    assert main([*args, "--tune", "fastdecode,zerolatency"]) == 0  # x264 takes several, joined by commas


def test_cli_encodes_without_b_frames_unless_told_to(tmp_path):
    from tests.data.test_prepare import x264_settings
    from tools.prepare_kinetics import main

    make_video(str(tmp_path / "v.mp4"), 24)
    write_lines(str(tmp_path / "l.txt"), ["v.mp4 0"])
    cases = ([], " bframes=0 "), (["--bframes", "-1"], " bframes=3 "), (["--bframes", "2"], " bframes=2 ")
    for flag, expected in cases:
        out = tmp_path / f"o{len(flag)}{''.join(flag)}"
        args = ["reencode", "--list", str(tmp_path / "l.txt"), "--root", str(tmp_path), "--out-root", str(out)]
        assert main([*args, *flag]) == 0
        assert expected in x264_settings(str(out / "v.mp4"))


def test_cli_refuses_to_mix_two_encodings_in_one_out_root(tmp_path, capsys):
    import json

    from tests.data.test_prepare import x264_settings
    from tools.prepare_kinetics import main

    make_video(str(tmp_path / "v.mp4"), 24)
    write_lines(str(tmp_path / "l.txt"), ["v.mp4 0"])
    out = tmp_path / "o"
    args = ["reencode", "--list", str(tmp_path / "l.txt"), "--root", str(tmp_path), "--out-root", str(out)]
    assert main([*args, "--keyint", "8"]) == 0
    record = json.load(open(out / "aim_video_reencode.json"))
    assert record["encoder"]["keyint"] == 8 and record["encoder"]["bframes"] == 0 and "ffmpeg" in record["ffmpeg"]
    before = os.path.getmtime(out / "v.mp4")
    assert main([*args, "--keyint", "8"]) == 0  # the same settings: a rerun skips the finished video
    assert "skipped 1" in capsys.readouterr().out
    assert main([*args, "--keyint", "16"]) == 2  # other settings: stop before anything is encoded
    err = capsys.readouterr().err
    assert "keyint=8 (this run: 16)" in err and "--overwrite" in err
    assert os.path.getmtime(out / "v.mp4") == before
    assert main([*args, "--keyint", "16", "--overwrite"]) == 0
    assert json.load(open(out / "aim_video_reencode.json"))["encoder"]["keyint"] == 16
    assert main([*args, "--keyint", "16"]) == 0
    capsys.readouterr()

    # an --overwrite run that leaves an old output (its re-encode failed) stays pending: a plain rerun with the same
    # settings re-encodes what predates the overwrite, skips what it already re-encoded, then clears the mark
    make_video(str(tmp_path / "w.mp4"), 24)
    write_lines(str(tmp_path / "l.txt"), ["v.mp4 0", "w.mp4 0"])
    assert main([*args, "--keyint", "16"]) == 0
    os.replace(tmp_path / "w.mp4", tmp_path / "w.keep")
    (tmp_path / "w.mp4").write_text("not a video")  # the source went bad: w.mp4's old output stays
    assert main([*args, "--keyint", "8", "--overwrite"]) == 1
    assert "1 videos in" in capsys.readouterr().out
    assert json.load(open(out / "aim_video_reencode.json"))["overwriting"] is True
    assert main([*args, "--keyint", "16"]) == 2  # other settings than the pending overwrite's: refused
    assert "keyint=8 (this run: 16)" in capsys.readouterr().err
    os.replace(tmp_path / "w.keep", tmp_path / "w.mp4")
    v_done = os.path.getmtime(out / "v.mp4")
    assert main([*args, "--keyint", "8"]) == 0
    assert "re-encoded 1, skipped 1" in capsys.readouterr().out and os.path.getmtime(out / "v.mp4") == v_done
    assert " keyint=8 " in x264_settings(str(out / "w.mp4"))
    assert json.load(open(out / "aim_video_reencode.json"))["overwriting"] is False
    assert main([*args, "--keyint", "8"]) == 0
    capsys.readouterr()

    # two lists sharing one --out-root: overwriting one with new settings leaves the other's outputs stale, and a
    # plain rerun of the other re-encodes them (it skipped them, so the folder mixed two encodings)
    make_video(str(tmp_path / "u.mp4"), 24)
    write_lines(str(tmp_path / "val.txt"), ["u.mp4 0"])
    val = ["reencode", "--list", str(tmp_path / "val.txt"), "--root", str(tmp_path), "--out-root", str(out)]
    assert main([*val, "--keyint", "8"]) == 0
    assert main([*args, "--keyint", "4", "--overwrite"]) == 0
    assert "1 videos in" in capsys.readouterr().out  # u.mp4's output still has keyframe 8
    assert main([*val, "--keyint", "4"]) == 0
    assert "re-encoded 1, skipped 0" in capsys.readouterr().out
    assert all(" keyint=4 " in x264_settings(str(out / f"{n}.mp4")) for n in "uvw")
    assert json.load(open(out / "aim_video_reencode.json"))["overwriting"] is False
    write_lines(str(tmp_path / "l.txt"), ["v.mp4 0"])

    # outputs without a record (an older aim-video made them): settings unknown, so they are not silently reused
    os.remove(out / "aim_video_reencode.json")
    assert main([*args, "--keyint", "8"]) == 2
    assert "already holds 1 of this run's outputs but no aim_video_reencode.json" in capsys.readouterr().err
    assert main([*args, "--keyint", "8", "--overwrite"]) == 0


def test_cli_never_re_encodes_a_video_onto_itself(tmp_path, capsys):
    """--out-root the sources' folder: refused for lack of a settings file, with advice to pass --overwrite, which
    then replaced every original with its copy."""
    from tools.prepare_kinetics import main

    root = tmp_path / "videos"
    os.makedirs(root / "swim")
    source = make_video(str(root / "swim" / "a.mp4"), 8)
    before = open(source, "rb").read()
    write_lines(str(tmp_path / "train.txt"), ["swim/a.mp4 0"])
    args = ["reencode", "--list", str(tmp_path / "train.txt"), "--root", str(root), "--out-root", str(root),
            "--short-side", "32", "--jobs", "1"]  # fmt: skip
    os.symlink(root, tmp_path / "link")  # the same folder under another name
    via_link = [str(tmp_path / "link") if a == str(root) and k > 4 else a for k, a in enumerate(args)]
    for command in (args, args + ["--overwrite"], via_link + ["--overwrite"]):
        assert main(command) == 2
        assert "outputs would overwrite their originals" in capsys.readouterr().err
    assert open(source, "rb").read() == before
    with pytest.raises(SystemExit):  # a misspelt backend: argparse names the choices before any video is read
        main(["verify", "--list", str(tmp_path / "train.txt"), "--report", str(tmp_path / "r.json"),
              "--backend", "decrod"])  # fmt: skip
    assert "invalid choice: 'decrod'" in capsys.readouterr().err


def test_cli_verify_of_a_val_csv_needs_no_class_map(tmp_path, capsys):
    """A check reads no label, yet a val CSV (no train rows to number its labels) was refused without --class-map."""
    from tools.prepare_kinetics import main

    make_video(str(tmp_path / "videos" / "zumba" / "b_000002_000012.mp4"), 8)
    csv = tmp_path / "val.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nzumba,b,2,12,validate\n")
    report = str(tmp_path / "r.json")
    args = ["verify", "--list", str(csv), "--root", str(tmp_path / "videos"), "--report", report, "--jobs", "1"]
    assert main(args) == 0 and "exact 1," in capsys.readouterr().out
    # its repair hint asks for the train classes: the list repair writes carries labels (it refused the CSV without)
    from tests.data.videos import false_keyframes, make_h264

    clean = make_h264(str(tmp_path / "clean.mp4"), n=120, gop=100)
    false_keyframes(clean, str(tmp_path / "videos" / "zumba" / "c_000003_000013.mp4"), at=(40,))  # repairable
    csv.write_text(csv.read_text() + "zumba,c,3,13,validate\n")
    assert main(args) == 1
    assert " --class-map CLASSES_TXT (the train classes" in capsys.readouterr().out


def test_cli_a_folder_of_videos_to_predict_needs_no_classes(tmp_path, capsys):
    """`lists --test FOLDER` asked for --class-map although nothing in the folder has a label; verify (which reads
    no label) refused the folder as a class tree without classes."""
    from tools.prepare_kinetics import main

    for name in ("b.mp4", "a.mp4"):
        make_video(str(tmp_path / "new" / name), 8)
    assert main(["lists", "--test", str(tmp_path / "new"), "--out-dir", str(tmp_path / "lists")]) == 0
    assert sorted(os.listdir(tmp_path / "lists")) == ["test.txt"]  # no classes to write
    assert open(tmp_path / "lists" / "test.txt").read().split() == [str(tmp_path / "new" / "a.mp4"), "-1",
                                                                    str(tmp_path / "new" / "b.mp4"), "-1"]  # fmt: skip
    report = str(tmp_path / "r.json")
    assert main(["verify", "--list", str(tmp_path / "new"), "--report", report, "--jobs", "1"]) == 0
    assert "exact 2," in capsys.readouterr().out
    assert main(["lists", "--val", str(tmp_path / "lists" / "test.txt"), "--out-dir", str(tmp_path / "l2")]) == 2
    assert "without a train source the classes are unknown" in capsys.readouterr().err  # a list file: numbered




def _size(path: str) -> tuple[int, int]:
    with av.open(path) as container:
        stream = container.streams.video[0]
        return stream.codec_context.width, stream.codec_context.height


def test_reencode_defaults_are_the_documented_ones(tmp_path):
    from tools.prepare_kinetics import main

    make_video(str(tmp_path / "v.mp4"), 40, height=288, width=384)  # larger than 256: made smaller
    write_lines(str(tmp_path / "l.txt"), ["v.mp4 0"])
    out = tmp_path / "o"
    assert main(["reencode", "--list", str(tmp_path / "l.txt"), "--root", str(tmp_path), "--out-root", str(out),
                 "--jobs", "1"]) == 0  # fmt: skip
    encoder = json.load(open(out / "aim_video_reencode.json"))["encoder"]
    assert (encoder["short_side"], encoder["keyint"], encoder["crf"], encoder["bframes"]) == (256, 16, 23, 0)
    assert encoder["preset"] == "fast" and encoder["tune"] == "fastdecode"
    used = x264_settings(str(out / "v.mp4"))
    assert " keyint=16 " in used and " crf=23.0 " in used and " bframes=0 " in used
    assert " cabac=0 " in used and " deblock=0:" in used  # what tune=fastdecode turns off
    assert _size(str(out / "v.mp4")) == (342, 256)  # 384 x 288 to a short side of 256 (341.3: the even width above)


def test_repair_defaults_keep_the_size_at_crf_18_and_keyint_16(tmp_path):
    from tools.prepare_kinetics import main

    (tmp_path / "raw").mkdir()
    source = make_h264(str(tmp_path / "raw" / "short.mp4"), n=40, gop=10)
    (tmp_path / "l.txt").write_text("short.mp4 0\n")
    verify.write_report([verify.VideoCheck(source, "short", "decord")], str(tmp_path / "report.json"), "decord",
                        "exact")  # fmt: skip
    args = ["repair", "--report", str(tmp_path / "report.json"), "--list", str(tmp_path / "l.txt"), "--root",
            str(tmp_path / "raw"), "--out-root", str(tmp_path / "fixed"), "--out-list", str(tmp_path / "new.txt"),
            "--jobs", "1"]  # fmt: skip
    assert main(args) == 0
    copy = str(tmp_path / "fixed" / "short.mp4")
    assert _size(copy) == _size(source)
    used = x264_settings(copy)
    assert " keyint=16 " in used and " crf=18.0 " in used and " cabac=0 " in used
    assert os.path.isfile(tmp_path / "new_verify.json")


def test_verify_fresh_ignores_the_journal_of_an_interrupted_run(tmp_path, capsys):
    """Without --fresh a run resumes from the journal (its checks are not made again); --fresh checks every video."""
    from dataclasses import asdict

    from tools.prepare_kinetics import main

    video = make_video(str(tmp_path / "v.mp4"), 24)
    write_lines(str(tmp_path / "l.txt"), ["v.mp4 0"])
    report = str(tmp_path / "r.json")
    check = verify.VideoCheck(video, "shifted", "decord", reason="from the journal")
    check.size, check.mtime_ns = verify.file_stamp(video)

    def write_journal():
        with open(report + ".partial.jsonl", "w") as f:
            f.write(json.dumps({**asdict(check), "tag": "decord/exact"}) + "\n")

    args = ["verify", "--list", str(tmp_path / "l.txt"), "--root", str(tmp_path), "--report", report, "--jobs", "1"]
    write_journal()
    assert main(args) == 1 and "from the journal" in capsys.readouterr().out  # resumed: not checked again
    write_journal()
    assert main([*args, "--fresh"]) == 0 and "exact 1," in capsys.readouterr().out
    assert not os.path.exists(report + ".partial.jsonl")


def test_lists_drops_missing_videos_by_default_and_fails_on_request(tmp_path, capsys):
    from tools.prepare_kinetics import main

    make_video(str(tmp_path / "videos" / "v.mp4"), 8)
    write_lines(str(tmp_path / "src.txt"), ["v.mp4 0", "gone.mp4 1"])
    base = ["lists", "--train", str(tmp_path / "src.txt"), "--root", str(tmp_path / "videos")]
    assert main([*base, "--out-dir", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "train: 1 entries" in printed and "(1 missing videos dropped)" in printed
    assert open(tmp_path / "a" / "train.txt").read() == "v.mp4 0\n"
    assert main([*base, "--out-dir", str(tmp_path / "b"), "--missing", "fail"]) == 2
    assert "gone.mp4" in capsys.readouterr().err


def test_verify_resumed_from_a_journal_still_tells_broken_downloads_apart(tmp_path, capsys):
    """An `unreadable` check resumed from an older journal has not asked whether the file plays at all: it must
    still get the 'download them again' advice, not the re-encode one."""
    from dataclasses import asdict

    from tools.prepare_kinetics import main

    broken = tmp_path / "broken.mp4"
    broken.write_bytes(os.urandom(3000))
    write_lines(str(tmp_path / "l.txt"), ["broken.mp4 0"])
    report = str(tmp_path / "r.json")
    check = verify.VideoCheck(str(broken), "unreadable", "decord", reason="an older run's check")
    check.size, check.mtime_ns = verify.file_stamp(str(broken))
    row = {**asdict(check), "tag": "decord/exact"}
    row.pop("plays", None)  # an older journal's line: no answer yet
    with open(report + ".partial.jsonl", "w") as f:
        f.write(json.dumps(row) + "\n")
    args = ["verify", "--list", str(tmp_path / "l.txt"), "--root", str(tmp_path), "--report", report, "--jobs", "1"]
    assert main(args) == 1
    printed = capsys.readouterr().out
    assert "an older run's check" in printed  # resumed, not checked again
    assert "download them again, or drop them" in printed and "repair" not in printed


def test_lists_absolute_writes_absolute_paths(tmp_path):
    from tools.prepare_kinetics import main

    make_video(str(tmp_path / "videos" / "a" / "v.mp4"), 8)
    args = ["lists", "--train", str(tmp_path / "videos"), "--root", str(tmp_path / "videos"), "--out-dir"]
    assert main([*args, str(tmp_path / "rel")]) == 0
    assert open(tmp_path / "rel" / "train.txt").read() == "a/v.mp4 0\n"
    assert main([*args, str(tmp_path / "abs"), "--absolute"]) == 0
    assert open(tmp_path / "abs" / "train.txt").read() == f"{tmp_path / 'videos' / 'a' / 'v.mp4'} 0\n"


def test_reencode_without_ffmpeg_is_one_error_line_and_status_2(tmp_path, monkeypatch, capsys):
    from tools.prepare_kinetics import main

    make_video(str(tmp_path / "v.mp4"), 8)
    write_lines(str(tmp_path / "l.txt"), ["v.mp4 0"])
    monkeypatch.setenv("PATH", str(tmp_path / "no_programs_here"))
    args = ["reencode", "--list", str(tmp_path / "l.txt"), "--root", str(tmp_path), "--out-root", str(tmp_path / "o")]
    assert main(args) == 2
    assert "error: re-encoding needs the ffmpeg program" in capsys.readouterr().err


def test_reencode_of_a_class_folder_without_root_mirrors_its_class_folders(tmp_path):
    from tools.prepare_kinetics import main

    make_video(str(tmp_path / "videos" / "swim" / "v.mp4"), 8)  # one class: its folder is the videos' common folder
    out = tmp_path / "o"
    args = ["reencode", "--list", str(tmp_path / "videos"), "--out-root", str(out),
            "--out-list", str(tmp_path / "l.txt"), "--short-side", "32", "--jobs", "1"]  # fmt: skip
    assert main(args) == 0
    assert os.path.isfile(out / "swim" / "v.mp4")
    assert open(tmp_path / "l.txt").read() == "swim/v.mp4 0\n"


def test_reencode_keeps_audio_and_sets_the_frame_rate_when_asked(tmp_path):
    import subprocess

    from tools.prepare_kinetics import main

    src = str(tmp_path / "v.mp4")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=64x48:r=25:d=1", "-f", "lavfi",
                    "-i", "sine=d=1", "-c:v", "libx264", "-c:a", "aac", "-shortest", src], check=True)  # fmt: skip
    write_lines(str(tmp_path / "l.txt"), ["v.mp4 0"])

    def reencode(out: str, *flags: str):
        args = ["reencode", "--list", str(tmp_path / "l.txt"), "--root", str(tmp_path), "--out-root", out]
        args += ["--jobs", "1"]
        assert main([*args, *flags]) == 0
        with av.open(os.path.join(out, "v.mp4")) as container:
            return len(container.streams.audio), container.streams.video[0].average_rate

    assert reencode(str(tmp_path / "plain")) == (0, 25)
    assert reencode(str(tmp_path / "audio"), "--keep-audio") == (1, 25)
    assert reencode(str(tmp_path / "fps"), "--fps", "10") == (0, 10)


def test_repair_of_a_class_folder_without_root_mirrors_its_class_folders(tmp_path):
    from tools.prepare_kinetics import main

    source = make_h264(str(tmp_path / "videos" / "swim" / "short.mp4"), n=40, gop=10)
    verify.write_report([verify.VideoCheck(source, "short", "decord")], str(tmp_path / "report.json"), "decord",
                        "exact")  # fmt: skip
    args = ["repair", "--report", str(tmp_path / "report.json"), "--list", str(tmp_path / "videos"), "--out-root",
            str(tmp_path / "fixed"), "--out-list", str(tmp_path / "new.txt"), "--jobs", "1"]  # fmt: skip
    assert main(args) == 0
    assert open(tmp_path / "new.txt").read() == f"{tmp_path / 'fixed' / 'swim' / 'short.mp4'} 0\n"
