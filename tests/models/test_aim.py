"""AIM is exact to the paper: frame-by-frame identity at init, temporal mixing, checkpointing, gradients."""

from __future__ import annotations

import pytest
import torch

from aim_video.models.adapter import Adapter
from aim_video.models.aim import AIMBlock, DropPath
from tests.models.conftest import NUM_FRAMES, TIMM_ARCH, aim_from, perturb_adapters, random_vit


def _video(batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, NUM_FRAMES, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", ["vit_base_patch16_clip_quickgelu_224", TIMM_ARCH])
@pytest.mark.parametrize("variant", [{}, {"num_temporal_adapters": 2, "mlp_adapter_scale": 1.0}])
def test_init_equals_frozen_vit_frame_by_frame(arch: str, variant: dict) -> None:
    vit = random_vit(arch)
    model = aim_from(vit, drop_path_rate=0.2, **variant).eval()
    video = _video()
    with torch.no_grad():
        feats = model.forward_features(video)  # [B, T, N, D]
        ref = torch.stack([vit.forward_features(video[:, t]) for t in range(NUM_FRAMES)], dim=1)
        logits = model(video)
    assert feats.shape == ref.shape == (2, NUM_FRAMES, 17, 64)
    assert (feats - ref).abs().max().item() <= 1e-5
    expected = model.head(ref[:, :, 0].mean(dim=1))  # per-frame CLS -> mean over T -> head
    assert torch.allclose(logits, expected, atol=1e-6)


def test_temporal_adapter_mixes_frames_and_only_within_a_clip() -> None:
    vit = random_vit()
    for temporal in (True, False):
        model = aim_from(vit, temporal=temporal).eval()
        perturb_adapters(model)
        video = _video()
        changed = video.clone()
        changed[0, 0] += 1.0  # only frame 0 of clip 0
        with torch.no_grad():
            a, b = model.forward_features(video), model.forward_features(changed)
        frame_diff = (a - b).abs().amax(dim=(2, 3))  # [B, T]
        assert frame_diff[0, 0] > 1e-3
        assert frame_diff[1].max() == 0  # another clip of the batch is never touched
        if temporal:
            assert (frame_diff[0, 1:] > 1e-4).all()
        else:
            assert frame_diff[0, 1:].max() == 0


def test_temporal_branch_calls_the_blocks_own_norm_and_attention() -> None:
    model = aim_from(random_vit())
    calls = []
    block = model.backbone.blocks[0]
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(i[0].shape)) for m in (block.norm1, block.attn)]
    with torch.no_grad():
        model(_video(batch=1))
    for h in hooks:
        h.remove()
    # norm1 and attn run twice: over time on [B*N, T, D], then over space on [B*T, N, D]
    assert calls == [(17, NUM_FRAMES, 64), (17, NUM_FRAMES, 64), (NUM_FRAMES, 17, 64), (NUM_FRAMES, 17, 64)]
    attn_params = sum(p.numel() for n, p in model.named_parameters() if ".attn." in n)
    assert attn_params == sum(p.numel() for b in random_vit().blocks for p in b.attn.parameters())


