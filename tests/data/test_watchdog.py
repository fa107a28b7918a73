"""watchdog.py: a read that never returns is killed after the limit, named, and the next read works."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from aim_video.data import decode, watchdog
from tests.data.videos import SleepyReader, make_h264, mean_abs_diff, sequential_frames


@pytest.fixture(autouse=True)
def sleepy_backend():
    decode.register_backend("sleepy", SleepyReader)
    yield
    decode._READERS.pop("sleepy", None)


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> str:
    return make_h264(str(tmp_path_factory.mktemp("wd") / "clean.mp4"), n=50, gop=10)


def test_read_past_the_limit_raises_naming_the_video_and_the_next_read_works(clean):
    start = time.monotonic()
    with pytest.raises(decode.ReadTimeout, match="read took longer than 1 s") as err:
        decode.read_frames(clean, [0, 1], "sleepy", timeout_s=1.0)
    assert err.value.path == clean and isinstance(err.value, decode.VideoReadError)
    assert time.monotonic() - start < 10
    clip = decode.read_frames(clean, [7, 3], "decord", timeout_s=30)  # a fresh child after the kill
    ref = sequential_frames(clean)
    assert mean_abs_diff(clip[0], ref[7]) < 1.0 and mean_abs_diff(clip[1], ref[3]) < 1.0


def test_no_timeout_reads_in_this_process(clean):
    worker = watchdog.worker_for_this_process()
    worker.kill()
    decode.read_frames(clean, [1], "decord")
    decode.read_frames(clean, [1], "decord", timeout_s=0)
    assert not worker.alive()  # no child forked without a limit


def _crash(_: object) -> None:
    os._exit(3)


def _nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_run_pool_kills_a_hung_item_and_finishes_the_others():
    start = time.monotonic()
    results = {item: (res, err) for item, res, err in watchdog.run_pool(_nap, [0.0, 30.0, 0.1, 0.2], 2, 1.5)}
    assert time.monotonic() - start < 15
    assert results[0.0] == (0.0, None) and results[0.1] == (0.1, None) and results[0.2] == (0.2, None)
    assert isinstance(results[30.0][1], watchdog.CallTimeout)


def _killed(_: object) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_child_death_is_reported():
    worker = watchdog.ForkWorker()
    with pytest.raises(watchdog.ChildDied, match="exit 3") as crashed:
        worker.call(_crash, None, timeout_s=10)
    assert not crashed.value.killed_from_outside
    assert worker.call(_nap, 0.0, timeout_s=10) == 0.0  # restarted
    with pytest.raises(watchdog.ChildDied, match="signal 9") as killed:  # the out-of-memory killer, say
        worker.call(_killed, None, timeout_s=10)
    assert killed.value.killed_from_outside
    worker.kill()


class _KilledOnce(decode._DecordReader):
    """Killed from outside (as by the out-of-memory killer) on its first read in this process's child."""

    def get(self, indices):
        if not os.path.exists(self.path + ".killed"):
            open(self.path + ".killed", "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().get(indices)


class _KilledAlways(decode._DecordReader):
    """Killed from outside on every read (a decode that needs more memory than the machine has)."""

    def get(self, indices):
        os.kill(os.getpid(), signal.SIGKILL)


def test_a_decoder_killed_from_outside_is_not_the_videos_fault(clean, tmp_path):
    """A child killed by the out-of-memory killer was taken for a video that cannot be decoded: the training set
    skipped the video for the rest of the run, and the fallback backend read it from then on. One kill is tried
    again (evaluation, which never retries, lost the video); a second in a row is the file's: the fallback reads it,
    or, without one, it is an unreadable video."""
    import shutil

    video = str(tmp_path / "v.mp4")
    shutil.copy(clean, video)
    ref = sequential_frames(clean)
    decode.register_backend("killed_once", _KilledOnce)
    decode.register_backend("killed_always", _KilledAlways)
    try:
        clip = decode.read_frames(video, [0, 4], "killed_once", timeout_s=30, fallback="pyav")
        assert video not in decode._FALLBACKS  # read by a second child of the same backend
        assert mean_abs_diff(clip[1].numpy(), ref[4]) < 1.0
        with pytest.raises(decode.VideoReadError, match="killed_always decoder was killed twice.*signal 9") as err:
            decode.read_frames(video, [0, 4], "killed_always", timeout_s=30)
        assert not isinstance(err.value, decode.DecoderKilled)  # no fallback: unreadable, skipped for the run
        clip = decode.read_frames(video, [0, 4], "killed_always", timeout_s=30, fallback="pyav")
        assert "killed_always decoder was killed twice" in decode._FALLBACKS[video]
        assert mean_abs_diff(clip[1].numpy(), ref[4]) < 1.0
    finally:
        decode._READERS.pop("killed_once", None)
        decode._READERS.pop("killed_always", None)
        decode._FALLBACKS.pop(video, None)


def test_a_child_that_died_between_reads_is_replaced_and_reaped(clean):
    """Killed while idle (out of memory, say): the next read starts a new child instead of failing on a broken pipe,
    and the dead one is not left a zombie."""
    decode.read_frames(clean, [0], "decord", timeout_s=30)
    worker = watchdog.worker_for_this_process()
    dead = worker.pid
    os.kill(dead, signal.SIGKILL)
    time.sleep(0.2)
    clip = decode.read_frames(clean, [7, 3], "decord", timeout_s=30)
    ref = sequential_frames(clean)
    assert mean_abs_diff(clip[0], ref[7]) < 1.0 and mean_abs_diff(clip[1], ref[3]) < 1.0
    assert worker.pid not in (None, dead)
    assert not os.path.exists(f"/proc/{dead}")  # reaped: no zombie left


class _Clips(torch.utils.data.Dataset):
    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        backend = "sleepy" if "hang" in self.paths[i] else "decord"
        try:
            return {"video": decode.read_frames(self.paths[i], [0, 4], backend, timeout_s=2.0), "error": ""}
        except decode.VideoReadError as err:
            return {"video": torch.zeros(2, 64, 96, 3, dtype=torch.uint8), "error": str(err)}


def test_guarded_reads_inside_dataloader_workers(clean, tmp_path):
    """DataLoader workers are daemonic (multiprocessing refuses them children); the fork-based child still works."""
    hang = str(tmp_path / "hang.mp4")
    os.link(clean, hang)
    loader = torch.utils.data.DataLoader(_Clips([clean, hang, clean]), batch_size=1, num_workers=1)
    errors = [b["error"][0] for b in loader]
    assert errors[0] == "" and errors[2] == ""
    assert errors[1].startswith(hang) and "read took longer than 2 s" in errors[1]


def test_a_forked_process_never_uses_its_parents_child(clean):
    parent_worker = watchdog.worker_for_this_process()
    decode.read_frames(clean, [0], "decord", timeout_s=30)
    assert parent_worker.alive()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the forked process: its own child, forked on first use
        ok = 0
        try:
            mine = watchdog.worker_for_this_process()
            ok = int(mine is not parent_worker and not mine.alive() and not parent_worker.alive())
            decode.read_frames(clean, [1], "decord", timeout_s=30)
            ok &= int(mine.alive() and mine.pid != parent_worker.pid)
            mine.kill()
        finally:
            os.write(write_end, bytes([ok]))
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read_end, 1) == b"\x01"
    assert parent_worker.alive() and decode.read_frames(clean, [2], "decord", timeout_s=30).shape[0] == 1


