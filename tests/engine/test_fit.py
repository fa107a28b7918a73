"""fit: whole training runs in this process (stops, resumes, evaluation), and the run history a resume rebuilds."""

import json
import os

import pytest
import torch

from aim_video.config import ConfigError, load_config
from aim_video.engine.checkpoint_io import CheckpointError, read_meta
from aim_video.engine.train_loop import run_history

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


def test_run_history_reads_every_process_of_a_run_from_the_log(tmp_path):
    """train_summary.json after a resume listed only the last process's evaluations and loader failures."""
    lines = [
        {"event": "start", "resumed_from": None, "start_step": 0},  # an earlier run in the same folder
        {"event": "eval", "step": 3, "epoch": 0, "top1": 10.0},
        {"event": "start", "resumed_from": None, "start_step": 0},  # this run
        {"event": "epoch", "steps": 3, "failures": 1, "fallback_reads": 2},
        {"event": "eval", "step": 3, "epoch": 0, "top1": 50.0},
        {"event": "stopped", "step": 5, "failures": 1, "fallback_reads": 0},  # inside epoch 1
        {"event": "start", "resumed_from": "ckpt/step_00000005", "start_step": 5},
        {"event": "epoch", "steps": 6, "failures": 0, "fallback_reads": 1},
        {"event": "eval", "step": 6, "epoch": 1, "top1": 60.0},  # then resumed from step 3 again:
        {"event": "start", "resumed_from": "ckpt/step_00000003", "start_step": 3},  # steps 4-6 run again
        {"event": "epoch", "steps": 6, "failures": 4, "fallback_reads": 0},
        {"event": "eval", "step": 6, "epoch": 1, "top1": 75.0},
    ]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"event": "tr')  # the last line cut short
    history = run_history(str(path))
    assert [(e["step"], e["top1"]) for e in history["eval"]] == [(3, 50.0), (6, 75.0)]
    assert history["eval"][0] == {"step": 3, "epoch": 0, "top1": 50.0}
    assert (history["failures"], history["fallbacks"]) == (1 + 4, 2 + 0)


# ----- whole runs in this process (a world of one, 8 tiny videos, 4 steps an epoch): stops, resumes, evaluations


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A config writer for a depth-2 ViT on 8 clips (train and val list), 1 rank x 2 clips: 4 steps an epoch."""
    from tests.tools.conftest import TINY_VIT, make_videos, tiny_config, write_base_weights

    root = str(tmp_path_factory.mktemp("videos"))
    listed = make_videos(root, count=8)
    write_base_weights(os.path.join(root, "base_vit.safetensors"), TINY_VIT)

    def config(folder, *overrides: str):
        path = tiny_config(
            str(folder), root,
            data={"val_list": listed, "test_num_clips": 1, "num_workers": 0},
            train={"epochs": 2, "eval_every": 1, "keep_last": 5},
        )  # fmt: skip
        return load_config(path, [f"output_dir={folder / 'run'}", *overrides])

    return config


def _fit(cfg, resume="", fault="", monkeypatch=None):
    from aim_video.engine.fit import fit

    if fault:  # aim_video.engine.distributed.fault_point: e.g. a stop signal after a given step
        monkeypatch.setenv("AIM_VIDEO_FAULT", fault)
    else:
        monkeypatch.delenv("AIM_VIDEO_FAULT", raising=False)
    return fit(cfg, resume=resume)


def _events(out, kind, *keys):
    from tests.tools.conftest import read_log

    return [tuple(r[k] for k in keys) for r in read_log(out) if r["event"] == kind]


EVAL = ("epoch", "step", "top1", "top5", "mean_class_acc")


def test_a_stop_at_the_last_step_of_an_epoch_puts_its_evaluation_off_to_the_resume(tiny_run, tmp_path, monkeypatch):
    """SIGUSR1 after step 4, the last of epoch 0 of 2: the stop used to save and leave before the epoch's end, and the
    resume went on with epoch 1, so epoch 0's evaluation, its metric in step 4's checkpoint and best.json were lost.
    Now the `epoch` event is logged, the checkpoint says its evaluation is pending, and the resume runs it first:
    evaluations, metrics and best.json are the uninterrupted run's. Also: save_every_steps=4 saves at the epoch's
    end with save_every=2 (it was skipped there), and train_summary.json lists every process's evaluations."""
    from aim_video.engine.distributed import TrainingStopped

    (tmp_path / "ref").mkdir()
    ref_cfg = tiny_run(tmp_path / "ref", "train.save_every=2", "train.save_every_steps=4")
    ref = _fit(ref_cfg, monkeypatch=monkeypatch)
    ref_out = ref_cfg.output_dir
    assert sorted(os.listdir(os.path.join(ref_out, "checkpoints"))) == [
        "best.json", "latest", "step_00000004", "step_00000008"]  # fmt: skip
    cfg = tiny_run(tmp_path, "train.save_every=2", "train.save_every_steps=4")
    with pytest.raises(TrainingStopped) as stopped:
        _fit(cfg, fault="after_step@4:rank0:signal=SIGUSR1", monkeypatch=monkeypatch)
    out = cfg.output_dir
    assert stopped.value.step == 4 and _events(out, "eval", "step") == []  # stopped at once
    assert _events(out, "epoch", "epoch", "steps", "finished") == [(0, 4, True)]
    step4 = os.path.join(out, "checkpoints", "step_00000004")
    assert read_meta(step4)["epoch_end_pending"] is True and read_meta(step4)["metric"] is None
    summary = _fit(cfg, resume="auto", monkeypatch=monkeypatch)
    assert _events(out, "eval", *EVAL) == _events(ref_out, "eval", *EVAL) and len(_events(out, "eval", "step")) == 2
    assert _events(out, "train", "step", "loss") == _events(ref_out, "train", "step", "loss")
    for name in ("step_00000004", "step_00000008"):
        assert read_meta(os.path.join(out, "checkpoints", name))["metric"] == read_meta(
            os.path.join(ref_out, "checkpoints", name))["metric"] is not None  # fmt: skip
    best = os.path.join("checkpoints", "best.json")
    assert open(os.path.join(out, best)).read() == open(os.path.join(ref_out, best)).read()
    assert summary["eval"] == ref["eval"] and summary["best"] == ref["best"]


