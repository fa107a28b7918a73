"""Pretrained weights: OpenAI CLIP and timm layouts in every file form give the same model; mismatches fail loudly."""

from __future__ import annotations

import collections
import datetime
import json
import os

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from aim_video.models.build import build_model
from aim_video.models.pretrained import PretrainedLoadError, load_pretrained, resolve_weight_file
from tests.models.conftest import (
    CLIP_ARCH,
    NUM_FRAMES,
    TIMM_ARCH,
    openai_full_state,
    openai_visual_state,
    random_vit,
    save_torchscript,
    tiny_cfg,
)


@pytest.fixture(scope="module")
def clip_vit() -> torch.nn.Module:
    """A tiny CLIP-architecture ViT whose weights are exactly representable in fp16 (as OpenAI ships them)."""
    vit = random_vit()
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(p.half().float())
    return vit


def _timm_state(vit: torch.nn.Module) -> dict[str, torch.Tensor]:
    state = dict(vit.state_dict())
    state["head.weight"], state["head.bias"] = torch.randn(1000, 64), torch.zeros(1000)  # an ImageNet classifier
    return state


def _features(path: str, **cfg) -> torch.Tensor:
    model = build_model(tiny_cfg(pretrained=path, **cfg), NUM_FRAMES).eval()
    with torch.no_grad():
        return model.forward_features(torch.randn(1, NUM_FRAMES, 3, 32, 32, generator=torch.Generator().manual_seed(0)))


