"""Checkpoint -> (config, model) for evaluation and inference, and the process group for multi-rank testing.

A checkpoint is given as any of: the exported ``model_trainable.safetensors`` (or any trainable-weights file), an
engine checkpoint folder (``step_XXXXXXXX/`` holding ``trainable.safetensors``), the engine's ``checkpoints/`` folder
(its ``latest`` pointer is followed) or a run's output folder. The file's ``config`` metadata is the resolved
config it was trained with; the frozen backbone comes from ``cfg.model.pretrained``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass

import torch
import torch.distributed as dist
from omegaconf import OmegaConf

from aim_video.config import PATH_KEYS, Config, ConfigError, from_dict, load_config, save_config, to_dict
from aim_video.models.build import build_model
from aim_video.models.trainable_io import load_trainable, read_metadata, read_trainable

log = logging.getLogger(__name__)


def resolve_checkpoint(path: str) -> str:
    """The trainable-weights file that ``path`` designates (see the module docstring for the accepted forms)."""
    if os.path.isfile(path):
        return path
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if os.path.isfile(os.path.join(path, "trainable.safetensors")):
        return os.path.join(path, "trainable.safetensors")
    export = os.path.join(path, "model_trainable.safetensors")
    if os.path.isfile(export):  # a run folder: its export, unless a later run stopped with newer checkpoints
        try:
            newest = resolve_checkpoint(os.path.join(path, "checkpoints"))
        except FileNotFoundError:
            return export
        steps = [int(read_metadata(f).get("step", "-1")) for f in (export, newest)]
        if steps[1] > steps[0]:
            log.warning("%s is from step %d, %s from step %d: evaluating the newer", export, steps[0], newest, steps[1])
            return newest
        return export
    for root in (path, os.path.join(path, "checkpoints")):
        pointer = os.path.join(root, "latest")
        if os.path.isfile(pointer):
            with open(pointer) as f:
                name = f.read().strip()
            candidate = os.path.join(root, name, "trainable.safetensors")
            if os.path.isfile(candidate):
                return candidate
            raise FileNotFoundError(f"{pointer} names '{name}', which has no trainable.safetensors ({candidate})")
    raise FileNotFoundError(
        f"{path} holds no trainable.safetensors, model_trainable.safetensors or 'latest' pointer: pass an engine "
        "checkpoint folder (checkpoints/step_XXXXXXXX) or the exported model_trainable.safetensors"
    )


def checkpoint_config(path: str) -> Config | None:
    """The resolved config stored in a trainable-weights file, or None when it has none."""
    _, meta = read_trainable(path)
    if "config" not in meta:
        return None
    return from_dict(OmegaConf.create(meta["config"]))


def class_names(cfg: Config, path: str, setting: str = "data.class_map") -> list[str] | None:
    """The class names of this evaluation: the configured ones (class map, train CSV or class folders), checked
    against the names training stored in the weights file, or those stored names when nothing is configured or
    the configured source is missing (the weights moved to another machine without the run's class map).

    Two numberings of the same classes (a class map in generation order against a CSV's sorted labels) give
    wrong labels or wrong names in every report, without any other error. `setting`: what the messages name as the
    place to give the class names (a tool's own flag)."""
    from aim_video.data.annotations import AnnotationError
    from aim_video.data.loader import resolve_classes

    stored = read_metadata(path).get("classes")
    trained = json.loads(stored) if stored else None
    try:
        now = resolve_classes(cfg)
    except AnnotationError as err:  # weights copied to another machine: the training run's class map is not there
        if not trained:
            raise
        log.warning("%s; using the %d class names stored in %s", err, len(trained), path)
        now = None
    if trained and now is not None and len(now) != len(trained):
        given = setting if setting != "data.class_map" else "this evaluation's classes (data.class_map, else the " \
            "train CSV's labels or class folders)"  # fmt: skip
        raise ValueError(
            f"{given}: {len(now)} classes, but {path} was trained with {len(trained)}: give the class map "
            f"training used as {setting} (the checkpoint's config names it)"
        )
    if trained and now is not None and list(now) != trained:
        pairs = enumerate(zip(trained, now, strict=False))
        first = next((k for k, (a, b) in pairs if a != b), min(len(now), len(trained)))
        raise ValueError(
            f"{path} was trained with other class numbers than this evaluation gives: class {first} is "
            f"{trained[first] if first < len(trained) else '-'!r} there, {now[first] if first < len(now) else '-'!r} "
            f"here. Set {setting} to the class map training used (the checkpoint's config names it)"
        )
    return list(now) if now is not None else trained


def use_stored_classes(cfg: Config, path: str, folder: str) -> None:
    """When the config gives no class names it can read here (a list-file train source, or the training machine's
    class map and train CSV) but the weights file stores them, write them to ``folder/classes.txt`` and point
    ``cfg.data.class_map`` at it: an evaluation class-folder tree or labelled CSV is then numbered as training
    numbered it, instead of being refused."""
    from aim_video.data.annotations import AnnotationError, write_lines
    from aim_video.data.loader import resolve_classes

    stored = read_metadata(path).get("classes")
    if not stored:
        return
    try:
        if resolve_classes(cfg) is not None:
            return
    except AnnotationError:
        if os.path.exists(cfg.data.class_map or cfg.data.train_list):  # a file here that is wrong, not one left behind
            raise
    cfg.data.class_map = os.path.join(folder, "classes.txt")
    write_lines(cfg.data.class_map, json.loads(stored))
    log.info("class names from %s written to %s (data.class_map)", path, cfg.data.class_map)


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb and not (f"{prefix}{key}" in PATH_KEYS and _same_file(va, vb)):
            out.append(f"{prefix}{key}: {vb!r} (checkpoint) -> {va!r}")
    return out


def _same_file(a: object, b: object) -> bool:
    """Two spellings of one path (training saves them absolute; a config has them relative to the checkout)."""
    return bool(a) and bool(b) and os.path.abspath(str(a)) == os.path.abspath(str(b))


def resolve_eval_config(checkpoint_file: str, config_path: str | None, overrides: list[str]) -> Config:
    """``--config`` (or, without one, the checkpoint's own config) plus overrides; model differences are logged."""
    try:
        saved = checkpoint_config(checkpoint_file)
    except ConfigError as err:  # written by another version of aim-video: --config can stand in for it
        if not config_path:
            raise ConfigError(f"{checkpoint_file}: {err}; pass --config with the training YAML") from None
        log.warning("%s: its stored config does not load (%s): using --config, unchecked", checkpoint_file, err)
        saved = None
    if config_path:
        cfg = load_config(config_path, overrides)
    elif saved is not None:
        with tempfile.TemporaryDirectory() as tmp:  # validate the overrides like any CLI: through load_config
            try:
                cfg = load_config(save_config(saved, tmp), overrides)
            except ConfigError as err:  # name the checkpoint, not the temporary copy of its config
                raise ConfigError(
                    str(err).replace(os.path.join(tmp, "config.yaml"), f"{checkpoint_file}'s config")
                ) from None
    else:
        raise ValueError(f"{checkpoint_file} carries no 'config' metadata: pass --config with the training YAML")
    if saved is not None:
        changed = _differences(to_dict(cfg)["model"], to_dict(saved)["model"], "model.")
        for key in INPUT_KEYS:  # the clips the model sees: a bare --config YAML lost the training's overrides
            was, now = getattr(saved.data, key), getattr(cfg.data, key)
            if was != now:
                changed.append(f"data.{key}: {was} (checkpoint) -> {now}")
        for line in changed:
            log.warning("evaluating with a setting that differs from training: %s", line)
    return cfg


# data settings that shape what the model sees; the views (test_num_clips, test_num_crops) are the protocol's choice
INPUT_KEYS = ("num_frames", "sampling", "frame_stride", "input_size", "test_short_side", "mean", "std")


def load_model(cfg: Config, checkpoint_file: str, device: torch.device) -> torch.nn.Module:
    """The AIM model with the frozen backbone from ``cfg.model.pretrained`` and the trainable set from the file."""
    model = build_model(cfg.model, cfg.data.num_frames, cfg.data.input_size)
    load_trainable(model, checkpoint_file)
    return model.to(device).eval()


@dataclass(frozen=True)
class Process:
    rank: int
    world_size: int
    device: torch.device


def init_process(timeout_min: float = 60.0) -> Process:
    """Join the process group the launcher described (torchrun or the deepspeed launcher set RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT, or `srun` did: `world_from_slurm`); a plain run is a world of one. The device and
    backend are chosen as training chooses them (`device_and_backend`): `DS_ACCELERATOR=cpu` evaluates on the CPU
    with gloo even where GPUs are visible; on CUDA, nccl. `timeout_min` (train.dist_timeout_min) bounds how long the
    ranks wait for the slowest one (the shards' results are gathered once, at the end)."""
    from aim_video.engine.distributed import device_and_backend, process_group_timeout, world_from_slurm

    timeout = process_group_timeout(timeout_min)
    world_from_slurm()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device, backend = device_and_backend(local_rank)
    if device.type != "cpu":
        from deepspeed.accelerator import get_accelerator

        get_accelerator().set_device(local_rank)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend, init_method="env://", timeout=timeout)
    rank = dist.get_rank() if world_size > 1 else 0
    return Process(rank=rank, world_size=world_size, device=device)
