"""Exact resume and crash safety through the real launcher: 2 ranks on CPU, processes killed with SIGKILL.

With 12 clips, 2 ranks and 2 clips per rank an epoch is 3 optimizer steps; checkpoints are saved at the end of each
epoch. Augmentation (random crop, flip), MixUp, drop_path and dropout are all on, so the resumed run matches only if
weights, optimizer, scheduler, RNG states and the sampler position all come back.
"""

import os
import signal

import pytest

from tests.tools.conftest import launch, read_log, tiny_config, train_losses

pytestmark = pytest.mark.slow


def _config(folder, video_root):
    return tiny_config(
        str(folder), video_root,
        data={"train_list": os.path.join(video_root, "train12.txt")},
        train={"epochs": 2, "mixup_alpha": 0.8, "zero_stage": 1, "keep_last": 3},
    )  # fmt: skip


@pytest.fixture(scope="module")
def reference(video_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    out = str(folder / "run")
    result = launch(_config(folder, video_root), f"output_dir={out}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    losses = train_losses(out)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    return losses


def test_killed_after_three_steps_then_resume_auto_gives_identical_losses(reference, video_root, tmp_path):
    cfg_path, out = _config(tmp_path, video_root), str(tmp_path / "run")
    killed = launch(cfg_path, f"output_dir={out}", env={"AIM_VIDEO_FAULT": "after_epoch_save@3:rank0"})
    assert killed.returncode != 0
    assert sorted(train_losses(out)) == [1, 2, 3]
    resumed = launch(cfg_path, f"output_dir={out}", resume="auto")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    start = [r for r in read_log(out) if r["event"] == "start"][-1]
    assert start["resumed_from"].endswith("step_00000003") and start["start_step"] == 3
    assert train_losses(out) == reference  # bit-identical, steps 1-3 from the first run and 4-6 after the resume


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(reference, video_root, tmp_path):
    cfg_path, out = _config(tmp_path, video_root), str(tmp_path / "run")
    ckpts = os.path.join(out, "checkpoints")
    killed = launch(cfg_path, f"output_dir={out}", env={"AIM_VIDEO_FAULT": "during_save@6:rank0"})
    assert killed.returncode != 0
    assert open(os.path.join(ckpts, "latest")).read() == "step_00000003"
    assert os.path.isdir(os.path.join(ckpts, ".tmp-step_00000006"))  # the shards were written, never renamed
    assert not os.path.exists(os.path.join(ckpts, "step_00000006"))
    resumed = launch(cfg_path, f"output_dir={out}", resume="auto")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert not os.path.exists(os.path.join(ckpts, ".tmp-step_00000006"))
    assert open(os.path.join(ckpts, "latest")).read() == "step_00000006"
    assert train_losses(out) == reference


def test_a_stop_signal_on_one_rank_saves_at_the_next_step_and_resume_goes_on_exactly(reference, video_root, tmp_path):
    """Preemption: rank 1 alone gets SIGUSR1 after step 2, inside epoch 0; both ranks agree to save there and stop
    with 128 + the signal, and `--resume auto` finishes the run with the uninterrupted run's losses, bit for bit:
    the remaining samples of the epoch get the clips they would have had (each sample carries its own seed)."""
    cfg_path, out = _config(tmp_path, video_root), str(tmp_path / "run")
    stopped = launch(cfg_path, f"output_dir={out}", env={"AIM_VIDEO_FAULT": "after_step@2:rank1:signal=SIGUSR1"})
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stdout[-3000:] + stopped.stderr[-3000:]
    assert "stopped by SIGUSR1 at step 2: a checkpoint was saved there; continue with --resume auto" in stopped.stderr
    assert open(os.path.join(out, "checkpoints", "latest")).read() == "step_00000002"
    assert sorted(train_losses(out)) == [1, 2]
    events = read_log(out)
    assert [(r["signal"], r["step"]) for r in events if r["event"] == "stopped"] == [("SIGUSR1", 2)]
    assert not [r for r in events if r["event"] in ("eval", "epoch")]  # stopped at once
    # with other batches (or ranks) the position inside the epoch would name other clips: refused, not skipped over
    smaller = launch(cfg_path, f"output_dir={out}", "data.batch_size=1", resume="auto")
    assert smaller.returncode == 1, smaller.stderr[-3000:]
    assert "saved inside epoch 0, after 2 batches of 2 clips on each of 2 ranks; this run has 2 ranks of 1" in (
        smaller.stderr
    )
    resumed = launch(cfg_path, f"output_dir={out}", resume="auto")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    start = [r for r in read_log(out) if r["event"] == "start"][-1]
    assert start["start_step"] == 2
    assert train_losses(out) == reference
    # resuming the finished run trains nothing and leaves its summary and export as they were
    summary = open(os.path.join(out, "train_summary.json")).read()
    export = os.path.join(out, "model_trainable.safetensors")
    before = os.path.getmtime(export)
    again = launch(cfg_path, f"output_dir={out}", resume="auto")
    assert again.returncode == 0, again.stderr[-3000:]
    assert '"final_loss": ' in again.stdout and "NaN" not in again.stdout
    assert open(os.path.join(out, "train_summary.json")).read() == summary and os.path.getmtime(export) == before