def test_a_stop_during_the_epoch_end_evaluation_stops_there_and_the_final_one_keeps_its_epoch(
    tiny_run, tmp_path, monkeypatch
):
    """(1) SIGUSR1 during epoch 0's evaluation (save_every=2: the epoch's end saves nothing) was honoured only after
    epoch 1's first step; now the run saves at step 4 with the evaluation's metric and stops there. (2) A resume
    refused (train.lr changed) leaves config.yaml and deepspeed_config.json as they were. (3) Stopped at the very
    last step, the resume's catch-up evaluation was logged as epoch 2 of a 2-epoch run."""
    from aim_video.engine.checkpoint_io import read_meta
    from aim_video.engine.distributed import TrainingStopped

    cfg = tiny_run(tmp_path, "train.save_every=2")
    out = cfg.output_dir
    with pytest.raises(TrainingStopped) as stopped:
        _fit(cfg, fault="epoch_end@4:rank0:signal=SIGUSR1", monkeypatch=monkeypatch)
    assert stopped.value.step == 4 and [s for (s,) in _events(out, "train", "step")] == [1, 2, 3, 4]
    (top1,) = [t for (t,) in _events(out, "eval", "top1")]
    step4 = read_meta(os.path.join(out, "checkpoints", "step_00000004"))
    assert step4["metric"] == top1 and step4["epoch_end_pending"] is False

    files = {name: open(os.path.join(out, name)).read() for name in ("config.yaml", "deepspeed_config.json")}
    with pytest.raises(CheckpointError, match="train.lr"):
        _fit(tiny_run(tmp_path, "train.save_every=2", "train.lr=0.5"), resume="auto", monkeypatch=monkeypatch)
    assert {name: open(os.path.join(out, name)).read() for name in files} == files

    with pytest.raises(TrainingStopped):
        _fit(cfg, resume="auto", fault="after_step@8:rank0:signal=SIGUSR1", monkeypatch=monkeypatch)
    assert _events(out, "eval", "epoch", "step") == [(0, 4)]
    summary = _fit(cfg, resume="auto", monkeypatch=monkeypatch)
    assert _events(out, "eval", "epoch", "step") == [(0, 4), (1, 8)]
    assert [(e["epoch"], e["step"]) for e in summary["eval"]] == [(0, 4), (1, 8)]  # both processes' evaluations
    assert summary["note"].endswith("its final evaluation ran now") and summary["best"]["name"] in (
        "step_00000004", "step_00000008")  # fmt: skip
    assert read_meta(os.path.join(out, "checkpoints", "step_00000008"))["metric"] == summary["eval"][1]["top1"]