@pytest.mark.skipif(bool(decode.torchcodec_unavailable()), reason="needs torchcodec's FFmpeg libraries")
def test_a_guarded_torchcodec_read_works_after_torchcodec_ran_in_the_parent(tmp_path):
    """torch's OpenMP pool does not survive fork: before the child set one thread, its first parallel op (torchcodec's
    frame conversion) waited forever once the parent had run one, and every guarded read timed out."""
    import subprocess
    import sys

    from aim_video.profiling.videos import scene_video

    path = scene_video(str(tmp_path / "v.mp4"), 340, 256, seconds=4)  # hung; 64x96 test videos did not
    code = (
        "import sys; from aim_video.data import decode\n"
        f"p = {path!r}; idx = [0, 50, 99]\n"
        "a = decode.read_frames(p, idx, 'torchcodec')  # in this process: torch's thread pool starts\n"
        "b = decode.read_frames(p, idx, 'torchcodec', timeout_s=20)  # in the forked child\n"
        "print('same' if bool((a == b).all()) else 'differ')\n"
    )
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "same", out.stderr[-2000:]


def _unpicklable(_: object):
    return lambda: None  # a result pickle cannot send back


def test_a_result_the_child_cannot_send_back_is_an_error_and_the_child_goes_on():
    """The child answers with an error naming the pickling failure; it does not die (a new fork per such call, and
    a ChildDied the readers take for a crashed decoder)."""
    worker = watchdog.ForkWorker()
    try:
        with pytest.raises(RuntimeError, match="pickle|Pickl") as err:
            worker.call(_unpicklable, None, timeout_s=10)
        assert not isinstance(err.value, watchdog.ChildDied)
        pid = worker.pid
        assert worker.call(_nap, 0.0, timeout_s=10) == 0.0 and worker.pid == pid  # the same child
    finally:
        worker.kill()


