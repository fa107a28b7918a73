"""A tiny real data set (encoded mp4 files + a `path label` list) and a tiny-ViT config for the launcher tests."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the repo first, then the caller's path (a lent GPU machine carries packages on PYTHONPATH that children need too)
PYTHONPATH = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH", "")) if p)
TRAIN = os.path.join(REPO, "tools", "train.py")


def make_videos(folder: str, count: int = 16, frames: int = 8, size: int = 32, classes: int = 2) -> str:
    """`count` h264 clips of a bright square moving right (label 0) or left (label 1); returns the list file."""
    from aim_video.data.encode import write_video

    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        label = i % classes
        video = np.full((frames, size, size, 3), rng.integers(0, 80, 3), dtype=np.uint8)
        for t in range(frames):
            x = (t * (size - 8)) // (frames - 1)
            x = x if label == 0 else size - 8 - x
            video[t, 12:20, x : x + 8] = 255
        name = f"c{label}/v{i:03d}.mp4"
        write_video(os.path.join(folder, name), video, fps=8, gop=4)
        lines.append(f"{name} {label}")
    path = os.path.join(folder, "train.txt")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def write_base_weights(path: str, vit_kwargs: dict) -> str:
    """A tiny timm CLIP-style ViT's weights as a file: the frozen 'pretrained' backbone the model loads."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1234)
    vit = timm.create_model("vit_base_patch16_clip_quickgelu_224", pretrained=False, num_classes=0, **vit_kwargs)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, path)
    return path


TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_config(folder: str, data_root: str, **sections: dict) -> str:
    """YAML for a depth-2, width-32 CLIP-style ViT on 32 px clips of 4 frames, frozen weights from a file."""
    import yaml

    cfg = {
        "data": {
            "root": data_root, "train_list": os.path.join(data_root, "train.txt"), "num_classes": 2,
            "sampling": "uniform", "num_frames": 4, "input_size": 32, "rrc_scale": [0.5, 1.0], "flip": True,
            "batch_size": 2, "num_workers": 1, "persistent_workers": False, "pin_memory": False,
            "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        },
        "model": {
            "arch": "vit_base_patch16_clip_quickgelu_224", "num_classes": 2,
            "pretrained": os.path.join(data_root, "base_vit.safetensors"),
            "vit_kwargs": dict(TINY_VIT),
            "drop_path_rate": 0.1, "head_dropout": 0.1,
        },
        "train": {
            "epochs": 2, "lr": 1e-3, "warmup_epochs": 0.5, "precision": "fp32", "zero_stage": 0, "log_every": 1,
            "eval_every": 0, "keep_last": 2, "seed": 0,
        },
        "output_dir": os.path.join(folder, "run"),
    }  # fmt: skip
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    path = os.path.join(folder, "config.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(cfg, f)
    return path


def launch(
    config: str, *overrides: str, ranks: int = 2, resume: str = "", env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`deepspeed --num_gpus N tools/train.py --config ... key=value` on CPU (gloo), as a user runs it.

    The result's `shm_left` lists the launch's DeepSpeed shared-memory files still in /dev/shm afterwards.
    """
    port = _free_port()
    cmd = [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", str(ranks),
           "--master_port", str(port), TRAIN, "--config", config, *overrides]  # fmt: skip
    if resume:
        cmd += ["--resume", resume]
    full_env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": PYTHONPATH, "OMP_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    result.shm_left = glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{port}_*")
    return result


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_log(output_dir: str) -> list[dict]:
    import json

    with open(os.path.join(output_dir, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def train_losses(output_dir: str) -> dict[int, float]:
    """Step -> loss of the JSON-lines log (a resumed run's lines come after the first run's)."""
    return {rec["step"]: rec["loss"] for rec in read_log(output_dir) if rec["event"] == "train"}


@pytest.fixture(scope="session")
def video_root(tmp_path_factory) -> str:
    """16 clips (train.txt), a 12-clip list (train12.txt: 3 steps per epoch with 2 ranks x 2) and base weights."""
    root = str(tmp_path_factory.mktemp("videos"))
    make_videos(root)
    with open(os.path.join(root, "train.txt")) as f:
        lines = f.read().splitlines()
    with open(os.path.join(root, "train12.txt"), "w") as f:
        f.write("\n".join(lines[:12]) + "\n")
    write_base_weights(os.path.join(root, "base_vit.safetensors"), TINY_VIT)
    return root