def test_a_val_list_that_cannot_be_evaluated_stops_the_run_before_training(tiny_run, tmp_path, monkeypatch):
    """The val loader was built at the first evaluation: a val list of missing files, or without labels (NaN metrics
    every epoch), was found only after a whole epoch of training."""
    from aim_video.data.annotations import AnnotationError

    cfg = tiny_run(tmp_path)
    unlabelled = tmp_path / "val_unlabelled.txt"
    unlabelled.write_text("".join(line.rsplit(" ", 1)[0] + "\n" for line in open(cfg.data.val_list) if line.strip()))
    with_gone = tmp_path / "val_with_gone.txt"  # eval.strict, as tools/test.py --strict: none may be left out
    with_gone.write_text(open(cfg.data.val_list).read() + f"{tmp_path / 'gone.mp4'} 0\n")
    cases = (
        (str(unlabelled), "has no labels", False),
        (str(tmp_path / "gone.txt"), "not found", False),
        (str(with_gone), "1 listed videos were left out before evaluation and eval.strict is set", True),
    )
    for val_list, message, strict in cases:
        cfg.data.val_list = val_list
        cfg.eval.strict = strict  # with data.missing_files=drop: the missing video is left out, then refused
        cfg.data.missing_files = "drop" if strict else "fail"
        with pytest.raises(AnnotationError, match=message):
            _fit(cfg, monkeypatch=monkeypatch)
        # refused before the run's files are written: config.yaml and log.jsonl were left behind, a start logged,
        # then an empty output_dir/checkpoints
        assert not os.path.exists(cfg.output_dir)
    kept = tmp_path / "kept"  # a folder the user made stays, only the checkpoints folder the run made goes
    kept.mkdir()
    cfg.output_dir = str(kept)
    with pytest.raises(AnnotationError, match="1 listed videos were left out"):
        _fit(cfg, monkeypatch=monkeypatch)
    assert os.listdir(kept) == []


def test_an_evaluation_that_fails_keeps_its_trained_epoch_and_the_resume_only_evaluates(
    tiny_run, tmp_path, monkeypatch
):
    """The epoch's checkpoint was written after its evaluation: a strict evaluation that met an unreadable video (or
    a kill during a long one, past a scheduler's grace period) lost the epoch, and every resume trained it again.
    Now it is saved first, marked pending; the resume evaluates it without training, and the metric is written into
    the same checkpoint."""
    from aim_video.eval.multiview import MissingVideosError

    cfg = tiny_run(tmp_path, "eval.strict=true")
    bad = tmp_path / "not_a_video.mp4"
    bad.write_text("not a video")
    good_val = cfg.data.val_list
    cfg.data.val_list = str(tmp_path / "val_with_bad.txt")
    open(cfg.data.val_list, "w").write(open(good_val).read() + f"{bad} 1\n")
    with pytest.raises(MissingVideosError, match="1 of 9 videos could not be read"):
        _fit(cfg, monkeypatch=monkeypatch)
    out = cfg.output_dir
    step4 = os.path.join(out, "checkpoints", "step_00000004")
    assert read_meta(step4)["epoch_end_pending"] is True and read_meta(step4)["metric"] is None
    assert os.path.basename(open(os.path.join(out, "checkpoints", "latest")).read()) == "step_00000004"
    cfg.data.val_list = good_val  # the list fixed: the resume evaluates epoch 0, then trains epoch 1 only
    summary = _fit(cfg, resume="auto", monkeypatch=monkeypatch)
    assert [s for (s,) in _events(out, "train", "step")] == [1, 2, 3, 4, 5, 6, 7, 8]  # steps 1-4 once
    assert [(e["epoch"], e["step"]) for e in summary["eval"]] == [(0, 4), (1, 8)]
    assert read_meta(step4)["metric"] == summary["eval"][0]["top1"] is not None
    assert read_meta(step4)["epoch_end_pending"] is False


