"""tools/demo.py's run folder: started afresh only when it is the demo's own (output_dir once named a user's folder)."""

import os
import sys

import pytest

import tools.demo as demo
from tools.demo import DEMO_MARKER, REPO, clear_run_folder, launcher


def test_only_an_empty_folder_or_a_previous_demo_run_is_cleared_and_the_new_one_is_marked(tmp_path):
    run = tmp_path / "run"
    clear_run_folder(str(run))  # absent: made, and marked as the demo's
    assert os.listdir(run) == [DEMO_MARKER]
    (run / "log.jsonl").write_text("{}\n")
    clear_run_folder(str(run))
    assert os.listdir(run) == [DEMO_MARKER]  # the previous demo run went
    empty = tmp_path / "empty"
    empty.mkdir()
    clear_run_folder(str(empty))
    assert os.listdir(empty) == [DEMO_MARKER]


def test_a_folder_of_anything_else_a_real_run_or_the_checkout_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    real = tmp_path / "runs" / "k400_b16_8f"  # what tools/train.py leaves: config.yaml, log.jsonl, checkpoints
    (real / "checkpoints" / "step_00120000").mkdir(parents=True)
    (real / "config.yaml").write_text("output_dir: runs/k400_b16_8f\n")
    (real / "log.jsonl").write_text("{}\n")
    for folder in (mine, real):
        with pytest.raises(SystemExit, match="is not a previous demo run"):
            clear_run_folder(str(folder))
    assert (mine / "notes.txt").read_text() == "keep me" and (real / "checkpoints" / "step_00120000").is_dir()
    for folder in (REPO, os.path.dirname(REPO)):
        with pytest.raises(SystemExit, match="holds the checkout"):
            clear_run_folder(folder)


def test_the_launcher_port_is_a_free_one(monkeypatch):
    """29500 + pid % 1000 met another demo (or a run on that port) now and then: the launch failed with
    EADDRINUSE. The demo now asks the system for a free port."""
    import socket

    from tools.demo import launcher

    with socket.socket() as busy:
        try:  # the port the old rule gave this process, held by another process
            busy.bind(("127.0.0.1", 29500 + os.getpid() % 1000))
            busy.listen(1)
        except OSError:  # already held by someone else: just as good
            pass
        cmd = launcher(2, "tools/train.py")
        port = int(cmd[cmd.index("--master_port") + 1])
        assert port != 29500 + os.getpid() % 1000
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))  # free


def test_one_rank_is_a_plain_process_without_the_launcher():
    assert launcher(1, "tools/train.py") == [sys.executable, "tools/train.py"]
    assert launcher(2, "tools/train.py")[1:3] == ["--num_gpus", "2"]


def test_the_default_run_folder_of_a_demo_before_the_marker_is_cleared(tmp_path, monkeypatch):
    checkout = tmp_path / "checkout"
    old = checkout / "runs" / "demo"
    (old / "checkpoints").mkdir(parents=True)
    (old / "log.jsonl").write_text("{}\n")  # an earlier demo's run, made before runs were marked
    monkeypatch.setattr(demo, "REPO", str(checkout))
    clear_run_folder(str(old))
    assert os.listdir(old) == [DEMO_MARKER]
