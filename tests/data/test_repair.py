"""repair.py: copies that every backend reads exactly, originals untouched, reruns that keep finished copies."""

from __future__ import annotations

import hashlib
import os

import pytest

from aim_video.data import decode, encode, verify
from aim_video.data.repair import JOURNAL, repair_videos
from tests.data.videos import (
    false_keyframes,
    make_h264,
    mean_abs_diff,
    sequential_frames,
    timestamp_gap,
    undecodable_tail,
)

TORCHCODEC_MISSING = decode.torchcodec_unavailable()


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("repair")
    clean = make_h264(str(folder / "clean.mp4"))  # 300 frames, keyframe every 250, no B-frames
    return {
        "clean": clean,
        "false_keyframes": false_keyframes(clean, str(folder / "kf.mp4")),
        "gap": timestamp_gap(clean, str(folder / "gap.mp4")),
        "short": undecodable_tail(clean, str(folder / "short.mp4")),
    }


def _sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.mark.slow  # 10-40 s on 2 shared cores: three re-encodes, verified, read by four backends
def test_repair_makes_every_backend_exact(files, tmp_path):
    root = os.path.dirname(files["clean"])
    broken = [files["false_keyframes"], files["gap"], files["short"]]
    before = {p: _sha(p) for p in broken}
    checks = [verify.check_video(p, "decord") for p in [files["clean"], *broken]]
    checks[2].status = "shifted"  # as torchcodec approximate reports it: repair whatever any backend got wrong
    mapping, rechecked, _ = repair_videos(
        checks, str(tmp_path / "repaired"), root=root, keyint=16, jobs=2, progress=False
    )
    assert sorted(mapping) == sorted(broken) and all(c.status == "exact" for c in rechecked)
    assert {p: _sha(p) for p in broken} == before  # originals untouched
    backends = [("decord", {}), ("pyav", {})]
    if not TORCHCODEC_MISSING:
        backends += [("torchcodec", {"seek_mode": "exact"}), ("torchcodec", {"seek_mode": "approximate"})]
    for original, copy in mapping.items():
        ref = sequential_frames(copy)
        assert len(ref) == 300 and mean_abs_diff(ref[150], sequential_frames(original)[150]) < 3.0
        indices = [0, 1, 16, 17, 41, 111, 155, 181, 250, 299]
        for backend, opts in backends:
            clip = decode.read_frames(copy, indices, backend, **opts)
            for k, i in enumerate(indices):
                assert mean_abs_diff(clip[k], ref[i]) < 1.0, (copy, backend, opts, i)


def test_repair_reports_in_input_order_whatever_finishes_first(tmp_path):
    slow = make_h264(str(tmp_path / "slow.mp4"), n=600, seed=4)  # takes longer to re-encode than the next one
    fast = make_h264(str(tmp_path / "fast.mp4"), n=10, seed=5)
    checks = [verify.VideoCheck(slow, "short", "decord"), verify.VideoCheck(fast, "short", "decord")]
    mapping, rechecked, _ = repair_videos(checks, str(tmp_path / "out"), jobs=2, progress=False)
    assert [os.path.basename(c.path) for c in rechecked] == ["slow.mp4", "fast.mp4"]
    assert list(mapping.values()) == [c.path for c in rechecked]


def test_repair_keeps_same_named_originals_apart_and_reports_what_it_could_not_replace(tmp_path):
    """`x.mp4` and `x.mkv` were both copied to `x.mp4`, one lost; an original whose re-encode failed was reported as
    `unreadable`, a status training keeps, so the new report let its wrong frames through."""
    from tests.data.videos import make_frames

    clean = make_h264(str(tmp_path / "src.mp4"), n=60, gop=50)
    (tmp_path / "v").mkdir()
    mp4 = false_keyframes(clean, str(tmp_path / "v" / "x.mp4"), at=(20,))
    mkv = str(tmp_path / "v" / "x.mkv")
    encode.write_video(mkv, make_frames(60, seed=3), fps=25, gop=50)
    gone = str(tmp_path / "v" / "y.mp4")
    checks = verify.verify_videos([mp4], "decord", progress=False)
    why = "3 of 9 checked reads return another frame"
    checks += [verify.VideoCheck(p, "shifted", "decord", reason=why) for p in (mkv, gone)]  # as a report says
    mapping, rechecked, _ = repair_videos(checks, str(tmp_path / "out"), str(tmp_path / "v"), progress=False)
    assert mapping == {mp4: str(tmp_path / "out" / "x.mp4"), mkv: str(tmp_path / "out" / "x_mkv.mp4")}
    for original, copy in mapping.items():
        assert mean_abs_diff(sequential_frames(copy)[30], sequential_frames(original)[30]) < 3
    (lost,) = [c for c in rechecked if c.path == gone]  # its re-encode failed: its verdict stays for training
    assert lost.status == "shifted" and lost.reason.startswith("re-encoding failed: ") and "3 of 9" in lost.reason