def test_a_resume_with_another_global_batch_goes_on_from_the_same_point_of_the_lr_schedule(
    tiny_run, tmp_path, monkeypatch
):
    """The restored schedule kept the saved count of steps while its length came from the new steps per epoch: a run
    resumed with twice the global batch ran past the end of its schedule (the floor lr for the rest of training).
    Stopped after step 2 of 4 (2 clips a step), resumed with 4 clips a step: its steps take the lrs of a run that
    had 4 clips a step from the start, at the same point of training."""
    from aim_video.engine.distributed import TrainingStopped

    (tmp_path / "ref").mkdir()
    ref_cfg = tiny_run(tmp_path / "ref", "data.batch_size=4", "train.min_lr=0")
    _fit(ref_cfg, monkeypatch=monkeypatch)  # 2 steps an epoch, 4 in all
    ref = dict(_events(ref_cfg.output_dir, "train", "step", "lr"))
    cfg = tiny_run(tmp_path, "train.min_lr=0")
    with pytest.raises(TrainingStopped):
        _fit(cfg, fault="after_step@2:rank0:signal=SIGUSR1", monkeypatch=monkeypatch)
    resumed = tiny_run(tmp_path, "data.batch_size=4", "train.min_lr=0")
    _fit(resumed, resume="auto", monkeypatch=monkeypatch)
    lrs = [lr for step, lr in _events(cfg.output_dir, "train", "step", "lr") if step > 2]
    assert len(lrs) == 3 and lrs == pytest.approx([ref[2], ref[3], ref[4]])  # 4 videos done: step 1 of 4 done
    assert lrs[-1] < lrs[0] and ref[4] > 0
    # the count goes on from the saved step 2 in steps of the new size: the run (and its progress bar) ends at 5,
    # where the bar's total was the schedule's 4 steps and it stopped at 60% of a finished run
    assert _events(cfg.output_dir, "start", "start_step", "last_step")[-1] == (2, 5)


def test_a_resume_whose_position_ends_the_epoch_in_the_new_layout_runs_that_epochs_evaluation(
    tiny_run, tmp_path, monkeypatch
):
    """Saved after 3 of 4 steps of 2 clips; resumed with 3 clips a step, the epoch's 6 videos done fill its 2 steps:
    the resume went on with epoch 1, and epoch 0 was never evaluated nor saved at its end."""
    from aim_video.engine.distributed import TrainingStopped

    cfg = tiny_run(tmp_path)
    with pytest.raises(TrainingStopped):
        _fit(cfg, fault="after_step@3:rank0:signal=SIGUSR1", monkeypatch=monkeypatch)
    summary = _fit(tiny_run(tmp_path, "data.batch_size=3"), resume="auto", monkeypatch=monkeypatch)
    assert [(e["epoch"], e["step"]) for e in summary["eval"]] == [(0, 3), (1, 5)]
    assert read_meta(os.path.join(cfg.output_dir, "checkpoints", "step_00000003"))["metric"] is not None


def test_a_pending_checkpoint_of_another_folder_resumes_into_this_runs_own(tiny_run, tmp_path, monkeypatch):
    """Stopped at the last step of an epoch (its evaluation pending), resumed with --resume <that folder> into a new
    output_dir: the metric was to be written into a checkpoint of this run's folder that did not exist (a crash after
    the evaluation). It is saved in this run's folder with its metric; the other run's is left as it was."""
    from aim_video.engine.distributed import TrainingStopped

    (tmp_path / "a").mkdir()
    first = tiny_run(tmp_path / "a")
    with pytest.raises(TrainingStopped):
        _fit(first, fault="after_step@4:rank0:signal=SIGUSR1", monkeypatch=monkeypatch)
    step4 = os.path.join(first.output_dir, "checkpoints", "step_00000004")
    (tmp_path / "b").mkdir()
    second = tiny_run(tmp_path / "b")
    summary = _fit(second, resume=step4, monkeypatch=monkeypatch)
    assert [(e["epoch"], e["step"]) for e in summary["eval"]] == [(0, 4), (1, 8)]
    mine = read_meta(os.path.join(second.output_dir, "checkpoints", "step_00000004"))
    assert mine["metric"] == summary["eval"][0]["top1"] and read_meta(step4)["epoch_end_pending"] is True