def _loss_and_grads(model, video, checkpointing: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    model.set_grad_checkpointing(checkpointing)
    torch.manual_seed(123)  # same drop_path / dropout draws in both runs
    out = model(video)
    out.square().sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("temporal_embedding", [True, False])
def test_checkpointing_same_outputs_and_grads_trainable_only(temporal_embedding: bool) -> None:
    # without the temporal embedding no block input requires grad: reentrant checkpointing would lose the grads
    model = aim_from(random_vit(), temporal_embedding=temporal_embedding, drop_path_rate=0.3, head_dropout=0.5)
    perturb_adapters(model)
    model.train()
    video = _video()
    out_plain, grads_plain = _loss_and_grads(model, video, checkpointing=False)
    out_ckpt, grads_ckpt = _loss_and_grads(model, video, checkpointing=True)
    assert torch.allclose(out_plain, out_ckpt, atol=1e-6)
    trainable = model.trainable_parameter_names()
    assert sorted(grads_plain) == sorted(grads_ckpt) == sorted(trainable)  # no frozen parameter has a grad
    for name in trainable:
        assert grads_plain[name].abs().max() > 0, name
        assert torch.allclose(grads_plain[name], grads_ckpt[name], atol=1e-6, rtol=1e-5), name


def test_drop_path_only_on_temporal_and_mlp_adapter_branches() -> None:
    vit = random_vit()
    model = aim_from(vit, drop_path_rate=0.9)
    rates = [blk.drop_path.rate.item() for blk in model.backbone.blocks]
    assert rates == pytest.approx([0.0, 0.9])  # linear over depth, from 0 at the first block
    drop_paths = [name for name, m in model.named_modules() if isinstance(m, DropPath)]
    assert drop_paths == ["backbone.blocks.0.drop_path", "backbone.blocks.1.drop_path"]  # one module type: one graph
    assert not any(key.endswith("drop_path.rate") for key in model.state_dict())  # a buffer, not a checkpoint key
    assert not any(isinstance(m, DropPath) for m in aim_from(vit, drop_path_rate=0.0).modules())
    # adapter branches are zero at init, so train-mode drop_path there changes nothing; frozen branches have none
    video = _video()
    with torch.no_grad():
        model.train()
        train_out = model.forward_features(video)
        model.eval()
        eval_out = model.forward_features(video)
    assert torch.equal(train_out, eval_out)


def test_block_ablation_switches_and_scale() -> None:
    vit = random_vit()
    model = aim_from(vit, adapter_blocks=[1], spatial=False, num_temporal_adapters=2)
    first, second = model.backbone.blocks
    assert not any(isinstance(m, Adapter) for m in first.modules())
    assert second.t_adapter_in.skip and not second.t_adapter.skip and second.mlp_adapter is not None
    assert isinstance(second.s_adapter, torch.nn.Identity)
    # the MLP-adapter branch is added with weight `mlp_adapter_scale`: linear in it
    block = aim_from(vit, spatial=False, temporal=False).backbone.blocks[0]
    torch.nn.init.normal_(block.mlp_adapter.fc2.weight, std=0.1)
    x = torch.randn(2 * NUM_FRAMES, 17, 64)
    outs = {}
    with torch.no_grad():
        for scale in (0.0, 0.5, 1.0):
            block.mlp_adapter_scale = scale
            outs[scale] = block(x, NUM_FRAMES)
    assert torch.allclose(outs[1.0] - outs[0.0], 2 * (outs[0.5] - outs[0.0]), atol=1e-5)
    assert (outs[0.5] - outs[0.0]).abs().max() > 1e-3


@pytest.mark.parametrize("impl", ["math", "matmul", "reduce"])
@pytest.mark.parametrize("arch", ["vit_base_patch16_clip_quickgelu_224", TIMM_ARCH])
def test_every_temporal_attention_computes_the_same(impl: str, arch: str) -> None:
    """model.temporal_attention changes how the attention over T is computed, never what: outputs and gradients
    equal the default's (the module's own SDPA call) in fp32, and stay close under bf16 autocast."""
    ref_model = aim_from(random_vit(arch))
    perturb_adapters(ref_model)
    other = aim_from(random_vit(arch), temporal_attention=impl)
    other.load_state_dict(ref_model.state_dict())
    assert {blk.temporal_attention for blk in other.backbone.blocks} == {impl}
    video = _video()
    ref_out, ref_grads = _loss_and_grads(ref_model, video, checkpointing=False)
    out, grads = _loss_and_grads(other, video, checkpointing=False)
    assert (out - ref_out).abs().max() < 1e-5 * max(1.0, ref_out.abs().max().item())
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert (grad - ref_grads[name]).abs().max() <= 1e-4 * max(1.0, ref_grads[name].abs().max().item()), name
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = other(video)
    assert (low.float() - ref_out).abs().max() < 0.05 * ref_out.abs().max()


def test_temporal_attention_is_checked() -> None:
    with pytest.raises(ValueError, match="model.temporal_attention must be one of sdpa, math, matmul, reduce"):
        aim_from(random_vit(), temporal_attention="flash")


def test_block_rejects_non_prenorm_blocks() -> None:
    from timm.models.vision_transformer import ResPostBlock

    with pytest.raises(TypeError, match="pre-norm"):
        AIMBlock(ResPostBlock(dim=64, num_heads=4))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_attention_in_low_precision(dtype: torch.dtype) -> None:
    model = aim_from(random_vit()).eval()
    perturb_adapters(model)
    assert all(blk.attn.fused_attn for blk in model.backbone.blocks)  # timm's F.scaled_dot_product_attention path
    video = _video()
    with torch.no_grad():
        ref = model.forward_features(video)
        low = model.to(dtype).forward_features(video.to(dtype))
        for blk in model.backbone.blocks:
            blk.attn.fused_attn = False
        low_eager = model.forward_features(video.to(dtype))
    assert low.dtype == dtype and torch.isfinite(low).all()
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    assert (low.float() - ref).abs().max() < tol * ref.abs().max()
    assert (low.float() - low_eager.float()).abs().max() < tol * ref.abs().max()


def test_autocast_bf16_matches_fp32() -> None:
    model = aim_from(random_vit()).eval()
    perturb_adapters(model)
    video = _video()
    with torch.no_grad():
        ref = model(video)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(video)
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()


def test_wrong_frame_count_and_shape_fail_clearly() -> None:
    model = aim_from(random_vit())
    with pytest.raises(ValueError, match="built for 4 frames"):
        model(torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, T, C, H, W\]"):
        model(torch.randn(4, 3, 32, 32))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_autocast_fused_attention_matches_fp32(dtype: torch.dtype) -> None:
    model = aim_from(random_vit()).cuda()
    perturb_adapters(model)
    model.set_grad_checkpointing(True)
    video = _video().cuda()
    ref = model(video)
    with torch.autocast("cuda", dtype=dtype):
        low = model(video)
        low.float().square().sum().backward()
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()
    assert all(model.get_parameter(n).grad is not None for n in model.trainable_parameter_names())


def test_a_written_out_temporal_attention_refuses_an_attention_it_would_compute_otherwise() -> None:
    """matmul/reduce rewrite timm's plain Attention: with attention dropout (or a gate) they would silently drop it."""
    with pytest.raises(ValueError, match=r"is Attention with attention dropout .*: set model.temporal_attention=sdpa"):
        aim_from(random_vit(attn_drop_rate=0.1), temporal_attention="matmul")
    assert aim_from(random_vit(attn_drop_rate=0.1), temporal_attention="sdpa") is not None


def _perturbed_block(**kwargs):
    from tests.models.conftest import aim_from, perturb_adapters

    model = aim_from(random_vit(), **kwargs)
    perturb_adapters(model)
    return model


def test_joint_adapter_reads_norm2_of_the_block_input_after_attention() -> None:
    """The MLP adapter's input is h = norm2(x) (the same h as the frozen MLP), scaled by mlp_adapter_scale."""
    blk = _perturbed_block(spatial=False, temporal=False, mlp_adapter_scale=0.7).backbone.blocks[0]
    x = torch.randn(2 * NUM_FRAMES, 17, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x1 = x + blk.ls1(blk.attn(blk.norm1(x)))
        h = blk.norm2(x1)
        expected = x1 + blk.ls2(blk.mlp(h)) + 0.7 * blk.mlp_adapter(h)
        assert torch.allclose(blk(x, NUM_FRAMES), expected, atol=1e-5)


def test_temporal_branch_goes_through_drop_path_in_training() -> None:
    """With stochastic depth, train mode drops/rescales the temporal branch per frame (eval mode does not)."""
    model = _perturbed_block(spatial=False, joint=False, drop_path_rate=0.9)
    blk = model.backbone.blocks[1]  # rate 0.9
    x = torch.randn(2 * NUM_FRAMES, 17, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        blk.eval()
        ref = blk(x, NUM_FRAMES)
        blk.train()
        torch.manual_seed(0)
        out = blk(x, NUM_FRAMES)
    assert not torch.allclose(out, ref, atol=1e-5)


def test_adapter_blocks_limit_the_spatial_adapter_too() -> None:
    """adapter_blocks=[1]: block 0 gets no adapter at all (spatial included), block 1 gets all three."""
    from aim_video.models.adapter import Adapter
    from tests.models.conftest import aim_from

    first, second = aim_from(random_vit(), adapter_blocks=[1]).backbone.blocks
    assert not any(isinstance(m, Adapter) for m in first.modules())
    assert isinstance(second.s_adapter, Adapter) and second.t_adapter is not None and second.mlp_adapter is not None


def test_trainable_set_is_adapters_temporal_embedding_final_norm_and_head() -> None:
    """The temporal embedding and the final norm are trainable (and require grad); one temporal adapter by default."""
    from tests.models.conftest import aim_from

    model = aim_from(random_vit())
    names = set(model.trainable_parameter_names())
    assert {"temporal_embed", "backbone.norm.weight", "backbone.norm.bias", "head.weight"} <= names
    params = dict(model.named_parameters())
    assert params["temporal_embed"].requires_grad and params["backbone.norm.weight"].requires_grad
    assert not params["backbone.norm_pre.weight"].requires_grad
    assert all(blk.t_adapter_in is None for blk in model.backbone.blocks)
    assert not any(".t_adapter_in." in n for n in names)


def test_ssv2_second_temporal_adapter_is_on_the_temporal_branch() -> None:
    """num_temporal_adapters=2: the extra skip adapter after norm1 changes the temporal branch's output."""
    model = _perturbed_block(spatial=False, joint=False, num_temporal_adapters=2)
    blk = model.backbone.blocks[0]
    x = torch.randn(2 * NUM_FRAMES, 17, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = blk(x, NUM_FRAMES)
        blk.t_adapter_in.reset_parameters()  # identity again
        after = blk(x, NUM_FRAMES)
    assert not torch.allclose(before, after, atol=1e-5)


def test_drop_path_is_identity_in_eval_and_per_sample_rescaled_in_training() -> None:
    """DropPath: eval mode returns x; train mode keeps or zeroes each sample whole, kept ones divided by 1-rate."""
    from aim_video.models.aim import DropPath

    x = torch.randn(64, 5, 8, generator=torch.Generator().manual_seed(0)) + 3.0
    dp = DropPath(0.5)
    assert torch.equal(dp.eval()(x), x)
    torch.manual_seed(0)
    out = dp.train()(x)
    kept = [bool((o != 0).any()) for o in out]
    assert 0 < sum(kept) < len(kept)  # some samples dropped, some kept
    for o, xi, k in zip(out, x, kept, strict=True):
        assert torch.allclose(o, xi / 0.5) if k else torch.equal(o, torch.zeros_like(o))
