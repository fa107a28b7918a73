"""aim_video/compare.py: method configs, the cost measurements, pair accuracy and the written table/JSON/PNG."""

from __future__ import annotations

import json
import os

import pytest
import torch

from aim_video.compare import METHODS, markdown_table, measure_cost, method_config, pair_accuracy, write_outputs
from aim_video.config import load_config
from tests.models.conftest import TINY_CLIP


def _cfg(method: str):
    cfg = method_config(method, None, ["data.batch_size=2", "data.num_frames=4", "data.input_size=32",
                                       "model.num_classes=5", "train.precision=fp32"], "/tmp/unused")  # fmt: skip
    cfg.model.arch, cfg.model.vit_kwargs = "vit_base_patch16_clip_quickgelu_224", dict(TINY_CLIP)
    return cfg


def test_every_method_builds_a_distinct_config_and_unknown_names_fail() -> None:
    models = {name: method_config(name, None, [], "runs/x").model for name in METHODS}
    assert models["aim"] == load_config().model  # the default is AIM, unchanged
    assert models["aim_spatial"].temporal_embedding is False and models["aim_spatial"].temporal_adapter is False
    assert models["aim_spatial_temporal"].joint_adapter is False and models["aim_spatial_temporal"].temporal_adapter
    assert {m.method for m in models.values()} == {"aim", "linear_probe", "full_finetune", "lora", "vpt_shallow",
                                                   "vpt_deep", "linear_adapter"}  # fmt: skip
    assert method_config("lora", None, [], "runs/x").output_dir == os.path.join("runs/x", "lora")
    with pytest.raises(ValueError, match="unknown method 'adapter': choose from aim_spatial, "):
        method_config("adapter", None, [], "runs/x")


def test_cost_counts_parameters_and_memory_grows_with_the_trainable_set() -> None:
    probe = measure_cost(_cfg("linear_probe"), torch.device("cpu"), warmup=1, steps=1)
    full = measure_cost(_cfg("full_finetune"), torch.device("cpu"), warmup=1, steps=1)
    assert probe["tunable_params"] == 64 * 5 + 5 and full["tunable_params"] == full["total_params"]
    assert probe["train_clips_per_s"] > 0 and full["train_clips_per_s"] > 0
    params_mib = full["total_params"] * 4 / 2**20
    # full fine-tuning adds gradients + two AdamW states for every weight, and activations saved everywhere
    assert full["peak_memory_mib"] > probe["peak_memory_mib"] + 2.9 * params_mib
    assert probe["peak_memory_mib"] > params_mib


def test_pair_accuracy_scores_only_the_pair_classes() -> None:
    videos = [{"index": i, "label": y, "pred": p} for i, (y, p) in enumerate([(0, 0), (1, 0), (2, 2), (3, 3), (4, 5)])]
    assert pair_accuracy(videos, [(0, 1), (2, 3)]) == 75.0
    with pytest.raises(ValueError, match="no evaluated video"):
        pair_accuracy(videos, [(7, 8)])


def test_outputs_table_json_and_chart(tmp_path) -> None:
    rows = [
        {"method": "aim", "tunable_params": 20182, "gflops_per_clip": 0.05, "train_clips_per_s": 30.0,
         "peak_memory_mib": 20.0, "top1": 100.0, "top5": 100.0, "temporal_pairs_top1": 100.0},
        {"method": "linear_probe", "tunable_params": 390, "gflops_per_clip": 0.04, "train_clips_per_s": 60.0,
         "peak_memory_mib": 10.0, "top1": 60.0, "top5": 100.0, "temporal_pairs_top1": 50.0},
    ]  # fmt: skip
    paths = write_outputs(rows, str(tmp_path), {"config": "configs/demo.yaml", "command": "python tools/compare.py"})
    table = open(paths["md"]).read()
    assert "| aim | 20,182 | 0.0500 | 30.0 | 20.0 | 100.0 | 100.0 | 100.0 |" in table
    assert "- command: python tools/compare.py" in table
    data = json.load(open(paths["json"]))
    assert data["rows"] == rows and data["meta"]["machine"]
    assert os.path.getsize(paths["png"]) > 10_000
    assert "temporal pairs" not in markdown_table([{k: v for k, v in rows[0].items() if "pairs" not in k}])