def test_a_new_run_in_a_folder_with_checkpoints_is_refused_as_bad_input(tiny_run, tmp_path, monkeypatch):
    """best.json and keep_last mixed an earlier run's saves with the new run's; --resume auto after a stop went on
    with the earlier run. A config error (exit status 2), not a damaged checkpoint."""
    from aim_video.config import ConfigError

    cfg = tiny_run(tmp_path, "train.epochs=1", "train.eval_every=-1")
    _fit(cfg, monkeypatch=monkeypatch)
    with pytest.raises(ConfigError, match="holds the checkpoints of an earlier run .* --resume auto"):
        _fit(cfg, monkeypatch=monkeypatch)
    assert _fit(cfg, resume="auto", monkeypatch=monkeypatch)["note"].startswith("nothing to train")


def test_a_run_started_from_another_runs_weights_trains_from_them_and_a_resume_does_not_start_again(
    tiny_run, tmp_path, monkeypatch
):
    """model.init_trainable=<run folder>: the adapters, temporal embedding, norm and head (same classes) are the
    finished run's when the new run starts (with lr 0 they are still those at its end); a resume of the new run
    restores its own checkpoint and does not read the other run's weights again."""
    from aim_video.engine.distributed import TrainingStopped
    from aim_video.models.trainable_io import read_trainable

    (tmp_path / "first").mkdir()
    first = tiny_run(tmp_path / "first", "train.epochs=1", "train.eval_every=-1")
    _fit(first, monkeypatch=monkeypatch)
    (tmp_path / "second").mkdir()
    frozen = ("train.lr=0", "train.min_lr=0", "train.epochs=1", "train.eval_every=-1")
    second = tiny_run(tmp_path / "second", f"model.init_trainable={first.output_dir}", *frozen)
    with pytest.raises(TrainingStopped):
        _fit(second, fault="after_step@2:rank0:signal=SIGUSR1", monkeypatch=monkeypatch)
    starts = _events(second.output_dir, "start", "started_from")
    assert starts[0][0].startswith(f"started from {first.output_dir}/model_trainable.safetensors: ")
    _fit(second, resume="auto", monkeypatch=monkeypatch)
    assert _events(second.output_dir, "start", "started_from")[1] == ("",)  # resumed: its own checkpoint
    a = read_trainable(os.path.join(first.output_dir, "model_trainable.safetensors"))[0]
    b = read_trainable(os.path.join(second.output_dir, "model_trainable.safetensors"))[0]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_unknown_architecture_is_a_config_error_before_anything_starts(tiny_run, tmp_path, monkeypatch):
    """It was a traceback and exit status 1 from timm, after the process group had started."""
    from aim_video.config import ConfigError

    cfg = tiny_run(tmp_path, "model.arch=vit_base_patch16_clip_quickgelu_2244")
    with pytest.raises(ConfigError, match="is not a timm architecture"):
        _fit(cfg, monkeypatch=monkeypatch)
    assert not os.path.exists(cfg.output_dir)


def test_an_empty_pretrained_path_is_refused_unless_a_random_backbone_is_asked_for(tiny_run, tmp_path, monkeypatch):
    """A forgotten weights path (or an unset $WEIGHTS) trained on a random frozen backbone with one log line."""
    from aim_video.config import ConfigError

    for name in "abc":
        (tmp_path / name).mkdir()
    cfg = tiny_run(tmp_path / "a", "model.pretrained=")
    with pytest.raises(ConfigError, match="model.pretrained is empty.*model.random_backbone=true"):
        _fit(cfg, monkeypatch=monkeypatch)
    assert not os.path.exists(cfg.output_dir)
    both = tiny_run(tmp_path / "b", "model.random_backbone=true")  # the tiny run's weights file is still given
    with pytest.raises(ConfigError, match="model.random_backbone=true but model.pretrained="):
        _fit(both, monkeypatch=monkeypatch)
    chosen = tiny_run(tmp_path / "c", "model.pretrained=", "model.random_backbone=true", "train.epochs=1")
    summary = _fit(chosen, monkeypatch=monkeypatch)
    assert summary["steps"] == 4