def test_repair_lists_every_video_absolute_under_a_relative_root(tmp_path, monkeypatch, capsys):
    """The repaired copies were absolute but the originals kept `raw/...`: with data.root=raw nothing was found."""
    from tools.prepare_kinetics import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "raw").mkdir()
    make_h264(str(tmp_path / "raw" / "good.mp4"), n=30, gop=10)
    make_h264(str(tmp_path / "raw" / "short.mp4"), n=30, gop=10, seed=2)
    (tmp_path / "l.txt").write_text("good.mp4 0\nshort.mp4 1\n")
    checks = [verify.VideoCheck(str(tmp_path / "raw" / "good.mp4"), "exact", "decord"),
              verify.VideoCheck(str(tmp_path / "raw" / "short.mp4"), "short", "decord")]  # fmt: skip
    verify.write_report(checks, "report.json", "decord", "exact")
    args = ["repair", "--report", "report.json", "--list", "l.txt", "--root", "raw", "--out-root", "fixed"]
    assert main([*args, "--out-list", "new.txt"]) == 0
    assert [line.split()[0] for line in open("new.txt").read().splitlines()] == [
        str(tmp_path / "raw" / "good.mp4"), str(tmp_path / "fixed" / "short.mp4")
    ]  # fmt: skip


def test_repair_never_writes_onto_an_original_through_a_linked_output_folder(tmp_path):
    """The guard compared path strings: an --out-root linked to the videos' folder re-encoded onto the originals."""
    clean = make_h264(str(tmp_path / "src.mp4"), n=60, gop=50)
    (tmp_path / "v").mkdir()
    bad = false_keyframes(clean, str(tmp_path / "v" / "x.mp4"), at=(20,))
    before = open(bad, "rb").read()
    os.symlink(tmp_path / "v", tmp_path / "link")
    check = verify.VideoCheck(bad, "shifted", "decord", reason="as a report says")
    for out in (tmp_path / "v", tmp_path / "link"):
        with pytest.raises(ValueError, match="repair would overwrite .*x.mp4; choose an output folder other"):
            repair_videos([check], str(out), str(tmp_path / "v"), progress=False)
    assert open(bad, "rb").read() == before


