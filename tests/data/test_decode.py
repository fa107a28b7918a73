"""decode.py: frame accuracy of every installed backend against a sequential PyAV decode, and its error paths."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from aim_video.data import decode, encode
from tests.data.videos import (
    make_frames,
    make_h264,
    mean_abs_diff,
    rotated,
    sequential_frames,
    undecodable_tail,
    with_cover,
)

TORCHCODEC_MISSING = decode.torchcodec_unavailable()
needs_torchcodec = pytest.mark.skipif(bool(TORCHCODEC_MISSING), reason=TORCHCODEC_MISSING or "available")
# (backend, options): every installed backend, torchcodec in both seek modes
BACKENDS = [
    ("decord", {}),
    ("pyav", {}),
    pytest.param("torchcodec", {"seek_mode": "exact"}, marks=needs_torchcodec, id="torchcodec-exact"),
    pytest.param("torchcodec", {"seek_mode": "approximate"}, marks=needs_torchcodec, id="torchcodec-approximate"),
]
FORMATS = {"h264.mp4": "libx264", "mpeg4.avi": "mpeg4", "vp9.webm": "libvpx-vp9"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("videos")
    out = {}
    for name, codec in FORMATS.items():
        out[name] = str(folder / name)
        encode.write_video(out[name], make_frames(60), fps=25, codec=codec, gop=12)
    out["short.mp4"] = undecodable_tail(make_h264(str(folder / "clean.mp4")), str(folder / "short.mp4"))
    return out


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("backend,opts", BACKENDS)
def test_frames_equal_sequential_decode(videos, name, backend, opts):
    ref = sequential_frames(videos[name])
    assert len(ref) == 60
    indices = [59, 0, 13, 13, 30, 58, 1, 47]  # unsorted, duplicated, mid-GOP, first and last
    clip = decode.read_frames(videos[name], indices, backend, **opts)
    assert clip.dtype.is_floating_point is False and tuple(clip.shape) == (8, 64, 96, 3)
    for k, i in enumerate(indices):
        assert mean_abs_diff(clip[k], ref[i]) < 1.0, (backend, name, i)


@pytest.mark.parametrize("backend,opts", BACKENDS)
def test_num_threads_and_timeout_give_the_same_frames(videos, backend, opts):
    path, indices = videos["h264.mp4"], [5, 40, 41]
    plain = decode.read_frames(path, indices, backend, num_threads=1, **opts)
    threaded = decode.read_frames(path, indices, backend, num_threads=2, **opts)
    guarded = decode.read_frames(path, indices, backend, timeout_s=30, **opts)
    assert mean_abs_diff(plain, threaded) < 1.0 and mean_abs_diff(plain, guarded) == 0.0


@pytest.mark.parametrize("backend,opts", BACKENDS)
def test_index_function_gets_the_frame_count(videos, backend, opts):
    seen = []

    def sample(n: int) -> list[int]:
        seen.append(n)
        return [n - 1, 0]

    clip = decode.read_frames(videos["h264.mp4"], sample, backend, **opts)
    ref = sequential_frames(videos["h264.mp4"])
    assert seen == [60] and mean_abs_diff(clip[0], ref[59]) < 1.0 and mean_abs_diff(clip[1], ref[0]) < 1.0


@pytest.mark.parametrize("backend,opts", BACKENDS)
def test_claimed_frame_past_the_real_end(videos, backend, opts, monkeypatch):
    """The container claims 301 frames, 300 decode: a known count bounds the request; a read discovers it."""
    path = videos["short.mp4"]
    monkeypatch.setattr(decode, "_DISCOVERED", {})
    assert decode.open_reader(path, backend, **opts).num_frames == 301
    with pytest.raises(decode.VideoReadError, match=r"frame index 300 outside 0\.\.299"):
        decode.read_frames(path, [0, 300], backend, num_frames=300, **opts)  # never passed to the decoder
    asked = []

    def sample(n: int) -> list[int]:
        asked.append(n)
        return [0, n - 1]

    # sampled from the container's count (301), the read finds the real one, re-samples inside it and reads; decord
    # now and then also fails on the last real frames of such a file, and the PyAV fallback then reads them
    clip = decode.read_frames(path, sample, backend, fallback="pyav", **opts)
    assert asked == [301, 300] and decode.discovered_frame_counts() == {path: (301, 300)}
    assert mean_abs_diff(clip[1], sequential_frames(path)[299]) < 1.0
    # later reads sample as the discovering one did, the container's count first, then the real one as its indices
    # pass it (the same clip in a process that knows the count and in one that does not), with no second decode
    decode.read_frames(path, sample, backend, fallback="pyav", **opts)
    assert asked == [301, 300, 301, 300]
    monkeypatch.setattr(decode, "_DISCOVERED", {})
    with pytest.raises(decode.ShortVideoError) as err:
        decode.read_frames(path, [299, 300], backend, **opts)
    assert (err.value.claimed, err.value.decodable) == (301, 300) and path in str(err.value)


def test_pyav_fallback_for_a_file_decord_cannot_open(tmp_path, monkeypatch):
    """AV1 (what YouTube serves for many videos): decord's FFmpeg has no decoder; the error says so and what to do,
    the fallback reads it, says why, and later reads of the file go to the fallback at once."""
    path = str(tmp_path / "av1.mkv")
    encode.write_video(path, make_frames(12), codec="libsvtav1")
    opened: list[str] = []

    class CountingDecord(decode._DecordReader):  # the real decord reader, counting its opens
        def __init__(self, p, *args, **kwargs):
            opened.append(p)
            super().__init__(p, *args, **kwargs)

    monkeypatch.setitem(decode._READERS, "decord", CountingDecord)
    monkeypatch.setattr(decode, "_FALLBACKS", {})
    with pytest.raises(
        decode.VideoReadError, match="decord cannot decode its av1 video .*prepare_kinetics.py reencode"
    ):
        decode.read_frames(path, [3], "decord")
    assert decode.fallback_reason(path) == ""  # no fallback was asked for
    clip = decode.read_frames(path, [3, 11], "decord", fallback="pyav")
    ref = sequential_frames(path)
    assert mean_abs_diff(clip[0], ref[3]) < 1.0 and mean_abs_diff(clip[1], ref[11]) < 1.0
    assert decode.fallback_reason(path).startswith("read with pyav: decord cannot decode its av1 video")
    assert len(opened) == 2
    again = decode.read_frames(path, [5], "decord", fallback="pyav")
    assert len(opened) == 2 and mean_abs_diff(again[0], ref[5]) < 1.0  # straight to the fallback


def test_a_fallback_after_a_failed_read_is_reported_and_kept(videos, monkeypatch):
    """A read the backend opens but fails to decode (decord on an undecodable tail, say) is read with the fallback;
    it is reported like a fallback at open time (the epoch's `fallbacks`), and later reads go to the fallback."""
    path = videos["h264.mp4"]
    opened: list[str] = []

    class FailingDecord(decode._DecordReader):  # the real decord reader, whose reads fail as on a broken packet
        def __init__(self, p, *args, **kwargs):
            opened.append(p)
            super().__init__(p, *args, **kwargs)

        def get(self, indices):
            raise RuntimeError("[12:00:00] src/video/video_reader.cc:151: Check failed: ...")

    monkeypatch.setitem(decode._READERS, "decord", FailingDecord)
    monkeypatch.setattr(decode, "_FALLBACKS", {})
    ref = sequential_frames(path)
    clip = decode.read_frames(path, [7, 40], "decord", fallback="pyav", num_frames=60)  # known count: no recount
    assert mean_abs_diff(clip[0], ref[7]) < 1.0 and mean_abs_diff(clip[1], ref[40]) < 1.0
    assert decode.fallback_reason(path) == "read with pyav: decord failed to decode frames 7..40: Check failed:"
    # the message's first telling line, trailing dots, decord's time of day and source position dropped
    again = decode.read_frames(path, [5], "decord", fallback="pyav", num_frames=60)
    assert opened == [path] and mean_abs_diff(again[0], ref[5]) < 1.0  # straight to the fallback


def test_a_file_neither_backend_opens_names_both_reasons_and_what_to_do(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(os.urandom(3000))  # a failed download
    with pytest.raises(decode.VideoReadError) as info:
        decode.read_frames(str(path), [0], "decord", fallback="pyav")
    message = str(info.value)
    assert "neither decord nor pyav can open it (decord: decord cannot open it" in message
    assert "; pyav: " in message and "download it again or drop it" in message and "verify" in message
    assert decode.fallback_reason(str(path)) == ""


@pytest.mark.parametrize("timeout_s", [None, 30], ids=["in-process", "watchdog"])
@pytest.mark.parametrize("backend", ["decord", "pyav", pytest.param("torchcodec", marks=needs_torchcodec)])
def test_bad_files_raise_naming_the_file(tmp_path, backend, timeout_s):
    empty, text = tmp_path / "empty.mp4", tmp_path / "text.mp4"
    empty.write_bytes(b"")
    text.write_text("not a video\n" * 50)
    for path, reason in [(tmp_path / "missing.mp4", "file not found"), (empty, "empty file"), (text, "cannot open")]:
        with pytest.raises(decode.VideoReadError, match=reason) as err:
            decode.read_frames(str(path), [0], backend, timeout_s=timeout_s)
        assert err.value.path == str(path)


def test_unknown_backend_and_seek_mode(videos):
    with pytest.raises(ValueError, match="choose one of decord, torchcodec, pyav"):
        decode.read_frames(videos["h264.mp4"], [0], "opencv")
    if not TORCHCODEC_MISSING:
        with pytest.raises(ValueError, match="exact, approximate"):
            decode.read_frames(videos["h264.mp4"], [0], "torchcodec", seek_mode="fast")


def test_torchcodec_without_ffmpeg_says_what_to_install(tmp_path):
    """Where FFmpeg's libraries are missing torchcodec's import fails; the error must say how to install them."""
    code = (
        "import sys; sys.modules['torchcodec.decoders'] = None\n"  # the import fails as it does without libavcodec
        "from aim_video.data import decode\n"
        "try:\n    decode.read_frames(sys.argv[1], [0], 'torchcodec')\n"
        "except decode.BackendUnavailable as err:\n    print('UNAVAILABLE', err)\n"
    )
    path = make_h264(str(tmp_path / "a.mp4"), n=5)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, env=env, timeout=120)
    assert "UNAVAILABLE" in out.stdout and "apt-get install -y ffmpeg" in out.stdout, out.stdout + out.stderr


@needs_torchcodec
def test_torchcodec_cuda_device_is_selectable(videos):
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(decode.VideoReadError, match="torchcodec cannot open it"):
            decode.read_frames(videos["h264.mp4"], [0], "torchcodec", device="cuda")
        return
    clip = decode.read_frames(videos["h264.mp4"], [0, 30], "torchcodec", device="cuda")  # pragma: no cover
    ref = sequential_frames(videos["h264.mp4"])  # pragma: no cover
    assert mean_abs_diff(clip[1], ref[30]) < 2.0  # pragma: no cover - GPU colour conversion differs slightly


@pytest.mark.parametrize("degrees", [90, 180, 270])
@pytest.mark.parametrize("backend,opts", BACKENDS)
def test_phone_videos_read_upright_through_every_backend(tmp_path, degrees, backend, opts):
    """A display matrix (how phones store portrait video) turns the frames for every backend alike; the size
    that `probe` reports is the turned one. PyAV used to return the stored picture, so a fallback or the verify
    reference disagreed with decord in shape and content."""
    plain = str(tmp_path / "plain.mp4")
    encode.write_video(plain, make_frames(20), fps=25, gop=8)
    path = rotated(plain, str(tmp_path / f"rot{degrees}.mp4"), degrees)  # the same packets, turned for display
    # what a player shows: the stored picture turned counter-clockwise by `degrees`
    upright = np.rot90(sequential_frames(plain), degrees // 90, axes=(1, 2))
    assert upright.shape[1:3] == ((96, 64) if degrees != 180 else (64, 96))
    indices = [19, 0, 9, 9]
    clip = decode.read_frames(path, indices, backend, **opts)
    assert tuple(clip.shape) == (4, *upright.shape[1:]), (backend, degrees)
    for k, i in enumerate(indices):
        assert mean_abs_diff(clip[k], upright[i]) < 1.0, (backend, degrees, i)
    info = decode.probe(path, backend, **opts)
    assert (info.height, info.width) == upright.shape[1:3]
    assert sequential_frames(path).shape[1:3] == upright.shape[1:3]  # the reference decode agrees


@pytest.mark.parametrize("backend,opts", BACKENDS)
def test_the_video_stream_is_found_behind_a_cover_image(tmp_path, backend, opts):
    """An mkv whose first stream is a one-frame image: every backend, and the sequential reference, read the
    video (FFmpeg's best stream). PyAV took the first stream and returned the image as a one-frame video."""
    plain = make_h264(str(tmp_path / "plain.mp4"), n=60, gop=12)
    path = with_cover(plain, str(tmp_path / "cover.mkv"))
    ref = sequential_frames(plain)
    assert len(sequential_frames(path)) == 60
    assert decode.probe(path, backend, **opts).num_frames == 60
    indices = [59, 0, 31]
    clip = decode.read_frames(path, indices, backend, **opts)
    for k, i in enumerate(indices):
        assert mean_abs_diff(clip[k], ref[i]) < 1.0, (backend, i)


@pytest.mark.parametrize("timeout_s", [None, 30], ids=["in-process", "watchdog"])
@pytest.mark.parametrize("backend", ["decord", "pyav", pytest.param("torchcodec", marks=needs_torchcodec)])
def test_an_audio_only_file_is_named_as_such_by_every_backend(tmp_path, backend, timeout_s):
    """decord said 'Check failed: st_nb >= 0 ... cannot find video stream with wanted index: -1', torchcodec 'This
    should never happen' or a bug-report link; the same words when the read runs in the watchdog's child."""
    import av

    path = str(tmp_path / "talk.m4a")
    with av.open(path, "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    with pytest.raises(decode.VideoReadError, match="no video stream \\(audio-only or not a video\\)"):
        decode.read_frames(path, [0], backend, timeout_s=timeout_s)


def test_read_errors_say_the_plain_cause():
    missing = "/nonexistent/clip.mp4"
    with pytest.raises(decode.VideoReadError, match=r"clip.mp4: file not found$"):  # no fallback tried on it
        decode.read_frames(missing, [0], "decord", fallback="pyav")

    class LinkError(Exception):
        pass

    err = LinkError("Could not open input file x.\nReport it at\nhttps://github.com/pytorch/torchcodec/issues/new.")
    assert decode._first_line(err) == "Report it at"
    assert decode._first_line(LinkError("https://example.org/x")) == "LinkError"
    # decord's time of day and source position made one video's reason differ by worker (counted under several)
    raw = "[01:17:48] /github/workspace/src/video/video_reader.cc:486: Error: av_read_frame failed with -5"
    assert decode._first_line(LinkError(raw)) == "Error: av_read_frame failed with -5"


def test_an_index_that_is_not_an_integer_is_refused(tmp_path):
    path = make_h264(str(tmp_path / "a.mp4"), n=5)
    with pytest.raises(ValueError, match=r"frame indices must be integers, got \[1.5\]"):  # not frame 1, silently
        decode.read_frames(path, [0, 1.5], "decord")
    assert decode.read_frames(path, [np.int64(2), 3.0], "decord").shape[0] == 2


def test_a_negative_frame_index_is_refused(tmp_path):
    """decord returned the last frame for -1 without a word, and PyAV recorded the file as shorter than it is."""
    path = make_h264(str(tmp_path / "a.mp4"), n=20)
    with pytest.raises(decode.VideoReadError, match=r"frame index -1 outside 0\.\.19"):
        decode.read_frames(path, [-1, 3], "decord")


def test_a_failed_read_of_a_file_as_long_as_it_claims_is_no_short_file(tmp_path, monkeypatch):
    """The recount after a failed read equals the claimed count: the fallback reads the frames, and the file is not
    recorded as short (a spurious 'claims 30 frames but only 30 decode')."""
    path = make_h264(str(tmp_path / "a.mp4"), n=30)

    class Failing(decode._DecordReader):
        def get(self, indices):
            raise RuntimeError("Check failed")

    monkeypatch.setitem(decode._READERS, "decord", Failing)
    monkeypatch.setattr(decode, "_DISCOVERED", {})
    monkeypatch.setattr(decode, "_FALLBACKS", {})
    clip = decode.read_frames(path, [3, 7], "decord", fallback="pyav")
    assert clip.shape[0] == 2 and decode.discovered_frame_counts() == {}
    assert decode.fallback_reason(path).startswith("read with pyav: decord failed to decode frames 3..7")


def test_a_known_frame_count_and_the_readers_bound_each_other(tmp_path, monkeypatch):
    """A reader that reports no count reads within the known one; a known count above the reader's is bounded by
    the reader's (it was passed to the decoder as it was)."""
    path = make_h264(str(tmp_path / "a.mp4"), n=30)

    class NoCount(decode._PyAVReader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.num_frames = 0

    monkeypatch.setitem(decode._READERS, "nocount", NoCount)
    assert decode.read_frames(path, lambda n: [n - 1], "nocount", num_frames=30).shape[0] == 1
    with pytest.raises(decode.VideoReadError, match=r"frame index 35 outside 0\.\.29"):
        decode.read_frames(path, [35], "decord", num_frames=40)
