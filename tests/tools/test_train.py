"""tools/train.py through the real `deepspeed` launcher on CPU (2 ranks, gloo): smoke run, export, accumulation,
a dying rank. Each launch costs ~30-40 s here (process start and imports), hence the `slow` marks."""

import json
import math
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from aim_video.config import load_config
from aim_video.models.build import build_model
from aim_video.models.trainable_io import load_trainable, read_trainable
from tests.tools.conftest import PYTHONPATH, REPO, TRAIN, launch, read_log, tiny_config

pytestmark = pytest.mark.slow


def _bad_video_list(video_root, folder):
    """train.txt plus a text file named .mp4: the loader replaces it and reports the failure."""
    bad = os.path.join(folder, "broken.mp4")
    with open(bad, "w") as f:
        f.write("not a video")
    path = os.path.join(folder, "train_with_broken.txt")
    with open(os.path.join(video_root, "train.txt")) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[:15] + [f"{bad} 1"]) + "\n")
    return path


def test_two_rank_bf16_zero1_run_writes_everything_and_exports_the_trainable_set(video_root, tmp_path):
    train_list = _bad_video_list(video_root, str(tmp_path))
    cfg_path = tiny_config(
        str(tmp_path), video_root,
        data={"train_list": train_list, "val_list": os.path.join(video_root, "train.txt"), "test_num_clips": 2,
              "test_short_side": 32},
        train={"precision": "bf16", "zero_stage": 1, "epochs": 1, "mixup_alpha": 0.8, "cutmix_alpha": 1.0,
               "label_smoothing": 0.1, "eval_every": 1},
        eval={"protocol": "k400"},  # its 3 clips win over data.test_num_clips (training's evaluation built 2: crash)
    )  # fmt: skip
    out = str(tmp_path / "run")
    result = launch(cfg_path, f"output_dir={out}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.shm_left == []  # DeepSpeed's shared-memory segments (66 MB per rank) do not outlive the run

    ds = json.load(open(os.path.join(out, "deepspeed_config.json")))
    assert ds["train_batch_size"] == 4 and ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] == 1
    assert load_config(os.path.join(out, "config.yaml")).train.mixup_alpha == 0.8
    summary = json.load(open(os.path.join(out, "train_summary.json")))
    assert summary["steps"] == 4 and summary["epochs"] == 1 and summary["world_size"] == 2
    assert math.isfinite(summary["final_loss"]) and summary["clips_per_s"] > 0
    assert 0 <= summary["data_wait_share"] <= 1
    assert summary["loader_failures"] >= 1
    log = read_log(out)
    epoch = [r for r in log if r["event"] == "epoch"][0]
    assert any("broken.mp4" in f for f in epoch["failure_examples"])
    assert epoch["failed_videos"] == len(epoch["failure_examples"]) == 1 <= epoch["failures"]  # named once
    steps = [r for r in log if r["event"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(r["lr"] > 0 for r in steps)
    assert os.listdir(os.path.join(out, "tensorboard"))
    evals = [r for r in log if r["event"] == "eval"]  # periodic multi-view evaluation of the bf16 model
    assert len(evals) == 1 and evals[0]["num_videos"] == 16 and evals[0]["num_missing"] == 0
    correct = evals[0]["top1"] * 16 / 100  # percent of 16 videos, like tools/test.py: a whole number of videos
    assert 0 <= evals[0]["top1"] <= 100 and correct == pytest.approx(round(correct))
    assert evals[0]["top5"] == 100.0  # two classes: the true one is always in the top five
    assert evals[0]["protocol"]["num_clips"] == 3 and evals[0]["protocol"]["name"] == "k400"
    best = json.load(open(os.path.join(out, "checkpoints", "best.json")))
    assert best == {"name": "step_00000004", "metric": evals[0]["top1"]} == summary["best"]
    ckpt = os.path.join(out, "checkpoints", "step_00000004")
    assert open(os.path.join(out, "checkpoints", "latest")).read() == "step_00000004"
    assert sorted(f for f in os.listdir(os.path.join(ckpt, "deepspeed")) if "optim_states" in f) == [
        "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]

    # the exported file alone + the base weights rebuild the trained model: compare with DeepSpeed's own saved module
    cfg = load_config(os.path.join(out, "config.yaml"))
    export = os.path.join(out, "model_trainable.safetensors")
    tensors, meta = read_trainable(export)
    assert os.path.getsize(export) < 64 * 1024 and int(meta["step"]) == 4
    rebuilt = build_model(cfg.model, cfg.data.num_frames).eval()
    load_trainable(rebuilt, export)
    trained = build_model(cfg.model, cfg.data.num_frames).eval()
    states = torch.load(os.path.join(ckpt, "deepspeed", "mp_rank_00_model_states.pt"), weights_only=False)["module"]
    assert sorted(states) == sorted(trained.trainable_parameter_names())  # frozen backbone not in the checkpoint
    trained.load_state_dict({k: v.float() for k, v in states.items()}, strict=False)
    assert any(
        v.abs().sum() > 0
        for k, v in tensors.items()
        if "adapter" in k and k.endswith("fc2.weight") or k.endswith("up.weight")
    )  # the zero-initialised adapter outputs have been trained
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(clips), trained(clips))


def test_accumulation_of_two_micro_batches_equals_one_double_batch(video_root, tmp_path):
    exports = {}
    for micro, accum in ((4, 1), (2, 2)):
        folder = tmp_path / f"b{micro}"
        folder.mkdir()
        cfg_path = tiny_config(
            str(folder), video_root,
            data={"batch_size": micro}, model={"drop_path_rate": 0.0, "head_dropout": 0.0},
            train={"grad_accum_steps": accum, "max_steps": 1, "zero_stage": 2, "lr": 1e-2, "warmup_epochs": 0.0},
        )  # fmt: skip
        result = launch(cfg_path, f"output_dir={folder / 'run'}")
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        exports[micro] = load_file(str(folder / "run" / "model_trainable.safetensors"))
        assert [r["step"] for r in read_log(str(folder / "run")) if r["event"] == "train"] == [1]
    moved = 0
    for name, value in exports[4].items():
        torch.testing.assert_close(exports[2][name], value, rtol=1e-5, atol=1e-6)
        moved += int(not torch.equal(value, torch.zeros_like(value)))
    assert moved > 0


def test_a_rank_that_dies_makes_the_launcher_exit_nonzero(video_root, tmp_path):
    cfg_path = tiny_config(str(tmp_path), video_root, train={"epochs": 3})
    started = time.monotonic()
    result = launch(
        cfg_path, f"output_dir={tmp_path / 'run'}", env={"AIM_VIDEO_FAULT": "after_step@2:rank1:exit"}, timeout=300
    )
    assert result.returncode != 0
    assert "rank 1 dies at after_step step 2" in result.stdout + result.stderr
    assert time.monotonic() - started < 240  # stopped by the launcher, not by a collective timeout
    assert result.shm_left == []  # nor do they outlive a run that was killed
    assert not os.path.exists(tmp_path / "run" / "train_summary.json")


def test_an_unexpected_error_ends_the_run_with_its_traceback_instead_of_hanging(video_root, tmp_path):
    """A RuntimeError nothing catches (as CUDA out of memory is): the interpreter's exit waited forever for the
    loader workers, which ignore the stop signals, so the job held its GPUs until someone killed it."""
    cfg_path = tiny_config(str(tmp_path), video_root, train={"epochs": 3})
    started = time.monotonic()
    result = launch(
        cfg_path, f"output_dir={tmp_path / 'run'}", env={"AIM_VIDEO_FAULT": "after_step@2:rank0:raise"}, timeout=240
    )  # the old code ran into this timeout (TimeoutExpired fails the test)
    assert result.returncode != 0
    assert "RuntimeError: [fault injection]" in result.stderr and "Traceback" in result.stderr
    assert time.monotonic() - started < 200


def test_bad_input_is_one_error_line_and_status_2_not_a_traceback(video_root, tmp_path):
    """A missing data root, or model.num_classes != data.num_classes (an IndexError in the loss before), used to
    end in a traceback on every rank."""
    import subprocess
    import sys

    from tests.tools.conftest import PYTHONPATH, REPO, TRAIN

    cfg_path = tiny_config(str(tmp_path), video_root)
    classes = tmp_path / "classes.txt"
    classes.write_text("left\nright\nup\n")  # 3 names for a 2-class set: test.py refused only after training
    # not this pytest process's world of one (tests that ran before set RANK, WORLD_SIZE and the port of its store)
    dist_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env.update(DS_ACCELERATOR="cpu", PYTHONPATH=PYTHONPATH, OMP_NUM_THREADS="1")
    for override, message in (
        (f"data.root={tmp_path / 'nowhere'}", "videos not found"),
        ("model.num_classes=5", "model.num_classes=5 but data.num_classes=2"),
        (f"data.class_map={classes}", "the classes of this data set (3: data.class_map"),
        # a setting the method does not read, and a signal that cannot be caught, were tracebacks with exit 1
        ("model.method=lora model.adapter_ratio=0.5", "model.adapter_ratio=0.5 only applies to model.method=aim"),
        ("train.stop_signals=SIGFOO", "train.stop_signals: 'SIGFOO' is not a signal"),
    ):
        out = tmp_path / override.split("=")[0]
        cmd = [sys.executable, TRAIN, "--config", cfg_path, f"output_dir={out}", *override.split()]
        result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "model.method").exists() and not (tmp_path / "train.stop_signals").exists()  # no run


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full")
def test_a_full_disk_is_one_error_line_and_status_1_not_the_bad_input_status(video_root, tmp_path):
    """A full disk where the run writes (here log.jsonl is /dev/full, which answers every write with ENOSPC) ended
    with exit status 2, the one for bad input ("error: [Errno 28] No space left on device"); a full disk during a
    checkpoint save is tests/engine/test_checkpoint_io.py's."""
    import subprocess
    import sys

    from tests.tools.conftest import PYTHONPATH, REPO, TRAIN

    cfg_path = tiny_config(str(tmp_path), video_root, train={"max_steps": 1})
    out = tmp_path / "run"
    out.mkdir()
    os.symlink("/dev/full", out / "log.jsonl")
    dist_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # as in the test above
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env.update(DS_ACCELERATOR="cpu", PYTHONPATH=PYTHONPATH, OMP_NUM_THREADS="1")
    cmd = [sys.executable, TRAIN, "--config", cfg_path, f"output_dir={out}"]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"error: no space left in {out}: [Errno 28]" in result.stderr and "Traceback" not in result.stderr


sys.path.insert(0, os.path.join(REPO, "tools"))
import train as train_tool  # noqa: E402  (tools/train.py)


def _train(cfg_path: str, *args: str) -> subprocess.CompletedProcess:
    dist_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # a world of one of its own
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env.update(DS_ACCELERATOR="cpu", PYTHONPATH=PYTHONPATH, OMP_NUM_THREADS="1")
    cmd = [sys.executable, TRAIN, "--config", cfg_path, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_an_unknown_option_is_status_2_before_anything_runs(video_root, tmp_path, capsys):
    cfg_path = tiny_config(str(tmp_path), video_root)
    assert train_tool.main(["--config", cfg_path, "--resmue", "auto", f"output_dir={tmp_path / 'run'}"]) == 2
    assert "error: unknown options --resmue" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # two one-rank runs of one step, ~15 s each
def test_a_second_run_into_a_trained_output_dir_needs_resume(video_root, tmp_path):
    """Without --resume, an output_dir holding an earlier run's checkpoints is refused (status 2), not continued."""
    cfg_path = tiny_config(str(tmp_path), video_root, train={"max_steps": 1, "epochs": 1})
    out = str(tmp_path / "run")
    first = _train(cfg_path, f"output_dir={out}")
    assert first.returncode == 0, first.stderr[-2000:]
    again = _train(cfg_path, f"output_dir={out}")
    assert again.returncode == 2, again.stderr[-2000:]
    assert "holds the checkpoints of an earlier run" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.slow  # one one-rank run of one step and its evaluation, ~15 s
def test_eval_strict_with_an_unreadable_val_video_is_status_3(video_root, tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_text("not a video")
    val = tmp_path / "val.txt"
    lines = open(os.path.join(video_root, "train.txt")).read().splitlines()[:3]
    val.write_text("\n".join(lines + [f"{bad} 1"]) + "\n")
    cfg_path = tiny_config(
        str(tmp_path), video_root,
        data={"val_list": str(val), "test_num_clips": 1}, train={"max_steps": 1, "epochs": 1, "eval_every": 0},
        eval={"strict": True},
    )  # fmt: skip
    result = _train(cfg_path, f"output_dir={tmp_path / 'run'}")
    assert result.returncode == 3, result.stderr[-2000:]
    assert "broken.mp4" in result.stderr and "--resume auto goes on from the latest checkpoint" in result.stderr


@pytest.mark.slow  # one 2-rank launch of one step, ~40 s
def test_the_summary_line_is_printed_once_by_rank_0(video_root, tmp_path):
    from tests.tools.conftest import launch

    cfg_path = tiny_config(str(tmp_path), video_root, train={"max_steps": 1, "epochs": 1})
    result = launch(cfg_path, f"output_dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-2000:]
    summaries = [line for line in result.stdout.splitlines() if '{"steps": ' in line]  # train.py's line, not the log's
    assert len(summaries) == 1, summaries
    assert json.loads(summaries[0][summaries[0].index("{"):])["steps"] == 1
