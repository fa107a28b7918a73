"""tools/demo.py's run folder: started afresh only when it is the demo's own (output_dir once named a user's folder)."""

import os

import pytest

from tools.demo import REPO, clear_run_folder


def test_only_an_empty_folder_or_a_previous_run_is_cleared(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("{}\n")
    (run / "checkpoints").mkdir()
    clear_run_folder(str(run))
    assert not run.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    clear_run_folder(str(empty))
    assert not empty.exists()
    clear_run_folder(str(tmp_path / "absent"))  # nothing to do


def test_a_folder_of_anything_else_or_the_checkout_is_refused(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match="holds no previous run"):
        clear_run_folder(str(mine))
    assert (mine / "notes.txt").read_text() == "keep me"
    for folder in (REPO, os.path.dirname(REPO)):
        with pytest.raises(SystemExit, match="holds the checkout"):
            clear_run_folder(folder)
