"""verify.py: each failure class is built with PyAV remuxing and named for the backend that shows it."""

from __future__ import annotations

import csv
import json
import os

import pytest

from aim_video.data import decode, encode, verify
from tests.data.videos import (
    SleepyReader,
    false_keyframes,
    make_h264,
    mean_abs_diff,
    rotated,
    sequential_frames,
    timestamp_gap,
    undecodable_tail,
    with_cover,
)

TORCHCODEC_MISSING = decode.torchcodec_unavailable()
needs_torchcodec = pytest.mark.skipif(bool(TORCHCODEC_MISSING), reason=TORCHCODEC_MISSING or "available")
DECORD = ("decord", "exact")
TC_EXACT = pytest.param("torchcodec", "exact", marks=needs_torchcodec, id="torchcodec-exact")
TC_APPROX = pytest.param("torchcodec", "approximate", marks=needs_torchcodec, id="torchcodec-approximate")
PYAV = ("pyav", "exact")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("verify")
    clean = make_h264(str(folder / "clean.mp4"))  # 300 frames, keyframe every 250, no B-frames
    return {
        "clean": clean,
        "clean_bframes": make_h264(str(folder / "clean_b.mp4"), n=120, gop=30, bframes=2, seed=1),
        "false_keyframes": false_keyframes(clean, str(folder / "kf.mp4")),
        "gap": timestamp_gap(clean, str(folder / "gap.mp4")),
        "short": undecodable_tail(clean, str(folder / "short.mp4")),
        "portrait": rotated(clean, str(folder / "portrait.mp4"), 90),  # a phone video: a display matrix
        "ten_bit": make_h264(str(folder / "ten_bit.mp4"), pix_fmt="yuv420p10le"),  # HDR phones, YouTube
        "cover": with_cover(clean, str(folder / "cover.mkv")),  # an image stream before the video
    }


def test_check_groups_cover_seek_points_mid_gop_and_the_end():
    groups = verify.check_groups([0, 40, 110], 300)
    assert groups == [[110, 111, 205, 298, 299], [40, 41, 75], [0, 1, 20]]  # last first: each read seeks
    assert verify.check_groups([], 1) == [[0]]
    assert verify.check_groups([], 0) == []
    assert verify.check_groups([0, 299], 300) == [[299], [0, 1, 149]]  # a 1-frame last group
    many = verify.check_groups(list(range(0, 1000, 10)), 1000, max_groups=5)
    assert [g[:2] for g in many] == [[990, 991], [740, 741], [500, 501], [250, 251], [0, 1]]
    assert all(0 <= i < 1000 for g in many for i in g)


@pytest.mark.parametrize("name", ["clean", "clean_bframes", "portrait", "cover"])
@pytest.mark.parametrize("backend,mode", [DECORD, TC_EXACT, TC_APPROX, PYAV])
def test_clean_files_are_exact(files, name, backend, mode):
    check = verify.check_video(files[name], backend, mode)
    assert check.status == "exact", check
    assert check.claimed_frames == check.decoded_frames and check.checked >= 8 and check.max_error < 1.0


def test_only_files_with_a_wrong_read_pay_for_a_second_decode(files, monkeypatch):
    """Exact files cost one reference decode (RGB only at checked frames); the thumbnails of every frame, which name
    the frame a wrong read returned, come from a second decode made only after a wrong read."""
    built = []

    class Counted(verify._Thumbnails):
        def __init__(self, path, num_threads):
            built.append(path)
            super().__init__(path, num_threads)

    monkeypatch.setattr(verify, "_Thumbnails", Counted)
    assert verify.check_video(files["clean"], "decord").status == "exact" and built == []
    assert verify.check_video(files["false_keyframes"], "decord").status == "corrupt_after_seek"
    assert built == [files["false_keyframes"]]  # once, however many reads were wrong


