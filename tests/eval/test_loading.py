"""Class names stored with the weights: evaluation checks its numbering against them, or uses them."""

from __future__ import annotations

import os

import pytest
import torch

from aim_video.eval.loading import class_names
from aim_video.models.build import build_model
from aim_video.models.trainable_io import save_trainable
from tests.eval.conftest import tiny_config


def test_a_class_numbering_other_than_trainings_is_refused_and_the_stored_names_fill_in(tmp_path):
    """The demo's class map numbers classes in generation order, its Kinetics CSV by sorted labels: evaluating the
    CSV without the map scored 5.6% instead of 48.6%, silently."""
    cfg = tiny_config(str(tmp_path), num_classes=3)
    cfg.model.pretrained = ""  # a random backbone: only the stored metadata matters here
    path = save_trainable(
        build_model(cfg.model, cfg.data.num_frames), str(tmp_path / "w.safetensors"), {"classes": ["b", "a", "c"]}
    )
    cfg.data.class_map, cfg.data.train_list = "", str(tmp_path / "train.txt")  # a list file: no names configured
    assert class_names(cfg, path) == ["b", "a", "c"]
    with open(tmp_path / "classes.txt", "w") as f:
        f.write("a\nb\nc\n")
    cfg.data.class_map = str(tmp_path / "classes.txt")
    with pytest.raises(ValueError, match=r"other class numbers .*class 0 is 'b' there, 'a' here.*data.class_map"):
        class_names(cfg, path)
    with open(tmp_path / "classes.txt", "w") as f:
        f.write("b\na\nc\n")
    assert class_names(cfg, path) == ["b", "a", "c"]
    old = save_trainable(build_model(cfg.model, cfg.data.num_frames), str(tmp_path / "old.safetensors"))
    assert class_names(cfg, old) == ["b", "a", "c"] and os.path.isfile(old)  # files from before: nothing to check


def test_a_bad_override_names_the_checkpoint_not_a_temporary_file(tmp_path):
    from aim_video.config import ConfigError, to_yaml
    from aim_video.eval.loading import resolve_eval_config

    cfg = tiny_config(str(tmp_path), num_classes=3)
    cfg.model.pretrained = ""
    path = save_trainable(
        build_model(cfg.model, cfg.data.num_frames), str(tmp_path / "w.safetensors"), {"config": to_yaml(cfg)}
    )
    with pytest.raises(ConfigError, match=rf"^{path}'s config with overrides: bad value for config key 'eval.average'"):
        resolve_eval_config(path, None, ["eval.average=mean"])
    # a file from another version of aim-video (a key since removed): --config stands in, without it the file is named
    old = save_trainable(
        build_model(cfg.model, cfg.data.num_frames), str(tmp_path / "old.safetensors"),
        {"config": to_yaml(cfg).replace("model:\n", "model:\n  old_removed_option: 1\n")},
    )  # fmt: skip
    with pytest.raises(ConfigError, match=rf"^{old}: saved config: unknown config key 'model.old_removed_option'"):
        resolve_eval_config(old, None, [])
    (tmp_path / "c.yaml").write_text(to_yaml(cfg))
    assert resolve_eval_config(old, str(tmp_path / "c.yaml"), []).data.num_frames == cfg.data.num_frames


def test_a_run_folder_resolves_to_its_newest_weights(tmp_path, caplog):
    """A run folder gave its export before its checkpoints: after a resumed, longer run was stopped, test.py
    evaluated the older export without a word."""
    from aim_video.eval.loading import resolve_checkpoint

    cfg = tiny_config(str(tmp_path), num_classes=3)
    cfg.model.pretrained = ""
    model = build_model(cfg.model, cfg.data.num_frames)
    export = save_trainable(model, str(tmp_path / "run" / "model_trainable.safetensors"), {"step": 5})
    newer = save_trainable(model, str(tmp_path / "run" / "checkpoints" / "step_00000009" / "trainable.safetensors"),
                           {"step": 9})  # fmt: skip
    (tmp_path / "run" / "checkpoints" / "latest").write_text("step_00000009")
    assert resolve_checkpoint(str(tmp_path / "run")) == newer
    assert "from step 5" in caplog.text and "evaluating the newer" in caplog.text
    save_trainable(model, export, {"step": 9})  # the export of the finished run: preferred
    assert resolve_checkpoint(str(tmp_path / "run")) == export


