"""tools/compare.py end to end on tiny real videos: two methods trained with the engine, evaluated, measured, and
the table written; the merged linear-adapter row costs exactly the linear probe's plain ViT at inference."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.tools.conftest import PYTHONPATH, REPO, tiny_config
from tools.compare import main


def test_compare_two_methods_writes_table_json_and_chart(video_root, tmp_path):
    cfg = tiny_config(
        str(tmp_path), video_root,
        data={"val_list": os.path.join(video_root, "train.txt"), "test_num_clips": 1, "test_short_side": 32},
        train={"max_steps": 2, "save_every": 100},
    )  # fmt: skip
    out = tmp_path / "table"
    cmd = [sys.executable, "tools/compare.py", "--config", cfg, "--out", str(out),
           "--methods", "linear_adapter,linear_probe", f"output_dir={tmp_path / 'runs'}"]  # fmt: skip
    # a world of one of its own: not the process group an earlier in-process test left in this environment
    dist_keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist_keys}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=PYTHONPATH)
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.load(open(out / "compare.json"))
    adapter, probe = data["rows"]
    assert [adapter["method"], probe["method"]] == ["linear_adapter", "linear_probe"]
    assert adapter["merged_for_eval"] and adapter["train_steps"] == probe["train_steps"] == 2
    assert adapter["inference_params"] == probe["inference_params"] == probe["total_params"]
    assert adapter["gflops_per_clip"] == probe["gflops_per_clip"] > 0
    assert adapter["tunable_params"] > probe["tunable_params"] == 32 * 2 + 2
    assert all(r["num_evaluated"] == 16 and 0 <= r["top1"] <= 100 for r in data["rows"])
    for r in data["rows"]:  # 8 videos per class: top-1 is the mean class accuracy; top-5 of 2 classes is 100 %
        assert r["top1"] == pytest.approx(r["mean_class_acc"]) and r["top5"] == 100, r  # top1 was top5's value
    assert "temporal_pairs_top1" not in adapter
    assert (out / "compare.png").stat().st_size > 10_000
    assert "| linear_adapter |" in (out / "compare.md").read_text()


def test_unknown_method_is_refused_with_the_choices(tmp_path):
    cmd = [sys.executable, "tools/compare.py", "--config", "configs/demo.yaml", "--out", str(tmp_path),
           "--methods", "aim,prompting"]  # fmt: skip
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "unknown ['prompting']; choose from aim_spatial, aim_spatial_temporal, aim, linear_probe" in result.stderr


@pytest.mark.parametrize("methods", [",", " , "])
def test_an_empty_method_list_is_refused_before_anything_runs(tmp_path, capsys, methods):
    out = tmp_path / "table"
    assert main(["--config", os.path.join(REPO, "configs", "demo.yaml"), "--out", str(out), "--methods", methods]) == 2
    assert "--methods: unknown empty list; choose from aim_spatial" in capsys.readouterr().err
    assert not out.exists()


def _compare(cfg: str, tmp_path, *overrides: str, fault: str = "") -> subprocess.CompletedProcess:
    """tools/compare.py on linear_probe in a world of one of its own (AIM_VIDEO_FAULT: a fault point)."""
    cmd = [sys.executable, "tools/compare.py", "--config", cfg, "--out", str(tmp_path / "table"),
           "--methods", "linear_probe", f"output_dir={tmp_path / 'runs'}", *overrides]  # fmt: skip
    dist_keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "AIM_VIDEO_FAULT")
    env = {k: v for k, v in os.environ.items() if k not in dist_keys}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONPATH=PYTHONPATH)
    if fault:
        env["AIM_VIDEO_FAULT"] = fault
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_a_backbone_file_that_does_not_fit_is_one_error_line_and_status_2(video_root, tmp_path):
    """The up-front check builds each model on the meta device, without the weights: a backbone file of another
    width failed at the first method's start with a traceback and status 1."""
    from safetensors.torch import save_file

    save_file({"cls_token": torch.zeros(1, 1, 48), "pos_embed": torch.zeros(1, 5, 48)}, str(tmp_path / "other.st"))
    cfg = tiny_config(
        str(tmp_path), video_root, model={"pretrained": str(tmp_path / "other.st")},
        data={"val_list": os.path.join(video_root, "train.txt"), "test_num_clips": 1, "test_short_side": 32},
    )  # fmt: skip
    result = _compare(cfg, tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: method linear_probe: " in result.stderr and "other.st" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_stop_signal_saves_the_methods_checkpoint_and_train_resume_auto_finishes(video_root, tmp_path):
    """A preemption (SIGTERM, SIGUSR1) ended compare.py with a TrainingStopped traceback and status 1, and told the
    user to add --resume auto, which compare.py does not take."""
    cfg = tiny_config(
        str(tmp_path), video_root,
        data={"val_list": os.path.join(video_root, "train.txt"), "test_num_clips": 1, "test_short_side": 32},
        train={"max_steps": 4, "save_every": 100},
    )  # fmt: skip
    stopped = _compare(cfg, tmp_path, fault="after_step@2:rank0:signal=SIGUSR1")
    assert stopped.returncode == 128 + 10, stopped.stderr[-3000:]  # SIGUSR1
    assert "method linear_probe stopped by SIGUSR1 at step 2" in stopped.stderr
    assert "train.resume=auto" in stopped.stderr and "Traceback" not in stopped.stderr
    resumed = _compare(cfg, tmp_path, "train.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    row = json.load(open(tmp_path / "table" / "compare.json"))["rows"][0]
    assert row["method"] == "linear_probe" and row["train_steps"] == 4


def test_overrides_may_come_before_options_so_the_rerun_hint_works():
    """The stop message says to rerun the command with train.resume=auto added: after an option, it was refused."""
    from tools.compare import parse_args

    args = parse_args(["--config", "c.yaml", "output_dir=x", "--out", "t", "--methods", "aim", "train.resume=auto"])
    assert args.overrides == ["output_dir=x", "train.resume=auto"] and args.methods == "aim"