@pytest.mark.parametrize(
    "backend,mode,status",
    [
        ("decord", "exact", "corrupt_after_seek"),
        pytest.param("torchcodec", "approximate", "corrupt_after_seek", marks=needs_torchcodec),
        pytest.param("torchcodec", "exact", "exact", marks=needs_torchcodec),  # its exact scan decodes from frame 0
        ("pyav", "exact", "exact"),
    ],
)
def test_false_keyframes(files, backend, mode, status):
    """(a) keyframe flags on P-frames: reads starting at them come back wrong; sequential PyAV is unaffected."""
    check = verify.check_video(files["false_keyframes"], backend, mode)
    assert check.status == status, check
    if status == "corrupt_after_seek":
        assert check.max_error > 20 and {40, 41, 110, 111, 180, 181} & set(check.bad_indices)
        assert "seek points that are not keyframes: [40, 110, 180]" in check.reason


@pytest.mark.parametrize("backend,mode", [DECORD, TC_EXACT, TC_APPROX, PYAV])
def test_high_bit_depth_is_exact_though_its_colours_differ(files, backend, mode):
    """decord and torchcodec dither 10-bit video to 8 bits otherwise than PyAV does: every frame differs by a few
    levels, the first one read by a fresh reader (no seek) as much as any. That is not a wrong read."""
    check = verify.check_video(files["ten_bit"], backend, mode)
    assert check.status == "exact", check
    if backend != "pyav":
        assert 1.0 < check.max_error < 1.25 * check.conversion_error + 1.0, check  # the allowance was needed
    assert check.conversion_error < 10  # a neighbouring frame differs by about 24


def test_high_bit_depth_false_keyframes_are_still_corrupt(files, tmp_path):
    broken = false_keyframes(files["ten_bit"], str(tmp_path / "ten_bit_kf.mp4"))
    check = verify.check_video(broken, "decord")
    assert check.status == "corrupt_after_seek" and check.max_error > 20, check
    assert {40, 41, 110, 111, 180, 181} & set(check.bad_indices)


@pytest.mark.parametrize("backend,mode", [DECORD, TC_EXACT, PYAV])
def test_timestamp_gap_is_exact_for_index_based_backends(files, backend, mode):
    assert verify.check_video(files["gap"], backend, mode).status == "exact"


@needs_torchcodec
def test_timestamp_gap_shifts_torchcodec_approximate_by_three(files):
    """(b) a 3-frame timestamp gap: approximate seeking (index -> time) returns frame i-3 after the gap."""
    check = verify.check_video(files["gap"], "torchcodec", "approximate")
    assert (check.status, check.offset) == ("shifted", 3), check
    assert all(i >= 150 for i in check.bad_indices)


@pytest.mark.parametrize("backend,mode", [DECORD, TC_EXACT, TC_APPROX, PYAV])
def test_undecodable_tail_is_short(files, backend, mode):
    """(c) one garbage packet appended: 301 claimed, 300 decode; the report's count keeps sampling below 300."""
    check = verify.check_video(files["short"], backend, mode)
    assert (check.status, check.claimed_frames, check.decoded_frames) == ("short", 301, 300), check


@pytest.mark.parametrize("mode", ["exact", "approximate"])
@needs_torchcodec
def test_a_short_files_count_is_what_the_backend_reads(tmp_path, mode):
    """A cut-off mp4 (60 claimed, 25 decode): torchcodec fails on frames 23 and 24 however they are read (it needs
    the next packet, which does not decode, to return them). verify said `short` with 25, and training failed on
    every clip that touched them; the count is now the 23 that read."""
    from tests.data.conftest import write_overclaiming

    path = write_overclaiming(str(tmp_path / "cut.mp4"))
    check = verify.check_video(path, "torchcodec", mode)
    assert (check.status, check.decoded_frames) == ("short", 23), check
    assert "25 decode, 23 read; torchcodec fails at frame 23 and after" in check.reason
    assert check.checked == 4 and check.max_error < 1.0  # [0, 1, 12, 22]: the frames asked for
    for indices in ([22], [0, 22], [20, 21, 22], [0, 11, 22]):  # the tail, alone and after earlier frames
        clip = decode.read_frames(path, indices, "torchcodec", num_frames=check.decoded_frames, seek_mode=mode)
        assert clip.shape[0] == len(indices)


