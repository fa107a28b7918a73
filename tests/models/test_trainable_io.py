"""aim_video.models.trainable_io: the exported trainable-weights file gets the usual file mode."""

from __future__ import annotations

import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from aim_video.models.build import build_model
from aim_video.models.trainable_io import read_metadata, read_trainable, save_trainable
from tests.models.conftest import NUM_FRAMES, TINY_CLIP, random_vit, tiny_cfg


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_weight_files_get_the_mode_the_umask_gives_other_outputs(tmp_path, umask) -> None:
    """safetensors writes 0600 files: model_trainable.safetensors was unreadable to the group (a shared cluster
    folder) while config.yaml and the logs next to it were 0644."""
    model = build_model(tiny_cfg(), NUM_FRAMES)
    previous = os.umask(umask)
    try:
        path = save_trainable(model, str(tmp_path / "model_trainable.safetensors"), {"step": 1})
        (tmp_path / "config.yaml").write_text("step: 1\n")  # an ordinary output, for comparison
    finally:
        os.umask(previous)
    mode = stat.S_IMODE(os.stat(path).st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE(os.stat(tmp_path / "config.yaml").st_mode)
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "model_trainable.safetensors"]  # no temp file left
    tensors, meta = read_trainable(path)
    assert set(tensors) == set(model.trainable_parameter_names()) and meta["step"] == "1"


def test_a_cut_or_foreign_file_is_named_not_a_safetensors_traceback(tmp_path) -> None:
    junk = tmp_path / "rand.safetensors"
    junk.write_bytes(b"\x01" + os.urandom(5000))  # not a pickle's or zip's first byte
    with pytest.raises(ValueError, match=r"rand.safetensors cannot be read as safetensors .*export it again"):
        read_trainable(str(junk))
    # a backbone's weights given as the checkpoint to evaluate: "header too large"
    torch.save({"visual.conv1.weight": torch.zeros(2)}, str(tmp_path / "ViT-B-16.pt"))
    with pytest.raises(ValueError, match=r"ViT-B-16.pt is a PyTorch .pt/.pth file, not aim-video's trained weights"):
        read_metadata(str(tmp_path / "ViT-B-16.pt"))
    torch.save({"w": torch.zeros(2)}, str(tmp_path / "legacy.pth"), _use_new_zipfile_serialization=False)  # a pickle
    with pytest.raises(ValueError, match=r"legacy.pth is a PyTorch .pt/.pth file"):
        read_metadata(str(tmp_path / "legacy.pth"))
    # a copy cut short whose header length happens to start with a pickle's byte is still a damaged safetensors
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes((128).to_bytes(8, "little") + b'{"__metadata__":')
    with pytest.raises(ValueError, match=r"cut.safetensors cannot be read as safetensors"):
        read_metadata(str(cut))


def test_a_file_of_another_frame_count_is_refused_before_anything_is_copied(tmp_path) -> None:
    import torch

    from aim_video.models.trainable_io import load_trainable
    from tests.models.conftest import perturb_adapters

    trained = build_model(tiny_cfg(), NUM_FRAMES)
    perturb_adapters(trained)
    path = save_trainable(trained, str(tmp_path / "trainable.safetensors"), {"step": 3})
    other = build_model(tiny_cfg(), 2 * NUM_FRAMES)
    trainable = set(trained.trainable_parameter_names())
    other.load_state_dict({k: v for k, v in trained.state_dict().items() if k not in trainable}, strict=False)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    shapes = r"'temporal_embed' has shape \(1, 4, 64\), model expects \(1, 8, 64\)"
    with pytest.raises(ValueError, match=shapes):
        load_trainable(other, path)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())  # untouched: adapters, head too


def _same_backbone(model, source) -> None:
    trainable = set(source.trainable_parameter_names())
    model.load_state_dict({k: v for k, v in source.state_dict().items() if k not in trainable}, strict=False)


def test_a_run_starts_from_trained_adapters_with_its_own_head_and_frame_count(tmp_path) -> None:
    """model.init_trainable: K400-trained adapters start a run on other classes and twice the frames; the head keeps
    its fresh initialisation, the temporal embedding is resampled over time, everything else is copied."""
    import torch

    from aim_video.models.trainable_io import init_from_trainable
    from tests.models.conftest import perturb_adapters

    trained = build_model(tiny_cfg(), NUM_FRAMES)
    perturb_adapters(trained)
    with torch.no_grad():
        trained.temporal_embed.copy_(torch.linspace(0, 3, NUM_FRAMES)[None, :, None].expand_as(trained.temporal_embed))
    path = save_trainable(trained, str(tmp_path / "trainable.safetensors"), {"step": 3})
    new = build_model(tiny_cfg(num_classes=7), 2 * NUM_FRAMES)
    _same_backbone(new, trained)
    head = new.head.weight.detach().clone()
    summary = init_from_trainable(new, path, "head")
    assert "27 of 29 trainable tensors; the head (head.bias, head.weight) keeps its new initialisation" in summary
    assert "resampled temporal_embed 4 -> 8 frames" in summary
    assert torch.equal(new.head.weight, head)
    old = dict(trained.named_parameters())
    copied = [n for n in new.trainable_parameter_names() if not n.startswith("head.") and n != "temporal_embed"]
    assert copied and all(torch.equal(new.get_parameter(n), old[n]) for n in copied)
    assert torch.allclose(new.temporal_embed[0, :, 0], torch.linspace(0, 3, 2 * NUM_FRAMES))  # ends kept, linear


