import math

import pytest
import torch

from aim_video.engine.optim import build_optimizer, build_param_groups, build_scheduler, decays, warmup_cosine
from tests.engine.conftest import TinyAdapted


def test_only_trainable_parameters_reach_the_optimizer(tiny):
    groups = build_param_groups(tiny, tiny.trainable_parameter_names(), lr=1e-3, weight_decay=0.05)
    in_opt = {id(p) for g in groups for p in g["params"]}
    assert in_opt == {id(p) for n, p in tiny.named_parameters() if not n.startswith("backbone.")}
    assert not any(id(p) in in_opt for p in tiny.backbone.parameters())


def test_no_weight_decay_on_biases_norms_and_embeddings(tiny):
    groups = build_param_groups(tiny, tiny.trainable_parameter_names(), lr=1e-3, weight_decay=0.05)
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert wd == {
        "adapter.0.weight": 0.05,
        "adapter.0.bias": 0.0,
        "adapter.2.weight": 0.05,
        "adapter.2.bias": 0.0,
        "norm.weight": 0.0,
        "norm.bias": 0.0,
        "temporal_embedding": 0.0,
        "head.weight": 0.05,
        "head.bias": 0.0,
    }
    assert decays(tiny)["backbone.weight"] is True  # the rule is by module type; frozen ones are filtered elsewhere


def test_backbone_lr_multiplier_spares_the_head(tiny):
    names = tiny.trainable_parameter_names()
    groups = build_param_groups(tiny, names, lr=1e-3, weight_decay=0.05, backbone_lr_mult=0.1)
    lr = {n: g["lr"] for g in groups for n in g["param_names"]}
    assert lr["head.weight"] == lr["head.bias"] == 1e-3
    assert all(v == pytest.approx(1e-4) for n, v in lr.items() if not n.startswith("head."))
    assert sorted(g["name"] for g in groups) == ["backbone_decay", "backbone_no_decay", "head_decay", "head_no_decay"]


def test_frozen_parameter_listed_as_trainable_is_an_error(tiny):
    with pytest.raises(ValueError, match="requires_grad=False"):
        build_param_groups(tiny, ["backbone.weight"], lr=1e-3, weight_decay=0.05)
    with pytest.raises(ValueError, match="not in the model"):
        build_param_groups(tiny, ["nope"], lr=1e-3, weight_decay=0.05)


def test_warmup_then_cosine_values():
    assert warmup_cosine(0, 4, 12) == pytest.approx(0.25)
    assert warmup_cosine(3, 4, 12) == pytest.approx(1.0)
    assert warmup_cosine(4, 4, 12) == pytest.approx(1.0)
    assert warmup_cosine(8, 4, 12) == pytest.approx(0.5)
    assert warmup_cosine(12, 4, 12) == pytest.approx(0.0)
    assert warmup_cosine(12, 4, 12, min_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(6, 4, 12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))


def test_scheduler_scales_every_group_by_the_same_factor(tiny):
    names = tiny.trainable_parameter_names()
    groups = build_param_groups(tiny, names, lr=1e-3, weight_decay=0.05, backbone_lr_mult=0.1)
    opt = build_optimizer(groups, 1e-3, (0.9, 0.999))
    sched = build_scheduler(opt, warmup_steps=2, total_steps=6)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    head = [lrs[0] for lrs in seen]  # groups are ordered head first
    assert head[:3] == pytest.approx([5e-4, 1e-3, 1e-3])
    assert head[-1] < head[2]
    for lrs in seen:
        assert lrs[-1] == pytest.approx(lrs[0] * 0.1)


def test_adamw_step_leaves_no_decay_params_untouched_without_gradient(tiny):
    groups = build_param_groups(tiny, tiny.trainable_parameter_names(), lr=1e-1, weight_decay=0.5)
    opt = build_optimizer(groups, 1e-1, (0.9, 0.999))
    tiny.head.bias.data.fill_(1.0)
    tiny.head.weight.data.fill_(1.0)
    for p in tiny.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    opt.step()
    assert torch.all(tiny.head.bias == 1.0)  # no decay, zero gradient
    assert torch.allclose(tiny.head.weight, torch.full_like(tiny.head.weight, 1.0 - 0.1 * 0.5))  # decoupled decay


class _ListsNoDecay(TinyAdapted):
    """A model that names a weight matrix in timm's no_weight_decay(): it must not decay."""

    def no_weight_decay(self):
        return {"adapter.0.weight"}


def test_names_in_no_weight_decay_never_decay():
    model = _ListsNoDecay()
    assert decays(model)["adapter.0.weight"] is False and decays(model)["adapter.2.weight"] is True
    groups = build_param_groups(model, model.trainable_parameter_names(), lr=1e-3, weight_decay=0.05)
    wd = {n: g["weight_decay"] for g in groups for n in g["param_names"]}
    assert wd["adapter.0.weight"] == 0.0 and wd["adapter.2.weight"] == 0.05


def test_the_schedule_stays_at_its_floor_after_the_last_step_and_peaks_at_one_with_a_floor():
    """Steps past total_steps (a resume under another global batch can reach them) keep the floor: an unclamped
    cosine rose again towards the peak lr. With min_ratio the warm-up still ends at the peak (1), and the cosine
    spans [min_ratio, 1]."""
    for step in (12, 13, 16, 20):
        assert warmup_cosine(step, 4, 12, min_ratio=0.1) == pytest.approx(0.1)
        assert warmup_cosine(step, 4, 12) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine(4, 4, 12, min_ratio=0.1) == pytest.approx(1.0)
    assert warmup_cosine(8, 4, 12, min_ratio=0.1) == pytest.approx(0.1 + 0.9 * 0.5)


def test_the_optimizer_uses_the_configured_betas(tiny):
    groups = build_param_groups(tiny, tiny.trainable_parameter_names(), lr=1e-3, weight_decay=0.05)
    opt = build_optimizer(groups, 1e-3, (0.8, 0.95))  # train.betas (a list after the YAML round trip)
    assert all(tuple(g["betas"]) == (0.8, 0.95) for g in opt.param_groups)
    assert all("param_names" not in g for g in opt.param_groups)