class FlakyReader(decode._DecordReader):
    """decord that fails the first read of each file (as decord does now and then, at random, on a short file)."""

    failed: set[str] = set()

    def get(self, indices):
        if self.path not in self.failed:
            self.failed.add(self.path)
            raise RuntimeError("Thread worker: Error sending packet")
        return super().get(indices)


def test_a_read_that_fails_once_is_tried_again(files):
    """A failing read decided `unreadable` (inside the count) or was ignored (a short file); one that does not
    repeat says nothing of the file, and a short file's last frames that decode are checked too."""
    decode.register_backend("flaky", FlakyReader)
    try:
        checks = [verify.check_video(files[name], "flaky") for name in ("clean", "short")]
    finally:
        decode._READERS.pop("flaky")
    assert [(c.status, c.decoded_frames) for c in checks] == [("exact", 300), ("short", 300)], checks
    assert checks[1].checked == 8 and checks[1].reason == "flaky claims 301 frames, 300 decode"  # 298, 299 read


class MidFailReader(decode._DecordReader):
    """decord that always fails a read that includes frame 125 (a bad frame in the middle, not at the end)."""

    def get(self, indices):
        if 125 in indices:
            raise RuntimeError("cannot decode frame 125")
        return super().get(indices)


def test_a_failure_in_the_middle_of_a_short_file_does_not_shorten_it(files):
    """The tail search ran for any failing group of a short file: a bad frame 125 of 300 set the count to 125
    (frames 250-299 had read fine), and training sampled from the first 125 frames only."""
    decode.register_backend("midfail", MidFailReader)
    try:
        check = verify.check_video(files["short"], "midfail")
    finally:
        decode._READERS.pop("midfail")
    assert (check.status, check.decoded_frames) == ("unreadable", 300), check
    assert "fails at frames" in check.reason and "125" in check.reason


def test_unreadable_files(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("hello\n" * 100)
    for path, reason in [(str(text), "cannot open"), (str(tmp_path / "gone.mp4"), "file not found")]:
        check = verify.check_video(path, "decord")
        assert check.status == "unreadable" and reason in check.reason


def test_verify_videos_report_resume_and_hangs(files, tmp_path):
    decode.register_backend("sleepy", SleepyReader)
    try:
        hung = verify.verify_videos([files["clean"]], "sleepy", jobs=1, timeout_s=1.0, progress=False)
    finally:
        decode._READERS.pop("sleepy")
    assert hung[0].status == "hangs" and "no result after 1 s" in hung[0].reason

    paths = [files["clean"], files["false_keyframes"], files["short"], str(tmp_path / "gone.mp4")]
    journal = str(tmp_path / "report.jsonl")
    first = verify.verify_videos(paths[:2], "decord", jobs=2, journal=journal, progress=False)
    checks = verify.verify_videos(paths, "decord", jobs=2, journal=journal, progress=False)  # resumes
    assert [c.seconds for c in checks[:2]] == [c.seconds for c in first]  # taken from the journal, not re-run
    assert [c.status for c in checks] == ["exact", "corrupt_after_seek", "short", "unreadable"]
    # the journal's checks are another backend's verdicts for pyav: checked again; a path listed twice is one video
    again = verify.verify_videos([paths[1], paths[1]], "pyav", jobs=1, journal=journal, progress=False)
    assert [(c.status, c.backend) for c in again] == [("exact", "pyav")]  # once, by pyav (not the journal's decord)
    report = str(tmp_path / "report.json")
    csv_path = verify.write_report(checks, report, "decord", "exact")
    data = json.load(open(report))
    assert data["counts"] == {
        "exact": 1,
        "shifted": 0,
        "corrupt_after_seek": 1,
        "short": 1,
        "hangs": 0,
        "unreadable": 1,
    }
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["status"] for r in rows] == [c.status for c in checks]
    counts = {os.path.abspath(c.path): c.decoded_frames for c in verify.load_report(report) if c.decoded_frames > 0}
    assert counts[os.path.abspath(files["short"])] == 300 and os.path.abspath(paths[3]) not in counts
    # sampling through the report's count never asks for index 300
    asked = []
    clip = decode.read_frames(
        files["short"],
        lambda n: asked.append(n) or [n - 1],
        "decord",
        fallback="pyav",  # decord now and then fails on the last real frames of such a file: PyAV takes over
        num_frames=counts[os.path.abspath(files["short"])],
    )
    assert asked == [300] and mean_abs_diff(clip[0], sequential_frames(files["short"])[299]) < 1.0