def test_starting_from_weights_of_another_backbone_or_adapter_layout_is_refused(tmp_path) -> None:
    from aim_video.models.trainable_io import init_from_trainable
    from tests.models.conftest import perturb_adapters

    trained = build_model(tiny_cfg(), NUM_FRAMES)
    perturb_adapters(trained)
    path = save_trainable(trained, str(tmp_path / "trainable.safetensors"), {"step": 3})
    with pytest.raises(ValueError, match="trained on other frozen backbone weights"):
        init_from_trainable(build_model(tiny_cfg(), NUM_FRAMES), path, "head")  # another random backbone
    fewer = build_model(tiny_cfg(adapter_layers="top:1"), NUM_FRAMES)
    _same_backbone(fewer, trained)
    with pytest.raises(ValueError, match=r"does not match this model's trainable set: missing \[\] \(0\), unexpected"):
        init_from_trainable(fewer, path, "head")


def test_the_head_is_copied_for_the_same_classes_only_not_the_same_count(tmp_path) -> None:
    """Five classes here, five there, but other ones: the head's rows are the old run's classes, so it keeps its new
    initialisation; the same names (or none known) copy it."""
    import torch

    from aim_video.models.trainable_io import init_from_trainable
    from tests.models.conftest import perturb_adapters

    trained = build_model(tiny_cfg(), NUM_FRAMES)
    perturb_adapters(trained)
    names = ["archery", "bowling", "curling", "diving", "eating"]
    path = save_trainable(trained, str(tmp_path / "trainable.safetensors"), {"step": 3, "classes": names})
    for classes, copied in ((names, True), (None, True), (["a", "b", "c", "d", "e"], False)):
        new = build_model(tiny_cfg(), NUM_FRAMES)
        _same_backbone(new, trained)
        fresh = new.head.weight.detach().clone()
        summary = init_from_trainable(new, path, "head", classes)
        assert torch.equal(new.head.weight, trained.head.weight if copied else fresh), classes
        assert ("keeps its new initialisation" in summary) is not copied


def _tiny_state() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in random_vit(seed=3).state_dict().items()}


def test_trainable_weights_load_into_the_same_backbone_at_another_input_size(tmp_path) -> None:
    """pos_embed (resampled per input size) is left out of the frozen fingerprint: another resolution loads."""
    from aim_video.models.trainable_io import load_trainable, save_trainable

    backbone = str(tmp_path / "backbone.safetensors")
    save_file(_tiny_state(), backbone)
    kwargs = {k: v for k, v in TINY_CLIP.items() if k != "img_size"}
    small = build_model(tiny_cfg(pretrained=backbone, vit_kwargs=kwargs), NUM_FRAMES, input_size=32)
    large = build_model(tiny_cfg(pretrained=backbone, vit_kwargs=kwargs), NUM_FRAMES, input_size=48)
    assert small.backbone.pos_embed.shape != large.backbone.pos_embed.shape
    path = save_trainable(small, str(tmp_path / "w.safetensors"))
    load_trainable(large, path)


def test_a_backbone_with_the_same_norms_but_other_values_is_refused() -> None:
    """The fingerprint's signed sum tells shuffled weights (equal norms) from the saved ones."""
    from aim_video.models.trainable_io import frozen_differences, frozen_fingerprint

    model = build_model(tiny_cfg(), NUM_FRAMES)
    saved = frozen_fingerprint(model)
    w = model.backbone.blocks[0].mlp.fc1.weight
    with torch.no_grad():
        w.copy_(w.reshape(-1)[torch.randperm(w.numel(), generator=torch.Generator().manual_seed(0))].reshape(w.shape))
    assert any(d.startswith("backbone.blocks.0.mlp.fc1.weight") for d in frozen_differences(saved, model))


def test_load_trainable_refuses_a_file_with_fewer_tensors(tmp_path) -> None:
    """A trainable file of another adapter layout (a subset of the keys) is refused, not loaded partly."""
    from aim_video.models.trainable_io import load_trainable, save_trainable

    torch.manual_seed(0)
    top = build_model(tiny_cfg(adapter_layers="top:1"), NUM_FRAMES)
    torch.manual_seed(0)
    full = build_model(tiny_cfg(), NUM_FRAMES)
    path = save_trainable(top, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="does not match this model's trainable set"):
        load_trainable(full, path)


def test_trainable_file_is_fp32_whatever_the_model_dtype(tmp_path) -> None:
    """save_trainable writes fp32 tensors even from a bf16 model."""
    from aim_video.models.trainable_io import read_trainable, save_trainable

    model = build_model(tiny_cfg(), NUM_FRAMES).to(torch.bfloat16)
    tensors, _ = read_trainable(save_trainable(model, str(tmp_path / "w.safetensors")))
    assert {t.dtype for t in tensors.values()} == {torch.float32}