def test_every_layout_and_file_form_gives_identical_outputs(clip_vit, tmp_path) -> None:
    files = {}
    files["openai_torchscript"] = str(tmp_path / "ViT-B-16.pt")
    save_torchscript(openai_full_state(clip_vit), files["openai_torchscript"])
    files["openai_bare_fp16"] = str(tmp_path / "visual_bare.pth")
    torch.save({k: v.half() for k, v in openai_visual_state(clip_vit, prefix="").items()}, files["openai_bare_fp16"])
    files["timm_pth_wrapped"] = str(tmp_path / "timm.pth")
    torch.save({"state_dict": _timm_state(clip_vit), "epoch": 3}, files["timm_pth_wrapped"])
    files["timm_safetensors"] = str(tmp_path / "timm.safetensors")
    save_file(_timm_state(clip_vit), files["timm_safetensors"])
    snapshot = tmp_path / "models--timm--tiny_clip" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file(_timm_state(clip_vit), str(snapshot / "model.safetensors"))
    (tmp_path / "models--timm--tiny_clip" / "refs").mkdir()
    (tmp_path / "models--timm--tiny_clip" / "refs" / "main").write_text("abc123")
    files["hf_cache_folder"] = str(tmp_path / "models--timm--tiny_clip")
    files["hf_snapshot_folder"] = str(snapshot)

    with torch.no_grad():
        frames = torch.randn(1, NUM_FRAMES, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        reference = torch.stack([clip_vit.forward_features(frames[:, t]) for t in range(NUM_FRAMES)], dim=1)
    for form, path in files.items():
        feats = _features(path)
        assert torch.equal(feats, _features(files["timm_safetensors"])), form
        assert (feats - reference).abs().max() <= 1e-5, form  # the loaded backbone is the image model


def test_loaded_weights_are_fp32_and_final_norm_comes_from_ln_post(clip_vit, tmp_path) -> None:
    path = str(tmp_path / "ViT-B-16.pt")
    save_torchscript(openai_full_state(clip_vit), path)
    model = build_model(tiny_cfg(pretrained=path), NUM_FRAMES)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert torch.equal(model.backbone.norm.weight, clip_vit.norm.weight)
    assert torch.equal(model.backbone.blocks[1].attn.qkv.weight, clip_vit.blocks[1].attn.qkv.weight)
    assert model.backbone.norm.weight.requires_grad and not model.backbone.norm_pre.weight.requires_grad


def test_missing_unexpected_and_wrong_shape_keys_fail_with_lists(clip_vit, tmp_path) -> None:
    state = _timm_state(clip_vit)
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.1.extra.weight"] = torch.zeros(3)
    state["norm_pre.weight"] = torch.ones(65)
    path = str(tmp_path / "broken.safetensors")
    save_file(state, path)
    with pytest.raises(PretrainedLoadError) as info:
        build_model(tiny_cfg(pretrained=path), NUM_FRAMES)
    message = str(info.value)
    assert "missing backbone keys (1): ['blocks.1.mlp.fc2.bias']" in message
    assert "unexpected keys (1): ['blocks.1.extra.weight']" in message
    assert "norm_pre.weight: checkpoint (65,) vs model (64,)" in message


def test_checkpoint_of_another_architecture_fails(clip_vit, tmp_path) -> None:
    path = str(tmp_path / "clip.pth")
    torch.save(_timm_state(clip_vit), path)  # CLIP has norm_pre and a bias-free patch conv; vit_tiny does not
    with pytest.raises(PretrainedLoadError, match="patch_embed.proj.bias"):
        build_model(tiny_cfg(arch=TIMM_ARCH, pretrained=path), NUM_FRAMES)


def test_a_file_with_none_of_the_vits_weights_says_so(tmp_path) -> None:
    """A ResNet's weights read "the checkpoint's ViT is , the model's width 64, depth 2" and listed every key; a
    file of no tensors listed every backbone key as missing."""
    resnet = {"conv1.weight": torch.zeros(8, 3, 7, 7), "bn1.weight": torch.ones(8), "fc.weight": torch.zeros(10, 8)}
    torch.save(resnet, str(tmp_path / "resnet18.pth"))
    with pytest.raises(PretrainedLoadError, match=r"holds none of the .*'s weights \(3 tensors, e.g. \['bn1"):
        build_model(tiny_cfg(pretrained=str(tmp_path / "resnet18.pth")), NUM_FRAMES)
    torch.save({"optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, str(tmp_path / "optimizer.pt"))
    with pytest.raises(PretrainedLoadError, match=r"holds none of the .*Transformer's weights \(0 tensors\)"):
        build_model(tiny_cfg(pretrained=str(tmp_path / "optimizer.pt")), NUM_FRAMES)


def test_checkpoint_with_adapter_weights_is_rejected(tmp_path) -> None:
    model = build_model(tiny_cfg(), NUM_FRAMES)
    path = str(tmp_path / "aim_backbone.pth")
    torch.save(model.backbone.state_dict(), path)
    with pytest.raises(PretrainedLoadError, match=r"AIM keys already present \(24\)"):
        load_pretrained(model, path)


def test_openai_weights_need_quickgelu(clip_vit, tmp_path) -> None:
    path = str(tmp_path / "ViT-B-16.pt")
    save_torchscript(openai_full_state(clip_vit), path)
    with pytest.raises(PretrainedLoadError, match="QuickGELU"):
        build_model(tiny_cfg(arch="vit_base_patch16_clip_224", pretrained=path), NUM_FRAMES)


def test_openclip_weights_take_the_activation_their_config_names(tmp_path) -> None:
    """OpenCLIP writes the OpenAI layout for its own models too, most of them (LAION) with GELU: its
    open_clip_config.json decides, and loading into the wrong activation is refused, both ways."""
    gelu = "vit_base_patch16_clip_224"
    laion = random_vit(arch=gelu, seed=3)
    with torch.no_grad():  # the layout's writer stores fp16, as OpenAI and OpenCLIP ship
        for p in laion.parameters():
            p.copy_(p.half().float())
    folder = tmp_path / "laion"
    folder.mkdir()
    torch.save(openai_full_state(laion), str(folder / "open_clip_pytorch_model.bin"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": 64, "vision_cfg": {}}}))
    model = build_model(tiny_cfg(arch=gelu, pretrained=str(folder)), NUM_FRAMES)
    ours, theirs = model.backbone.state_dict(), laion.state_dict()
    for key in ("blocks.1.attn.qkv.weight", "blocks.0.mlp.fc1.bias", "norm_pre.weight", "pos_embed", "norm.weight"):
        assert torch.equal(ours[key], theirs[key]), key
    with pytest.raises(PretrainedLoadError, match="quick_gelu=False, but model.arch builds a ViT with QuickGELU"):
        build_model(tiny_cfg(pretrained=str(folder)), NUM_FRAMES)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"quick_gelu": True}}))
    with pytest.raises(PretrainedLoadError, match="quick_gelu=True, but .* GELU: pick a \\*_clip_quickgelu_\\*"):
        build_model(tiny_cfg(arch=gelu, pretrained=str(folder)), NUM_FRAMES)
    (folder / "open_clip_config.json").unlink()  # cannot tell: the architecture asked for, with a warning
    build_model(tiny_cfg(arch=gelu, pretrained=str(folder)), NUM_FRAMES)


def test_an_openclip_training_checkpoint_is_not_taken_for_openais(tmp_path, caplog) -> None:
    """OpenCLIP's training output ({"epoch", "name", "state_dict": {"module.visual.*"}}) holds the OpenAI layout
    with GELU: it was refused from the GELU architecture ("OpenAI's CLIP weights were trained with QuickGELU") and
    went silently into the QuickGELU one, the wrong activation. Only OpenAI's files say they are OpenAI's."""
    gelu = "vit_base_patch16_clip_224"
    laion = random_vit(arch=gelu, seed=4)
    visual = {k: v for k, v in openai_full_state(laion).items() if k.startswith("visual.")}
    path = str(tmp_path / "epoch_32.pt")
    torch.save({"epoch": 32, "name": "laion-run", "state_dict": {f"module.{k}": v for k, v in visual.items()}}, path)
    for arch in (gelu, CLIP_ARCH):
        caplog.clear()
        with caplog.at_level("WARNING"):
            build_model(tiny_cfg(arch=arch, pretrained=path), NUM_FRAMES)
        assert "nothing saying whether they were trained with QuickGELU" in caplog.text
    copy = str(tmp_path / "openai_state.pt")  # OpenAI's state dict saved as a plain file keeps its integer entries
    torch.save(openai_full_state(laion), copy)
    with pytest.raises(PretrainedLoadError, match="OpenAI's CLIP weights were trained with QuickGELU"):
        build_model(tiny_cfg(arch=gelu, pretrained=copy), NUM_FRAMES)


def test_files_that_are_not_image_backbones_are_named_for_what_they_are(tmp_path) -> None:
    """A trained aim-video file as model.pretrained listed every backbone key missing; an augreg .npz failed inside
    torch.load; timm's train.py checkpoints (an argparse.Namespace beside the weights) failed weights_only."""
    import argparse

    from aim_video.config import load_config, to_yaml
    from aim_video.models.trainable_io import save_trainable

    trained = save_trainable(
        build_model(tiny_cfg(), NUM_FRAMES), str(tmp_path / "model_trainable.safetensors"),
        {"config": to_yaml(load_config(None, ["model.pretrained=/weights/vit.safetensors"]))},
    )  # fmt: skip
    with pytest.raises(PretrainedLoadError, match=r"aim-video's trained weights .*\(/weights/vit.safetensors, as"):
        build_model(tiny_cfg(pretrained=trained), NUM_FRAMES)
    (tmp_path / "augreg.npz").write_bytes(b"PK\x03\x04")
    with pytest.raises(PretrainedLoadError, match=r"\.npz .* is not read; .* \.safetensors"):
        build_model(tiny_cfg(pretrained=str(tmp_path / "augreg.npz")), NUM_FRAMES)
    source = random_vit()
    torch.save({"state_dict": source.state_dict(), "args": argparse.Namespace(lr=1e-3), "epoch": 3},
               str(tmp_path / "checkpoint.pth.tar"))  # fmt: skip
    model = build_model(tiny_cfg(pretrained=str(tmp_path / "checkpoint.pth.tar")), NUM_FRAMES)
    assert torch.equal(model.backbone.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)
    with pytest.raises(FileNotFoundError, match=r"For OpenAI's ViT-L/14@336px, download its \.pt"):
        resolve_weight_file("ViT-L/14@336px")


def test_transformers_clip_weights_are_named_and_open_clips_file_beside_them_is_taken(tmp_path) -> None:
    """laion's repositories hold transformers' model.safetensors next to open_clip's file: the first was taken as
    timm's layout, with a warning about unknown CLIP weights and every key listed missing."""
    folder = tmp_path / "CLIP-ViT-B-16-laion2B"
    folder.mkdir()
    save_file({"vision_model.embeddings.patch_embedding.weight": torch.zeros(64, 3, 8, 8)},
              str(folder / "model.safetensors"))  # fmt: skip
    with pytest.raises(PretrainedLoadError, match=r"model.safetensors: these are Hugging Face transformers' CLIP"):
        build_model(tiny_cfg(pretrained=str(folder)), NUM_FRAMES)
    torch.save(openai_full_state(random_vit()), str(folder / "open_clip_pytorch_model.bin"))
    assert resolve_weight_file(str(folder)) == str(folder / "open_clip_pytorch_model.bin")


def test_a_wider_deeper_vit_is_summarised_not_only_listed(tmp_path) -> None:
    """ViT-L/16 weights into a ViT-B/16 gave one line per key (hundreds) and no summary of what differs."""
    source = random_vit(embed_dim=96, depth=3, num_heads=4)
    path = str(tmp_path / "bigger.safetensors")
    save_file(dict(source.state_dict()), path)
    with pytest.raises(PretrainedLoadError) as err:
        build_model(tiny_cfg(pretrained=path), NUM_FRAMES)
    message = str(err.value)
    assert "the checkpoint's ViT is width 96, depth 3, the model's width 64, depth 2" in message
    assert "wrong shapes (" in message and " more" in message and len(message) < 4000


def test_timm_layout_openai_weights_need_quickgelu_too(clip_vit, tmp_path) -> None:
    """timm's own `*_clip_quickgelu_224.openai` weights live in the repository named after the GELU architecture
    (timm/vit_base_patch16_clip_224.openai): loading them into that architecture gives other outputs, silently."""
    snapshot = tmp_path / "models--timm--vit_base_patch16_clip_224.openai" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    save_file(_timm_state(clip_vit), str(snapshot / "open_clip_model.safetensors"))
    gelu = "vit_base_patch16_clip_224"
    with pytest.raises(PretrainedLoadError, match="OpenAI's CLIP weights .* need QuickGELU"):
        build_model(tiny_cfg(arch=gelu, pretrained=str(snapshot.parent.parent)), NUM_FRAMES)
    plain = tmp_path / "folder"  # a renamed copy: the tag in config.json still tells
    plain.mkdir()
    save_file(_timm_state(clip_vit), str(plain / "model.safetensors"))
    (plain / "config.json").write_text(json.dumps({"architecture": gelu, "pretrained_cfg": {"tag": "openai"}}))
    with pytest.raises(PretrainedLoadError, match="QuickGELU"):
        build_model(tiny_cfg(arch=gelu, pretrained=str(plain)), NUM_FRAMES)
    build_model(tiny_cfg(pretrained=str(plain)), NUM_FRAMES)  # the QuickGELU architecture takes them


def test_timm_layout_clip_weights_of_unknown_origin_are_loaded_with_a_warning(clip_vit, tmp_path, caplog) -> None:
    """QuickGELU weights renamed `clip_b16.safetensors` loaded into the GELU architecture without a word."""
    renamed = tmp_path / "clip_b16.safetensors"
    save_file(_timm_state(clip_vit), str(renamed))
    with caplog.at_level("WARNING"):
        build_model(tiny_cfg(arch="vit_base_patch16_clip_224", pretrained=str(renamed)), NUM_FRAMES)
    assert "CLIP weights in timm's layout with nothing saying whose they are" in caplog.text
    assert "using model.arch's GELU unchecked" in caplog.text
    caplog.clear()
    tagged = tmp_path / "tagged"  # timm's config.json says whose they are: checked, nothing to warn about
    tagged.mkdir()
    save_file(_timm_state(clip_vit), str(tagged / "model.safetensors"))
    (tagged / "config.json").write_text(json.dumps({"architecture": CLIP_ARCH, "pretrained_cfg": {"tag": "laion"}}))
    with caplog.at_level("WARNING"):
        build_model(tiny_cfg(pretrained=str(tagged)), NUM_FRAMES)
    assert "nothing saying whose" not in caplog.text


def test_weights_of_another_patch_size_are_refused(tmp_path) -> None:
    """timm's filter resizes a patch kernel of another size to the model's, so ViT-B/32 weights went into a
    ViT-B/16 without a word."""
    source = random_vit(patch_size=4)  # the tiny model's patches are 8x8
    path = str(tmp_path / "vit_p4.safetensors")
    save_file(dict(source.state_dict()), path)
    with pytest.raises(PretrainedLoadError, match=r"patches are 4x4 pixels, the model's \(model.arch\) 8x8"):
        build_model(tiny_cfg(pretrained=path), NUM_FRAMES)
    openai = openai_visual_state(source)
    torch.save(openai, str(tmp_path / "openai_p4.pt"))
    with pytest.raises(PretrainedLoadError, match="patches are 4x4"):
        build_model(tiny_cfg(pretrained=str(tmp_path / "openai_p4.pt")), NUM_FRAMES)


def test_position_embedding_resampled_to_the_input_size(tmp_path) -> None:
    source = random_vit(img_size=48)  # pretrained at 48 px: 6x6 patches; the model runs at 32 px: 4x4
    path = str(tmp_path / "vit48.safetensors")
    save_file(dict(source.state_dict()), path)
    model = build_model(tiny_cfg(pretrained=path), NUM_FRAMES)
    expected = resample_abs_pos_embed(source.pos_embed.detach(), new_size=(4, 4), old_size=(6, 6), num_prefix_tokens=1)
    assert model.backbone.pos_embed.shape == (1, 17, 64)
    assert torch.allclose(model.backbone.pos_embed, expected)


def test_the_model_follows_data_input_size(tmp_path) -> None:
    """data.input_size never reached timm: a 48 px crop failed in the first forward pass (timm's assertion), deep
    inside training or tools/infer.py. Now the backbone is built for it and the checkpoint resampled."""
    from aim_video.config import ConfigError

    source = random_vit()  # pretrained at 32 px (4x4 patches)
    path = str(tmp_path / "vit32.safetensors")
    save_file(dict(source.state_dict()), path)
    kwargs = {k: v for k, v in tiny_cfg().vit_kwargs.items() if k != "img_size"}
    model = build_model(tiny_cfg(pretrained=path, vit_kwargs=kwargs), NUM_FRAMES, input_size=48)
    expected = resample_abs_pos_embed(source.pos_embed.detach(), new_size=(6, 6), old_size=(4, 4), num_prefix_tokens=1)
    assert torch.allclose(model.backbone.pos_embed, expected)
    assert model(torch.randn(1, NUM_FRAMES, 3, 48, 48)).shape == (1, 5)
    with pytest.raises(ConfigError, match="model.vit_kwargs.img_size=32 but data.input_size=48"):
        build_model(tiny_cfg(pretrained=path), NUM_FRAMES, input_size=48)


def test_timm_tiny_vit_from_a_local_file(tmp_path) -> None:
    """What the demo does: a timm-layout vit_tiny checkpoint (with its 1000-class head) from a local file."""
    torch.manual_seed(0)
    vit = timm.create_model(TIMM_ARCH, pretrained=False, **tiny_cfg().vit_kwargs)
    path = str(tmp_path / "vit_tiny.pth")
    torch.save(vit.state_dict(), path)
    model = build_model(tiny_cfg(arch=TIMM_ARCH, pretrained=path), NUM_FRAMES)
    assert torch.equal(model.backbone.blocks[0].mlp.fc1.weight, vit.blocks[0].mlp.fc1.weight)


def test_hub_names_get_a_download_hint() -> None:
    with pytest.raises(FileNotFoundError, match="huggingface-cli download timm/vit_base_patch16_clip_224.openai"):
        resolve_weight_file("vit_base_patch16_clip_224.openai")
    with pytest.raises(FileNotFoundError, match=r"openaipublic.*ViT-B-16\.pt"):
        resolve_weight_file("ViT-B/16")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        build_model(tiny_cfg(pretrained="/nonexistent/weights.pth"), NUM_FRAMES)


def test_folder_without_weights_and_unreadable_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        resolve_weight_file(str(tmp_path))
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedLoadError, match=r"cannot read checkpoint .*corrupt.pth: not a torch checkpoint"):
        build_model(tiny_cfg(pretrained=str(bad)), NUM_FRAMES)
    assert os.path.exists(bad)
    pickled = tmp_path / "whole_model.pth"  # torch.save(model): torch's own advice, weights_only=False, is not ours
    torch.save({"model": collections.OrderedDict(), "saved": datetime.date(2026, 11, 27)}, pickled)
    with pytest.raises(PretrainedLoadError, match=r"pickles Python objects besides tensors.*model.state_dict\(\)"):
        build_model(tiny_cfg(pretrained=str(pickled)), NUM_FRAMES)