def test_verify_and_repair_subcommands(files, tmp_path, capsys):
    from tools.prepare_kinetics import main

    root = os.path.dirname(files["clean"])
    names = ["clean.mp4", "kf.mp4", "short.mp4", "gone.mp4"]
    listing = tmp_path / "train.txt"
    listing.write_text("".join(f"{name} {k}\n" for k, name in enumerate(names)))
    report = str(tmp_path / "train_verify.json")
    args = ["--list", str(listing), "--root", root, "--jobs", "2", "--timeout", "60"]
    assert main(["verify", *args, "--report", report]) == 1  # not every video is exact
    printed = capsys.readouterr().out
    assert "  corrupt_after_seek 1: " + os.path.join(root, "kf.mp4") + ": " in printed
    assert "  unreadable 1: " in printed and "gone.mp4" in printed and "  shifted" not in printed
    assert f"prepare_kinetics.py repair --report {report} --list {listing} --root {root}" in printed
    assert f"1 listed file(s) not found, e.g. {os.path.join(root, 'gone.mp4')}: download them" in printed
    assert "(truncated or failed downloads)" not in printed  # a missing file is not a broken download
    assert json.load(open(report))["counts"] == {
        "exact": 1, "shifted": 0, "corrupt_after_seek": 1, "short": 1, "hangs": 0, "unreadable": 1
    }  # fmt: skip
    assert not os.path.exists(report + ".partial.jsonl") and os.path.exists(str(tmp_path / "train_verify.csv"))
    out_list = str(tmp_path / "train_repaired.txt")
    repair = ["repair", *args, "--report", report, "--out-root", str(tmp_path / "fixed"), "--out-list", out_list]
    assert main(repair) == 1  # the missing video cannot be repaired, and is reported
    lines = [line.split() for line in open(out_list).read().splitlines()]
    assert [label for _, label in lines] == ["0", "1", "2"]  # the missing one was dropped by the list loader
    assert lines[0][0] == files["clean"]
    assert lines[1][0] == str(tmp_path / "fixed" / "kf.mp4") and lines[2][0] == str(tmp_path / "fixed" / "short.mp4")
    rechecked = json.load(open(str(tmp_path / "train_repaired_verify.json")))["videos"]
    assert [(os.path.basename(v["path"]), v["status"]) for v in rechecked] == [
        ("kf.mp4", "exact"), ("short.mp4", "exact"), ("gone.mp4", "unreadable")
    ]  # fmt: skip
    assert "file not found" in rechecked[2]["reason"] or "No such file" in rechecked[2]["reason"]
    assert f"data.verify_report={report},{tmp_path / 'train_repaired_verify.json'}" in capsys.readouterr().out
    # a report of another list: nothing of this list to repair (it re-encoded the other list's videos and wrote
    # this list unchanged as if repaired); a --root that finds no video: a report of "file not found" only
    (tmp_path / "other.txt").write_text("gap.mp4 0\n")  # in the same folder, not in the report
    other = ["--list", str(tmp_path / "other.txt"), "--root", root, "--report", report]
    assert main(["repair", *other, "--out-root", str(tmp_path / "o2"), "--out-list", str(tmp_path / "o2.txt")]) == 2
    assert "covers none of the 1 videos of --list" in capsys.readouterr().err and not os.path.exists(tmp_path / "o2")
    assert main(["verify", *args[:2], "--root", str(tmp_path), "--report", str(tmp_path / "r.json")]) == 2
    assert "none of the 4 videos of --list" in capsys.readouterr().err and not os.path.exists(tmp_path / "r.json")


