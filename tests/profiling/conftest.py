"""A tiny real video data set (the demo generator at small size) and tiny AIM configs for the profiler tests."""

from __future__ import annotations

import os

import pytest
import torch

from aim_video.config import Config, load_config
from aim_video.data.demo_data import DemoSpec, generate


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, as training ranks use (the demo sets OMP_NUM_THREADS=1): on a shared 2-core machine
    more threads than free cores make every step several times slower and the timings erratic. Module scope: it
    is in place before the module-scoped profiles run, and restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> str:
    """Real h264 mp4s: 6 classes x 4 training videos of 24 frames at 32 px."""
    root = str(tmp_path_factory.mktemp("profiling") / "demo")
    generate(root, DemoSpec(num_frames=24, size=32, train_per_class=4, val_per_class=1))
    return root


def tiny_config(root: str, *overrides: str) -> Config:
    """A depth-2, width-64 CLIP-layout ViT with AIM adapters on 8 x 96 px clips (random frozen weights).

    96 px (145 tokens a frame) keeps the model step several times slower than the loader's batch of 32 px videos,
    so the unslowed profile is compute-bound with a wide margin.
    """
    return load_config(
        None,
        [
            f"data.root={root}",
            f"data.train_list={os.path.join(root, 'train.txt')}",
            f"data.class_map={os.path.join(root, 'classes.txt')}",
            "data.num_classes=6",
            "data.num_frames=8",
            "data.frame_stride=2",
            "data.input_size=96",
            "data.batch_size=4",
            "data.num_workers=1",
            "data.pin_memory=false",
            "model.arch=vit_base_patch16_clip_quickgelu_224",
            "model.vit_kwargs={img_size: 96, patch_size: 8, embed_dim: 64, depth: 2, num_heads: 4}",
            "model.num_classes=6",
            "model.drop_path_rate=0.0",
            "model.head_dropout=0.0",
            "train.precision=fp32",
            "profile.max_workers=2",
            "profile.loader_batches=3",  # 2 workers time 4: whole rounds
            "profile.batch_sizes=[1,2]",
            "profile.steps=3",
            "profile.warmup=1",
            *overrides,
        ],
    )