def test_weights_to_start_from_that_do_not_fit_name_the_key_once(tmp_path):
    """The message read 'model.init_trainable: model.init_trainable=... does not match'."""
    from aim_video.config import ConfigError
    from aim_video.engine.fit import start_from_trained
    from aim_video.models.build import build_model
    from aim_video.models.trainable_io import save_trainable
    from tests.models.conftest import NUM_FRAMES, tiny_cfg

    torch.manual_seed(0)
    trained = build_model(tiny_cfg(), NUM_FRAMES)
    path = save_trainable(trained, str(tmp_path / "trainable.safetensors"), {"step": 3})
    torch.manual_seed(0)  # the same random backbone, fewer adapters
    with pytest.raises(ConfigError) as err:
        start_from_trained(build_model(tiny_cfg(adapter_layers="top:1"), NUM_FRAMES), path, None)
    assert str(err.value).startswith(f"model.init_trainable={path} does not match this model's trainable set")
    with pytest.raises(ConfigError, match=r"^model.init_trainable: .*no_such"):
        start_from_trained(trained, str(tmp_path / "no_such"), None)


def _checkpoints(out):
    folder = os.path.join(out, "checkpoints")
    return sorted(n for n in os.listdir(folder) if n.startswith("step_"))


def test_eval_every_save_every_and_step_saves_count_as_the_docs_say(tiny_run, tmp_path, monkeypatch):
    """3 epochs of 4 steps, eval_every=2, save_every=2, save_every_steps=3: evaluated after epochs 2 and 3 (the last
    one always), saved at the end of epoch 2 and of the run, and every 3 optimizer steps inside the epochs."""
    cfg = tiny_run(tmp_path, "train.epochs=3", "train.eval_every=2", "train.save_every=2",
                   "train.save_every_steps=3", "train.keep_last=10")  # fmt: skip
    summary = _fit(cfg, monkeypatch=monkeypatch)
    out = cfg.output_dir
    assert _events(out, "eval", "epoch", "step") == [(1, 8), (2, 12)]
    assert _checkpoints(out) == ["step_00000003", "step_00000006", "step_00000008", "step_00000009", "step_00000012"]
    metrics = {n: read_meta(os.path.join(out, "checkpoints", n))["metric"] for n in _checkpoints(out)}
    assert metrics["step_00000008"] == summary["eval"][0]["top1"] and metrics["step_00000012"] is not None
    assert metrics["step_00000003"] is None and metrics["step_00000009"] is None  # inside an epoch: no evaluation


def test_eval_every_0_evaluates_only_at_the_end_and_checks_the_val_list_before_training(
    tiny_run, tmp_path, monkeypatch
):
    """train.eval_every=0 is 'only at the end': one evaluation, after the last epoch; a val list that cannot be
    evaluated still stops the run before its first step, not after the whole training."""
    from aim_video.data.annotations import AnnotationError

    (tmp_path / "a").mkdir()
    cfg = tiny_run(tmp_path / "a", "train.eval_every=0")
    summary = _fit(cfg, monkeypatch=monkeypatch)
    assert _events(cfg.output_dir, "eval", "epoch", "step") == [(1, 8)]
    assert [(e["epoch"], e["step"]) for e in summary["eval"]] == [(1, 8)]
    (tmp_path / "b").mkdir()
    cfg = tiny_run(tmp_path / "b", "train.eval_every=0")
    unlabelled = tmp_path / "val_unlabelled.txt"
    unlabelled.write_text("".join(line.rsplit(" ", 1)[0] + "\n" for line in open(cfg.data.val_list) if line.strip()))
    cfg.data.val_list = str(unlabelled)
    with pytest.raises(AnnotationError, match="has no labels"):
        _fit(cfg, monkeypatch=monkeypatch)
    assert not os.path.exists(cfg.output_dir)


def test_the_training_evaluation_uses_the_protocols_views_and_counts_left_out_videos(tiny_run, tmp_path, monkeypatch):
    """eval.protocol=ssv2 evaluates 1 clip x 3 crops, as tools/test.py does (not data.test_num_*), and a val video
    left out as missing (data.missing_files=drop) is counted in num_missing, as tools/test.py counts it."""
    cfg = tiny_run(tmp_path, "train.epochs=1", "eval.protocol=ssv2", "data.missing_files=drop")
    with_gone = tmp_path / "val_with_gone.txt"
    with_gone.write_text(open(cfg.data.val_list).read() + f"{tmp_path / 'gone.mp4'} 0\n")
    cfg.data.val_list = str(with_gone)
    summary = _fit(cfg, monkeypatch=monkeypatch)
    (result,) = summary["eval"]
    assert (result["num_videos"], result["num_missing"]) == (8, 1)
    assert (result["protocol"]["num_clips"], result["protocol"]["num_crops"], result["protocol"]["num_views"]) == (
        1, 3, 3)  # fmt: skip