def test_verify_videos_makes_the_report_folder(files, tmp_path):
    journal = str(tmp_path / "not" / "yet" / "report.json.partial.jsonl")
    checks = verify.verify_videos([files["clean"]], "decord", jobs=1, journal=journal, progress=False)
    assert checks[0].status == "exact" and os.path.isfile(journal)


def test_verify_tells_to_download_broken_files_again_not_to_re_encode_them(files, tmp_path, capsys, caplog):
    from tools.prepare_kinetics import main

    (tmp_path / "broken.mp4").write_bytes(os.urandom(3000))
    os.symlink(files["clean"], tmp_path / "clean.mp4")
    (tmp_path / "l.txt").write_text("clean.mp4 0\nbroken.mp4 1\ngone.mp4 1\n")
    report = str(tmp_path / "reports" / "v.json")  # a folder that does not exist yet
    assert main(["verify", "--list", str(tmp_path / "l.txt"), "--root", str(tmp_path), "--report", report]) == 1
    printed = capsys.readouterr().out
    assert "download them again, or drop them" in printed and "repair" not in printed
    # the missing file is in the report, and the warning no longer says it was dropped
    assert "1 of 3 videos not found" in caplog.text and "kept)" in caplog.text and "dropped" not in caplog.text
    statuses = {os.path.basename(c.path): c.status for c in verify.load_report(report)}
    assert statuses == {"clean.mp4": "exact", "broken.mp4": "unreadable", "gone.mp4": "unreadable"}


@needs_torchcodec
@pytest.mark.skipif(not __import__("shutil").which("ffmpeg"), reason="needs ffmpeg: apt-get install ffmpeg")
def test_a_failing_read_does_not_hide_wrong_frames_elsewhere(tmp_path):
    """MPEG-4 Part 2 in AVI with B-frames: torchcodec returns frames shifted by one after its seeks and fails on
    the last two. verify stopped at the failing read (the last group is read first) and called the file
    `unreadable`, a status the loader keeps: training would have read the wrong frames."""
    import subprocess

    path = str(tmp_path / "bf.avi")
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=128x96:r=25:d=2", "-c:v", "mpeg4"]
    subprocess.run([*cmd, "-q:v", "3", "-g", "10", "-bf", "2", path], check=True)
    check = verify.check_video(path, "torchcodec", "exact")
    assert check.status in verify.WRONG_FRAMES, (check.status, check.reason)
    assert "torchcodec fails at frames [48, 49]" in check.reason  # the failing read is still named
    assert verify.plays(path) and not verify.plays(str(tmp_path / "gone.mp4"))


@pytest.mark.skipif(not __import__("shutil").which("ffmpeg"), reason="needs ffmpeg: apt-get install ffmpeg")
def test_mpeg_ts_with_b_frames_pyav_is_exact_and_decord_is_caught(tmp_path):
    """An MPEG-TS file with B-frames presents its first frame after the stream's start time. PyAV's reader sought
    back to that start time, landed on the second keyframe and returned every index one group late (frame 30 for
    0), so the 'exact' fallback was not; decord returns other frames too. verify must clear PyAV and catch decord."""
    import subprocess

    path = str(tmp_path / "bf.ts")
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=160x120:r=25:d=4", "-c:v", "libx264"]
    subprocess.run([*cmd, "-g", "30", "-bf", "2", "-f", "mpegts", path], check=True)
    ref = sequential_frames(path)
    assert len(ref) == 100
    indices = [0, 1, 29, 30, 64, 99]
    clip = decode.read_frames(path, indices, "pyav")
    for k, i in enumerate(indices):
        assert mean_abs_diff(clip[k], ref[i]) < 1.0, i
    assert decode.read_frames(path, [5], "pyav", num_frames=100).shape[0] == 1  # the same reader, read twice
    reader = decode.open_reader(path, "pyav")
    try:
        first = reader.get([40])
        assert mean_abs_diff(reader.get([40])[0], first[0]) == 0 and mean_abs_diff(first[0], ref[40]) < 1.0
    finally:
        reader.close()
    assert verify.check_video(path, "pyav").status == "exact"
    decord = verify.check_video(path, "decord")
    assert decord.status in verify.WRONG_FRAMES, (decord.status, decord.reason)