def test_weights_evaluated_away_from_their_class_files_number_a_val_tree_as_training_did(tmp_path):
    """On another machine the stored config's train CSV and class map are not there: a val class-folder tree was
    then refused (or, before, numbered by its own folders: one class absent shifted every later index)."""
    from aim_video.data.loader import load_split
    from aim_video.eval.loading import use_stored_classes

    cfg = tiny_config(str(tmp_path), num_classes=3)
    cfg.model.pretrained = ""
    path = save_trainable(build_model(cfg.model, cfg.data.num_frames), str(tmp_path / "w.safetensors"),
                          {"classes": ["archery", "bowling", "cooking"]})  # fmt: skip
    for name in ("archery", "cooking"):  # no bowling in this val tree
        os.makedirs(tmp_path / "val" / name)
        (tmp_path / "val" / name / "a.mp4").write_bytes(b"\0")
    cfg.data.train_list, cfg.data.class_map = "/training/machine/train.csv", "/training/machine/classes.txt"
    cfg.data.val_list = str(tmp_path / "val")
    use_stored_classes(cfg, path, str(tmp_path / "out"))
    assert cfg.data.class_map == str(tmp_path / "out" / "classes.txt")
    assert [r.label for r in load_split(cfg, "val").records] == [0, 2]
    assert class_names(cfg, path) == ["archery", "bowling", "cooking"]
    # the usual Kinetics set-up: the train CSV named the classes, no class map (a FileNotFoundError got through)
    cfg.data.train_list, cfg.data.class_map = "/training/machine/kinetics/train.csv", ""
    use_stored_classes(cfg, path, str(tmp_path / "out2"))
    assert [r.label for r in load_split(cfg, "val").records] == [0, 2]
    cfg.data.class_map = ""
    assert class_names(cfg, path) == ["archery", "bowling", "cooking"]


def test_ds_accelerator_cpu_evaluates_on_the_cpu_whatever_gpus_are_visible(monkeypatch):
    """tools/demo.py sets DS_ACCELERATOR=cpu and DeepSpeed's launcher CUDA_VISIBLE_DEVICES=0,1: evaluation asked
    torch for CUDA and took device LOCAL_RANK (rank 1 of a one-GPU machine: invalid device ordinal; on two GPUs the
    CPU demo evaluated with NCCL). It now chooses as training does."""
    import torch
    from deepspeed.accelerator import real_accelerator

    from aim_video.eval.loading import init_process

    def no_device(index):
        raise RuntimeError(f"CUDA error: invalid device ordinal {index}")

    monkeypatch.setattr(real_accelerator, "ds_accelerator", None)  # detected afresh from the environment below
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", no_device)
    for key in ("SLURM_STEP_NUM_TASKS", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert init_process().device == torch.device("cpu")


def test_a_config_that_feeds_the_model_other_clips_than_training_is_named(tmp_path, caplog):
    """A bare --config YAML (training had command-line overrides) changed the sampling, stride or normalisation
    without a word; only model keys and the frame count were compared."""
    from aim_video.config import to_yaml
    from aim_video.eval.loading import resolve_eval_config

    cfg = tiny_config(str(tmp_path), num_classes=3)
    cfg.model.pretrained = ""
    path = save_trainable(
        build_model(cfg.model, cfg.data.num_frames), str(tmp_path / "w.safetensors"), {"config": to_yaml(cfg)}
    )
    with caplog.at_level("WARNING"):
        resolve_eval_config(path, None, ["data.test_num_clips=5"])  # the views are the protocol's: nothing to say
    assert "differs from training" not in caplog.text
    with caplog.at_level("WARNING"):
        resolve_eval_config(path, None, ["data.sampling=uniform", "data.mean=[0.5,0.5,0.5]"])
    assert f"data.sampling: {cfg.data.sampling} (checkpoint) -> uniform" in caplog.text
    assert "data.mean: " in caplog.text and "-> (0.5, 0.5, 0.5)" in caplog.text


def test_a_path_spelled_relative_where_training_saved_it_absolute_is_the_same_setting(tmp_path, caplog, monkeypatch):
    """The demo's own evaluation warned that model.pretrained differed: the same file, absolute in the checkpoint
    and relative in the config."""
    from aim_video.config import to_yaml
    from aim_video.eval.loading import resolve_eval_config

    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    cfg = tiny_config(str(tmp_path), num_classes=3)
    cfg.model.pretrained = str(tmp_path / "weights.safetensors")
    path = save_trainable(
        build_model(cfg.model.__class__(**{**cfg.model.__dict__, "pretrained": ""}), cfg.data.num_frames),
        str(tmp_path / "w.safetensors"), {"config": to_yaml(cfg)},
    )  # fmt: skip
    with caplog.at_level("WARNING"):
        resolve_eval_config(path, None, ["model.pretrained=weights.safetensors"])
    assert "differs from training" not in caplog.text
    with caplog.at_level("WARNING"):
        resolve_eval_config(path, None, ["model.pretrained=other.safetensors"])
    assert "model.pretrained:" in caplog.text


def _saved_weights(tmp_path, meta=None):
    from aim_video.models.trainable_io import save_trainable
    from tests.eval.conftest import tiny_config

    cfg = tiny_config(str(tmp_path), num_classes=3)
    cfg.model.pretrained = ""  # a random backbone, seeded: load_model rebuilds the same one
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.data.num_frames)
    return cfg, save_trainable(model, str(tmp_path / "step_00000004" / "trainable.safetensors"), meta or {})