def test_clips_are_normalised_with_the_configured_mean_and_std():
    """uint8 clips become (x / 255 - mean) / std in the model's dtype, per channel."""
    from aim_video.config import load_config
    from aim_video.engine.fit import _prepare_fn

    cfg = load_config(None, ["train.precision=fp32", "data.mean=[0.5,0.25,0.125]", "data.std=[0.5,0.25,0.2]"])
    video = torch.zeros(1, 2, 3, 4, 4, dtype=torch.uint8)
    video[:, 1] = 255
    out, label = _prepare_fn(cfg, torch.device("cpu"))({"video": video, "label": torch.tensor([1])})
    assert out.dtype == torch.float32 and label.tolist() == [1]
    mean, std = torch.tensor([0.5, 0.25, 0.125]), torch.tensor([0.5, 0.25, 0.2])
    assert torch.allclose(out[0, 0, :, 0, 0], -mean / std) and torch.allclose(out[0, 1, :, 0, 0], (1 - mean) / std)


def test_class_counts_that_disagree_stop_before_training_and_the_export_names_the_classes(
    tiny_run, tmp_path, monkeypatch
):
    """model.num_classes != data.num_classes, or a class map of another length than data.num_classes, is a config
    error before any step; with a class map that fits, the exported weights carry its names (evaluation checks its
    numbering against them)."""
    from aim_video.models.trainable_io import read_trainable

    (tmp_path / "a").mkdir()
    cfg = tiny_run(tmp_path / "a", "model.num_classes=3", "train.eval_every=-1")
    with pytest.raises(ConfigError, match="model.num_classes=3 but data.num_classes=2"):
        _fit(cfg, monkeypatch=monkeypatch)
    assert not os.path.exists(cfg.output_dir)

    def with_class_map(folder: str, names: list[str]):
        (tmp_path / folder).mkdir()
        (tmp_path / f"{folder}.txt").write_text("".join(f"{name}\n" for name in names))
        return tiny_run(tmp_path / folder, f"data.class_map={tmp_path / folder}.txt", "train.eval_every=-1",
                        "train.epochs=1")  # fmt: skip

    cfg = with_class_map("b", ["a", "b", "c"])
    with pytest.raises(ConfigError, match=r"the classes of this data set \(3: .* are not data.num_classes=2"):
        _fit(cfg, monkeypatch=monkeypatch)
    assert not os.path.exists(cfg.output_dir)
    cfg = with_class_map("c", ["walk", "run"])
    _fit(cfg, monkeypatch=monkeypatch)
    _, meta = read_trainable(os.path.join(cfg.output_dir, "model_trainable.safetensors"))
    assert json.loads(meta["classes"]) == ["walk", "run"]


def _with_bad_videos(cfg, tmp_path, count=4):
    """The train list plus `count` files that are not videos (each draw of one is a loader failure, replaced)."""
    lines = open(cfg.data.train_list).read()
    for i in range(count):
        bad = tmp_path / f"bad{i}.mp4"
        bad.write_text("not a video")
        lines += f"{bad} {i % 2}\n"
    path = tmp_path / "train_with_bad.txt"
    path.write_text(lines)
    return str(path)


def test_the_loader_failures_of_a_part_epoch_before_a_stop_count_in_the_runs_summary(tiny_run, tmp_path, monkeypatch):
    """Stopped inside an epoch, then resumed: train_summary.json counts the failed reads of the whole run, those of
    the stopped process's part epoch included (its `stopped` event carries them), as the uninterrupted run does."""
    from aim_video.engine.distributed import TrainingStopped

    (tmp_path / "ref").mkdir()
    ref_cfg = tiny_run(tmp_path / "ref", "train.eval_every=-1", "train.epochs=1")
    ref_cfg.data.train_list = _with_bad_videos(ref_cfg, tmp_path)
    ref = _fit(ref_cfg, monkeypatch=monkeypatch)  # 12 videos: 6 steps
    cfg = tiny_run(tmp_path, "train.eval_every=-1", "train.epochs=1")
    cfg.data.train_list = ref_cfg.data.train_list
    with pytest.raises(TrainingStopped):
        _fit(cfg, fault="after_step@3:rank0:signal=SIGUSR1", monkeypatch=monkeypatch)
    (stopped,) = _events(cfg.output_dir, "stopped", "failures")
    summary = _fit(cfg, resume="auto", monkeypatch=monkeypatch)
    assert ref["loader_failures"] > 0 and stopped[0] > 0  # the check below has something to count
    assert summary["loader_failures"] == ref["loader_failures"]