def test_a_false_keyframe_in_a_long_video_is_checked_though_groups_are_spread(tmp_path):
    """With more than 24 groups of pictures verify reads 24 spread evenly; a false keyframe in a group between them
    passed as `exact`, though the sequential decode had found it. Its group is now read too."""
    from tests.data.videos import make_frames

    src = str(tmp_path / "long.mp4")
    params = {"bf": "0", "x264-params": "scenecut=0:keyint=10:min-keyint=10"}
    encode.write_video(src, make_frames(600), fps=25, gop=10, options=params)
    points, _ = decode.packet_seek_points(src)
    spread = verify.check_groups(points, 600)
    at = next(f for f in range(15, 600, 10) if not any(f in g for g in verify.check_groups([*points, f], 600)))
    assert len(spread) == 24 and [g for g in verify.check_groups([*points, at], 600, include=[at]) if g[0] == at]
    check = verify.check_video(false_keyframes(src, str(tmp_path / "bad.mp4"), at=(at,)), "decord")
    assert check.status == "corrupt_after_seek" and at in check.bad_indices, (check.status, check.reason)


def test_a_still_scene_in_high_bit_depth_video_is_exact(tmp_path):
    """10-bit video read with other colours than PyAV's: a wrong-looking read is matched to its nearest frame, and
    in a still scene that was the first of the identical frames, not the one asked for: `corrupt_after_seek`, so
    training refused a good file."""
    import numpy as np

    from tests.data.videos import make_frames

    frames = make_frames(120)
    still = np.concatenate([frames[:40], np.repeat(frames[40:41], 40, 0), frames[41:81]])  # 40..79 identical
    path = str(tmp_path / "still10.mp4")
    encode.write_video(path, still, fps=25, gop=250, pix_fmt="yuv420p10le", options={"bf": "0"})
    check = verify.check_video(path, "decord")
    assert check.status == "exact" and check.conversion_error > 1.0, (check.status, check.reason)


def test_reports_hold_absolute_paths_and_file_stamps_and_a_changed_file_is_checked_again(tmp_path, monkeypatch):
    clean = make_h264(str(tmp_path / "v.mp4"), n=60, gop=50)
    monkeypatch.chdir(tmp_path)
    journal = str(tmp_path / "j.jsonl")
    (check,) = verify.verify_videos(["v.mp4"], "decord", journal=journal, progress=False)
    assert check.path == clean and check.status == "exact"
    assert (check.size, check.mtime_ns) == (os.path.getsize(clean), os.stat(clean).st_mtime_ns)
    assert not verify.is_stale(check)
    false_keyframes(make_h264(str(tmp_path / "src.mp4"), n=60, gop=50), clean, at=(20,))  # replaced in place
    assert verify.is_stale(check)
    (again,) = verify.verify_videos([clean], "decord", journal=journal, progress=False)  # the journal's is stale
    assert again.status == "corrupt_after_seek"
    # missing when checked, downloaded since: its 'unreadable' verdict no longer holds (training dropped it for good)
    later = str(tmp_path / "later.mp4")
    (missing,) = verify.verify_videos([later], "decord", journal=journal, progress=False)
    assert missing.status == "unreadable" and not verify.is_stale(missing)
    make_h264(later, n=60, gop=50)
    assert verify.is_stale(missing)
    (found,) = verify.verify_videos([later], "decord", journal=journal, progress=False)
    assert found.status == "exact"


def test_a_check_without_a_stamp_is_taken_as_current(tmp_path):
    """Reports written before checks carried file stamps: their verdicts still count (not all stale)."""
    path = tmp_path / "v.mp4"
    path.write_bytes(b"x")
    assert not verify.is_stale(verify.VideoCheck(str(path), "exact"))
