"""Every file in configs/ loads against the schema, derives its DeepSpeed config and builds its model (meta device:
shapes and parameter counts without allocating or loading the ViT-B/L weights)."""

import glob
import os
import re

import pytest
import torch

from aim_video.config import load_config
from aim_video.engine.deepspeed_setup import derive_ds_config, peak_lr
from aim_video.models.build import build_model

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))
RECIPES = [p for p in CONFIGS if os.path.basename(p) != "demo.yaml"]

# tunable parameters from the paper (AIM_SPEC.md section 1), in millions
EXPECTED_TUNABLE_M = {"k400_vit_b16": 10.97, "k700_vit_b16": 11.2, "diving48_vit_b16": 10.7, "k400_vit_l14": 38.0,
                      "ssv2_vit_b16": 14.3, "ssv2_vit_l14": 50.0}  # fmt: skip


def test_every_recipe_of_the_paper_has_a_config():
    names = {os.path.basename(p)[: -len(".yaml")] for p in RECIPES}
    assert names >= {
        "k400_vit_b16_8f", "k400_vit_b16_16f", "k400_vit_b16_32f", "k400_vit_l14_8f", "k400_vit_l14_16f",
        "k400_vit_l14_32f", "ssv2_vit_b16_8f", "ssv2_vit_l14_8f", "diving48_vit_b16_32f", "k700_vit_b16_32f",
    }  # fmt: skip


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_loads_and_builds_its_model(path):
    cfg = load_config(path, ['model.pretrained=""'])
    assert cfg.data.num_classes == cfg.model.num_classes
    ds = derive_ds_config(cfg, world_size=8)
    assert ds["train_batch_size"] == cfg.data.batch_size * cfg.train.grad_accum_steps * 8
    with torch.device("meta"):
        model = build_model(cfg.model, cfg.data.num_frames)
    trainable = set(model.trainable_parameter_names())
    assert trainable and all(p.requires_grad == (n in trainable) for n, p in model.named_parameters())
    logits = model(torch.empty(1, cfg.data.num_frames, 3, cfg.data.input_size, cfg.data.input_size, device="meta"))
    assert tuple(logits.shape) == (1, cfg.model.num_classes)
    count = sum(p.numel() for n, p in model.named_parameters() if n in trainable) / 1e6
    key = re.sub(r"_\d+f$", "", os.path.basename(path)[: -len(".yaml")])
    if key in EXPECTED_TUNABLE_M:
        assert count == pytest.approx(EXPECTED_TUNABLE_M[key], rel=0.02), f"{key}: {count:.2f} M tunable"


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_header_says_how_to_launch_and_the_batch_it_assumes(path):
    text = open(path).read()
    header = text.split("\n\n")[0]
    assert f"deepspeed --num_gpus 8 tools/train.py --config configs/{os.path.basename(path)}" in header
    assert "global batch 64" in header and "scale the lr linearly" in header
    cfg = load_config(path)
    assert cfg.data.batch_size * 8 * cfg.train.grad_accum_steps == cfg.train.base_batch_size == 64
    assert peak_lr(cfg, 8) == pytest.approx(3e-4)
    assert cfg.train.weight_decay == 0.05 and cfg.train.warmup_epochs == 2.5 and cfg.train.clip_grad == 0.0
    assert cfg.train.epochs == (50 if cfg.data.num_classes in (174, 48) else 30)
    is_ssv2, is_large = cfg.data.num_classes == 174, "large" in cfg.model.arch
    assert (cfg.data.sampling == "uniform") == (is_ssv2 or cfg.data.num_classes == 48)
    assert cfg.model.num_temporal_adapters == (2 if is_ssv2 else 1)
    assert cfg.model.mlp_adapter_scale == (1.0 if is_ssv2 else 0.5)
    assert cfg.train.backbone_lr_mult == (0.1 if is_large and not is_ssv2 else 1.0)  # K400 ViT-L's only (spec)
    assert (cfg.data.rand_augment_n, cfg.data.random_erasing, cfg.train.label_smoothing, cfg.data.flip) == (
        (4, 0.25, 0.1, False) if is_ssv2 else (0, 0.0, 0.0, True)
    )