def test_a_stop_signal_during_the_final_evaluation_lets_the_run_finish(tiny_run, tmp_path, monkeypatch):
    """The last epoch's evaluation and save are the end of the run: a stop signal then finishes it (export and
    summary written) rather than stopping with a checkpoint for a resume that has nothing left to do."""
    cfg = tiny_run(tmp_path)
    summary = _fit(cfg, fault="epoch_end@8:rank0:signal=SIGUSR1", monkeypatch=monkeypatch)
    assert summary["steps"] == 8 and [(e["epoch"], e["step"]) for e in summary["eval"]] == [(0, 4), (1, 8)]
    assert os.path.isfile(os.path.join(cfg.output_dir, "model_trainable.safetensors"))
    assert not _events(cfg.output_dir, "stopped", "step")


def test_an_epoch_is_a_whole_number_of_optimizer_steps(tiny_run, tmp_path, monkeypatch):
    """4 batches an epoch with train.grad_accum_steps=3: an epoch is 3 micro-batches (one step); the 4th is left
    out, not accumulated into the next epoch's first step."""
    cfg = tiny_run(tmp_path, "train.grad_accum_steps=3", "train.eval_every=-1", "train.keep_last=5")
    summary = _fit(cfg, monkeypatch=monkeypatch)
    assert summary["steps"] == 2
    assert _events(cfg.output_dir, "epoch", "epoch", "steps", "finished") == [(0, 1, True), (1, 2, True)]
    step1 = read_meta(os.path.join(cfg.output_dir, "checkpoints", "step_00000001"))
    assert (step1["epoch"], step1["batches_done"]) == (0, 3)


def test_resuming_a_finished_run_leaves_its_summary_and_weights_as_they_were(tiny_run, tmp_path, monkeypatch):
    """--resume auto after the end: nothing runs, train_summary.json (its speed, its evaluations) and the exported
    weights stay those of the finished run."""
    cfg = tiny_run(tmp_path, "train.epochs=1")
    first = _fit(cfg, monkeypatch=monkeypatch)
    files = {n: open(os.path.join(cfg.output_dir, n), "rb").read()
             for n in ("train_summary.json", "model_trainable.safetensors")}  # fmt: skip
    again = _fit(cfg, resume="auto", monkeypatch=monkeypatch)
    assert again["note"].startswith("nothing to train") and again["clips_per_s"] == first["clips_per_s"] > 0
    assert again["eval"] == first["eval"] and again["wall_s"] == first["wall_s"]
    assert {n: open(os.path.join(cfg.output_dir, n), "rb").read() for n in files} == files


def test_a_resume_that_runs_a_pending_evaluation_does_not_save_its_checkpoint_again(tiny_run, tmp_path, monkeypatch):
    """Stopped at an epoch's last step (its evaluation pending), resumed: the checkpoint it resumed from is that
    step's; the resume evaluates and writes the metric into it, without writing the whole checkpoint a second time
    (a ZeRO checkpoint with its elastic optimizer state is GBs)."""
    from aim_video.engine.distributed import TrainingStopped

    cfg = tiny_run(tmp_path, "train.epochs=1")
    with pytest.raises(TrainingStopped):
        _fit(cfg, fault="after_step@4:rank0:signal=SIGUSR1", monkeypatch=monkeypatch)
    step4 = os.path.join(cfg.output_dir, "checkpoints", "step_00000004")
    inode = os.stat(step4).st_ino
    summary = _fit(cfg, resume="auto", monkeypatch=monkeypatch)
    assert [(e["epoch"], e["step"]) for e in summary["eval"]] == [(0, 4)]
    assert read_meta(step4)["metric"] == summary["eval"][0]["top1"] and read_meta(step4)["epoch_end_pending"] is False
    assert os.stat(step4).st_ino == inode  # the same folder: updated in place, not written again
