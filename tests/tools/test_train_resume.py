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


def test_a_zero_run_stopped_inside_an_epoch_goes_on_on_other_ranks_as_if_never_stopped(video_root, tmp_path):
    """Elastic resume: ZeRO-1 on 2 ranks (2 clips each) stopped after step 2, inside epoch 0, then resumed on 1 rank
    with 2 micro-batches per step (the same 4 clips a step); and the other way, 1 rank to 2. DeepSpeed's optimizer
    shards only load under the saving ranks; the whole optimizer state of optimizer.safetensors is dealt out to the
    new partitions, and the epoch's order and per-sample seeds do not depend on the ranks. With nothing random per
    rank (no MixUp, dropout or drop-path) the losses of steps 3-6 are the uninterrupted 2-rank run's, up to the
    order of float sums."""
    fixed = {"train": {"epochs": 2, "mixup_alpha": 0.0, "zero_stage": 1, "keep_last": 3},
             "model": {"drop_path_rate": 0.0, "head_dropout": 0.0},
             "data": {"train_list": os.path.join(video_root, "train12.txt")}}  # fmt: skip
    (tmp_path / "ref").mkdir()
    ref_out = str(tmp_path / "ref" / "run")
    reference = launch(tiny_config(str(tmp_path / "ref"), video_root, **fixed), f"output_dir={ref_out}")
    assert reference.returncode == 0, reference.stderr[-3000:]
    cfg_path, out = tiny_config(str(tmp_path), video_root, **fixed), str(tmp_path / "run")
    stopped = launch(cfg_path, f"output_dir={out}", env={"AIM_VIDEO_FAULT": "after_step@2:rank1:signal=SIGUSR1"})
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-3000:]
    step2 = os.path.join(out, "checkpoints", "step_00000002")
    assert os.path.isfile(os.path.join(step2, "optimizer.safetensors"))
    # 6 clips a step cannot continue after the 8 clips of the epoch already trained on: refused, naming both
    odd = launch(cfg_path, f"output_dir={out}", "data.batch_size=3", resume="auto")
    assert odd.returncode == 1 and "after 8 videos of its order" in odd.stderr, odd.stderr[-3000:]
    assert "this run's optimizer step takes 6" in odd.stderr and "the saved run's: 4" in odd.stderr
    resumed = launch(cfg_path, f"output_dir={out}", "train.grad_accum_steps=2", ranks=1, resume="auto")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "global batch changed" not in resumed.stderr
    start = [r for r in read_log(out) if r["event"] == "start"][-1]
    assert (start["world_size"], start["start_step"], start["global_batch"]) == (1, 2, 4)
    expected, got = train_losses(ref_out), train_losses(out)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    assert got[1] == expected[1] and got[2] == expected[2]  # before the stop: the same 2-rank run
    for step in (3, 4, 5, 6):
        assert abs(got[step] - expected[step]) < 1e-6, (step, got[step], expected[step])
    # 1 rank (2 micro-batches a step) stopped after step 2, then 2 ranks
    grown = str(tmp_path / "grown")
    one = launch(cfg_path, f"output_dir={grown}", "train.grad_accum_steps=2", ranks=1,
                 env={"AIM_VIDEO_FAULT": "after_step@2:rank0:signal=SIGUSR1"})  # fmt: skip
    assert one.returncode == 128 + signal.SIGUSR1, one.stderr[-3000:]
    two = launch(cfg_path, f"output_dir={grown}", resume="auto")
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    got = train_losses(grown)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in got:
        assert abs(got[step] - expected[step]) < 1e-6, (step, got[step], expected[step])


def test_the_final_evaluation_reaches_best_json_after_a_step_save_or_a_stop_at_the_last_step(video_root, tmp_path):
    """The final evaluation's metric must reach the last checkpoint and best.json: (a) a step save that lands on
    train.max_steps used to keep the checkpoint without it; (b) a stop signal at the very last step skipped the
    evaluation, and the resume found nothing to train (now the checkpoint says its evaluation is pending, and the
    resume runs it, logged with the epoch it belongs to)."""
    sections = {"data": {"train_list": os.path.join(video_root, "train12.txt"),
                         "val_list": os.path.join(video_root, "train12.txt"), "test_num_clips": 1},
                "train": {"epochs": 1, "eval_every": 0}}  # fmt: skip
    cfg_path = tiny_config(str(tmp_path), video_root, **sections)
    step_saved = str(tmp_path / "step_saved")
    run = launch(cfg_path, f"output_dir={step_saved}", "train.max_steps=2", "train.save_every_steps=2")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    evals = [r for r in read_log(step_saved) if r["event"] == "eval"]
    best = open(os.path.join(step_saved, "checkpoints", "best.json")).read()
    assert len(evals) == 1 and '"name": "step_00000002"' in best and str(evals[0]["top1"]) in best

    stopped_out = str(tmp_path / "stopped")  # 3 steps per epoch: stopped after the last one
    last_step = {"AIM_VIDEO_FAULT": "after_step@3:rank0:signal=SIGUSR1"}
    stopped = launch(cfg_path, f"output_dir={stopped_out}", env=last_step)
    assert stopped.returncode == 128 + signal.SIGUSR1, stopped.stderr[-3000:]
    assert not [r for r in read_log(stopped_out) if r["event"] == "eval"]
    resumed = launch(cfg_path, f"output_dir={stopped_out}", resume="auto")
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    evals = [r for r in read_log(stopped_out) if r["event"] == "eval"]
    assert len(evals) == 1 and evals[0]["step"] == 3 and evals[0]["epoch"] == 0  # it said epoch 1 of a 1-epoch run
    assert '"name": "step_00000003"' in open(os.path.join(stopped_out, "checkpoints", "best.json")).read()