def test_a_rerun_keeps_finished_copies_and_other_settings_re_encode_them(tmp_path):
    """A rerun re-encoded every copy (hours of Kinetics' inexact videos after a stop near the end): copies made with
    the same settings are kept now and only verified again; other settings re-encode them all."""
    (tmp_path / "v").mkdir()
    sources = [make_h264(str(tmp_path / "v" / f"{name}.mp4"), n=30, gop=10, seed=k) for k, name in enumerate("ab")]
    checks = [verify.VideoCheck(p, "shifted", "decord", reason="as a report says") for p in sources]
    out = tmp_path / "out"

    def run(keyint: int) -> tuple[dict[str, str], list, int, set[str]]:
        """repair_videos, and which copies it wrote (a new file: a copy is renamed into place, a new inode)."""
        before = {name: (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns)
                  for name in ("a.mp4", "b.mp4") if (out / name).exists()}  # fmt: skip
        mapping, rechecked, kept = repair_videos(checks, str(out), str(tmp_path / "v"), keyint=keyint, progress=False)
        after = {name: (os.stat(out / name).st_ino, os.stat(out / name).st_mtime_ns) for name in ("a.mp4", "b.mp4")}
        return mapping, rechecked, kept, {name for name in after if before.get(name) != after[name]}

    first, _, kept, written = run(keyint=8)
    assert written == {"a.mp4", "b.mp4"} and kept == 0 and len(first) == 2 and (out / JOURNAL).is_file()
    os.remove(out / "b.mp4")  # the first run stopped before b's copy was renamed into place
    again, rechecked, kept, written = run(keyint=8)
    assert written == {"b.mp4"} and kept == 1 and again == first  # a's copy kept, and verified exact again
    assert [c.status for c in rechecked] == ["exact", "exact"]
    assert run(keyint=4)[2:] == (0, {"a.mp4", "b.mp4"})  # another keyframe interval: every copy made again
    assert run(keyint=4)[2:] == (2, set())
    (out / JOURNAL).write_text("not json\n")  # a journal it cannot read: what the copies were made of is unknown
    assert run(keyint=4)[2:] == (0, {"a.mp4", "b.mp4"})
    with open(out / JOURNAL, "a") as f:
        f.write('{"copy": "cut short by a ki')  # the next entries start on a line of their own
    os.remove(out / "a.mp4")
    assert run(keyint=4)[2:] == (1, {"a.mp4"}) and run(keyint=4)[2:] == (2, set())
    os.utime(sources[0], ns=(1, 1))  # the original changed since (downloaded again, say): its copy is made again
    assert run(keyint=4)[2:] == (1, {"a.mp4"})


def test_a_copy_of_another_original_at_the_same_path_is_not_kept(tmp_path):
    """Copies are named below the originals' common folder: a second repair into the same folder of another folder's
    v1.mp4 kept the first run's copy of a/v1.mp4 for b/v1.mp4, verified exact, under b's label."""
    first = make_h264(str(tmp_path / "data" / "a" / "v1.mp4"), n=20, gop=10, seed=1)
    second = make_h264(str(tmp_path / "data" / "b" / "v1.mp4"), n=20, gop=10, seed=2)
    out = str(tmp_path / "rep")
    for src in (first, second):
        mapping, _, kept = repair_videos([verify.VideoCheck(src, "shifted", "decord")], out, progress=False)
        assert mapping == {src: os.path.join(out, "v1.mp4")} and kept == 0
        assert mean_abs_diff(sequential_frames(mapping[src])[5], sequential_frames(src)[5]) < 3


def test_copies_keep_the_folders_below_the_sources_common_folder(tmp_path):
    """Without a root, copies were named by file alone: class folders' `v1.mp4`s became `v1.mp4` and `v1_mp4.mp4`,
    and a third one failed the run."""
    sources = [make_h264(str(tmp_path / "v" / cls / "v1.mp4"), n=20, gop=10, seed=k) for k, cls in enumerate("abc")]
    checks = [verify.VideoCheck(p, "shifted", "decord", reason="as a report says") for p in sources]
    mapping, _, _ = repair_videos(checks, str(tmp_path / "out"), progress=False)
    assert mapping == {src: str(tmp_path / "out" / cls / "v1.mp4") for src, cls in zip(sources, "abc", strict=True)}


def test_a_video_outside_the_root_is_copied_by_its_name_into_the_output_folder(tmp_path):
    """relpath from a --root that does not hold the video starts with '..': the copy would land outside out_dir
    (here onto the original itself)."""
    src = make_h264(str(tmp_path / "v" / "x.mp4"), n=20, gop=10)
    before = open(src, "rb").read()
    (tmp_path / "other").mkdir()
    check = verify.VideoCheck(src, "shifted", "decord", reason="as a report says")
    mapping, _, _ = repair_videos([check], str(tmp_path / "out"), str(tmp_path / "other"), progress=False)
    assert mapping == {src: str(tmp_path / "out" / "x.mp4")}
    assert open(src, "rb").read() == before


def test_a_video_the_report_names_twice_is_copied_once(tmp_path):
    src = make_h264(str(tmp_path / "v" / "x.mp4"), n=20, gop=10)
    checks = [verify.VideoCheck(src, "shifted", "decord", reason="r"), verify.VideoCheck(src, "short", "pyav")]
    mapping, rechecked, _ = repair_videos(checks, str(tmp_path / "out"), progress=False)
    assert mapping == {src: str(tmp_path / "out" / "x.mp4")} and len(rechecked) == 1