def test_the_weights_tell_the_normalisation_they_were_trained_with(clip_vit, tmp_path) -> None:
    """A recipe's CLIP statistics kept after switching to an ImageNet ViT (0.5 for augreg) cost accuracy silently;
    training now warns when the weights say otherwise."""
    from aim_video.config import CLIP_MEAN, load_config
    from aim_video.engine.fit import normalization_warning
    from aim_video.models.pretrained import weights_normalization

    folder = tmp_path / "vit_tiny_patch16_224.augreg_in21k"
    folder.mkdir()
    save_file(_timm_state(clip_vit), str(folder / "model.safetensors"))
    half = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    (folder / "config.json").write_text(json.dumps({"architecture": TIMM_ARCH, "pretrained_cfg": half}))
    assert weights_normalization(str(folder), TIMM_ARCH)[:2] == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert weights_normalization(str(folder / "model.safetensors"), "vit_base_patch16_clip_224")[0] == (0.5,) * 3
    plain = str(tmp_path / "timm.safetensors")
    save_file(_timm_state(clip_vit), plain)
    assert weights_normalization(plain, "vit_base_patch16_clip_224")[0] == CLIP_MEAN
    assert weights_normalization(plain, TIMM_ARCH) is None  # an ImageNet ViT's file alone does not say
    cfg = load_config(None, [f"model.arch={TIMM_ARCH}", f"model.pretrained={folder}"])  # the CLIP default stats
    warning = normalization_warning(cfg)
    assert "differ from the statistics the backbone was trained with, mean [0.5, 0.5, 0.5]" in warning
    cfg.data.mean, cfg.data.std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    assert normalization_warning(cfg) == ""