def test_a_cuda_decode_under_a_read_timeout_is_refused_before_forking(clean):
    """A forked child cannot use CUDA: decode_device=cuda needs data.read_timeout_s=0, said in plain words."""
    with pytest.raises(ValueError, match="CUDA cannot be used; set data.read_timeout_s=0"):
        watchdog.GuardedReader(clean, "torchcodec", 1, {"device": "cuda:0"}, watchdog.Deadline(10))
    with pytest.raises(ValueError, match="unknown decoding backend 'nope'"):
        watchdog.GuardedReader(clean, "nope", 1, {}, watchdog.Deadline(10))


def test_closing_a_reader_whose_deadline_has_passed_keeps_the_child(clean):
    """The read's budget is spent (a slow but finished read): close sends nothing the child could not answer in
    time, so the healthy child is not killed and forked again for the next video."""
    reader = watchdog.GuardedReader(clean, "decord", 1, {}, watchdog.Deadline(30))
    worker = watchdog.worker_for_this_process()
    pid = worker.pid
    assert reader.num_frames == 50 and reader.get([0, 3]).shape[0] == 2
    reader._deadline.end = time.monotonic() - 1  # spent
    reader.close()
    assert worker.alive() and worker.pid == pid


def test_a_relative_path_is_read_from_the_folder_the_process_is_in_now(clean, monkeypatch):
    """The child is forked once per process: a relative path was looked up in the folder of that first fork, so a
    notebook that changed folder read 'file not found' for a file that is there."""
    watchdog.GuardedReader(clean, "decord", 1, {}, watchdog.Deadline(30)).close()  # the child, forked here
    monkeypatch.chdir(os.path.dirname(clean))
    reader = watchdog.GuardedReader(os.path.basename(clean), "decord", 1, {}, watchdog.Deadline(30))
    try:
        assert reader.num_frames == 50 and reader.get([0, 49]).shape[0] == 2
    finally:
        reader.close()


def test_an_absolute_path_is_read_when_the_folder_of_both_processes_is_gone(clean, tmp_path, monkeypatch):
    """Following the parent's folder (for relative paths) asked both processes for their current folder on every
    open, which fails once it is deleted: every read of an absolute path failed naming no video."""
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    watchdog.worker_for_this_process().kill()  # the next read forks the child here
    watchdog.GuardedReader(clean, "decord", 1, {}, watchdog.Deadline(30)).close()
    gone.rmdir()
    reader = watchdog.GuardedReader(clean, "decord", 1, {}, watchdog.Deadline(30))
    try:
        assert os.path.isabs(clean) and reader.num_frames == 50
    finally:
        reader.close()