def test_load_model_returns_an_eval_mode_model(tmp_path) -> None:
    """load_model gives a model in eval mode (no head dropout / drop path while scoring)."""
    from aim_video.eval.loading import load_model

    cfg, path = _saved_weights(tmp_path)
    torch.manual_seed(0)
    assert not load_model(cfg, path, torch.device("cpu")).training


def test_an_engine_step_folder_resolves_to_its_trainable_file(tmp_path) -> None:
    """resolve_checkpoint(step_XXXXXXXX/) is that folder's trainable.safetensors."""
    from aim_video.eval.loading import resolve_checkpoint

    _, path = _saved_weights(tmp_path)
    assert resolve_checkpoint(str(tmp_path / "step_00000004")) == path


def test_stored_classes_do_not_replace_a_class_map_that_is_there(tmp_path) -> None:
    """use_stored_classes leaves data.class_map alone when the configured class names can be read."""
    from aim_video.eval.loading import use_stored_classes

    cfg, path = _saved_weights(tmp_path, {"classes": ["b", "a", "c"]})
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    cfg.data.class_map = str(tmp_path / "classes.txt")
    use_stored_classes(cfg, path, str(tmp_path / "out"))
    assert cfg.data.class_map == str(tmp_path / "classes.txt")
    assert not os.path.exists(tmp_path / "out" / "classes.txt")


def test_a_class_map_that_is_here_but_wrong_is_refused_not_replaced_by_the_stored_names(tmp_path) -> None:
    """A class map given for the evaluation with a name twice was swapped for the weights' names with an INFO line."""
    from aim_video.data.annotations import AnnotationError
    from aim_video.eval.loading import use_stored_classes

    cfg, path = _saved_weights(tmp_path, {"classes": ["b", "a", "c"]})
    (tmp_path / "classes.txt").write_text("a\nb\na\n")
    cfg.data.class_map = str(tmp_path / "classes.txt")
    with pytest.raises(AnnotationError, match="classes.txt"):
        use_stored_classes(cfg, path, str(tmp_path / "out"))
    assert cfg.data.class_map == str(tmp_path / "classes.txt")
    assert not os.path.exists(tmp_path / "out" / "classes.txt")