def _tiny_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in random_vit(seed=3).state_dict().items()}


def test_a_checkpoint_wrapped_under_model_key_loads(tmp_path) -> None:
    """A .pth holding {'model': state_dict} (DeiT/MAE style) is unwrapped and loaded."""
    state = _tiny_state()
    path = str(tmp_path / "wrapped.pth")
    torch.save({"model": state, "epoch": 1}, path)
    model = build_model(tiny_cfg(), NUM_FRAMES)
    load_pretrained(model, path)
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


def test_hf_cache_follows_refs_main_among_several_snapshots(tmp_path) -> None:
    """With several snapshots in a Hugging Face cache folder, refs/main picks the one loaded."""
    repo = tmp_path / "models--timm--tiny"
    good, bad = _tiny_state(), {k: v.clone() for k, v in random_vit(seed=4).state_dict().items()}
    for name, state in (("aaa", bad), ("mmm", good), ("zzz", bad)):
        (repo / "snapshots" / name).mkdir(parents=True)
        save_file(state, str(repo / "snapshots" / name / "model.safetensors"))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("mmm")
    model = build_model(tiny_cfg(), NUM_FRAMES)
    load_pretrained(model, str(repo))
    assert torch.equal(model.backbone.blocks[0].attn.qkv.weight, good["blocks.0.attn.qkv.weight"])


def test_an_openai_tagged_file_name_needs_quickgelu(tmp_path) -> None:
    """A weight file named <arch>.openai.<ext> is recognised as OpenAI's and refused on a GELU CLIP arch."""
    vit = random_vit("vit_base_patch16_clip_224", seed=3)
    path = str(tmp_path / "vit_base_patch16_clip_224.openai.safetensors")
    save_file({k: v.clone() for k, v in vit.state_dict().items()}, path)
    model = build_model(tiny_cfg("vit_base_patch16_clip_224"), NUM_FRAMES)
    with pytest.raises(PretrainedLoadError, match="QuickGELU"):
        load_pretrained(model, path)
