"""Atomic, resumable checkpoints: one folder per save, renamed into place only when every rank's shards are on disk.

Layout under `<output_dir>/checkpoints/`::

    step_00001200/            a complete checkpoint
      deepspeed/              DeepSpeed's files: trainable weights, optimizer (ZeRO shards), lr scheduler, counters
      trainable.safetensors   the trainable set alone (the evaluation / inference format)
      optimizer.safetensors   under ZeRO: the optimizer state whole, by parameter name (a resume under another
                              number of ranks partitions it anew; DeepSpeed's shards only load under the same)
      rng_rank<r>.pt          each rank's Python / NumPy / torch RNG states
      config.yaml             the resolved config
      meta.json               step, epoch, position in the epoch, world size, precision, seed and train list
                              length, metric, whether the epoch's evaluation is still to do (written last)
    latest                    name of the newest complete checkpoint (written atomically after the rename)
    best.json                 name and metric of the best checkpoint (kept when older ones are pruned)
    .tmp-step_...             a save that was interrupted: never read, removed at the next start
    .old-step_...             a checkpoint being replaced by a save at the same step: put back at the next start if
                              the new one never took its place, else removed

DeepSpeed's own `save_checkpoint` writes `latest` from rank 0 with a plain write and no wait for the other ranks, so
it is called with `save_latest=False` into a temporary folder; after a barrier (all shards written) rank 0 fsyncs,
renames the folder and then replaces `latest`. A process killed at any point leaves `latest` naming a loadable
checkpoint. The frozen backbone is not saved (it comes from `model.pretrained`).

Under ZeRO (stage 1 or 2) each rank's optimizer shard holds one slice of the flat parameter groups, and DeepSpeed
refuses to load them under another data-parallel size. So every save also gathers the fp32 master weights and the
AdamW moments of each trainable parameter whole (DeepSpeed's `safe_get_full_*` API) into optimizer.safetensors,
and a resume under another number of ranks loads the module and lr scheduler from DeepSpeed's files and deals this
state out to the new partitions (`safe_set_full_*`). It costs 3 x 4 bytes per trainable parameter: 126 MiB for
ViT-B/16 AIM's 11 M beside DeepSpeed's 167 MiB (measured); `train.elastic_checkpoints=false` leaves it out.
"""

from __future__ import annotations

import ast
import contextlib
import errno
import json
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from aim_video.config import Config, ConfigError, save_config, to_dict, to_yaml
from aim_video.engine.distributed import barrier, broadcast_object, fault_point, rng_state
from aim_video.engine.optimizer_state import SCALER_KEYS, gather_optimizer_state, restore_optimizer_state
from aim_video.models.trainable_io import (
    describe_differences,
    frozen_differences,
    read_trainable,
    save_trainable,
    saved_fingerprint,
)

DS_TAG = "deepspeed"
# train.* settings that live on in the optimizer's parameter groups and the scheduler's base lrs once restored
RESTORED_TRAIN_KEYS = ("lr", "base_batch_size", "scale_lr", "weight_decay", "betas", "backbone_lr_mult")
# train.* settings that reshape the lr schedule when changed on resume (allowed, with a warning)
SCHEDULE_TRAIN_KEYS = ("epochs", "warmup_epochs", "min_lr", "max_steps")
_STEP_DIR = re.compile(r"^step_(\d{8})$")
OPTIMIZER_FILE = "optimizer.safetensors"
# model.* settings a resume may change: where the frozen weights come from (checked by fingerprint), the weights a
# run started from (read at a fresh start only) and how the same model is computed (compiled, checkpointed, the
# temporal attention's kernel: the same outputs and gradients up to rounding in bf16/fp16); random_backbone is the
# choice of an empty pretrained (runs saved before the key existed say false)
RUNTIME_MODEL_KEYS = (
    "pretrained", "random_backbone", "compile", "grad_checkpointing", "temporal_attention", "init_trainable"
)
# what a full disk looks like (seen on a full tmpfs): OSError ENOSPC / EDQUOT, torch's zip writer ("unexpected pos",
# "file write failed", "basic_ios::clear: iostream error"), safetensors' Rust I/O error (StorageFull)
_NO_SPACE = ("No space left", "unexpected pos", "file write failed", "iostream error", "StorageFull", "Disk quota")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or does not match this run."""


def _atomic_write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(path))


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: str) -> None:
    for dirpath, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(dirpath)


def _out_of_space(err: BaseException) -> bool:
    """Whether a save failed because the disk is full (or the quota is used up)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(text in str(err) for text in _NO_SPACE)


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "meta.json")) and os.path.isdir(os.path.join(path, DS_TAG))


def _saved_at(path: str) -> tuple[float, str]:
    """When a checkpoint was saved (meta.json's `saved_at`; its modification time for older ones), then its name."""
    saved = read_meta(path).get("saved_at")
    return (float(saved) if saved is not None else os.path.getmtime(os.path.join(path, "meta.json")), path)


def _finite(metric: Any) -> bool:
    """A metric best.json can rank: NaN (an evaluation that read no video) would stay the maximum forever."""
    return isinstance(metric, (int, float)) and math.isfinite(metric)


def read_meta(path: str) -> dict[str, Any]:
    with open(os.path.join(path, "meta.json")) as f:
        return json.load(f)


def complete_checkpoints(root: str) -> list[str]:
    """The complete checkpoint folders of a run's `root`, oldest first (reads only: no folder made, nothing cleaned)."""
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if _STEP_DIR.match(n))
    return [os.path.join(root, n) for n in names if is_complete(os.path.join(root, n))]


def latest_checkpoint(root: str) -> str | None:
    """The checkpoint `latest` names (falls back to the last saved complete folder if the pointer is unusable)."""
    pointer = os.path.join(root, "latest")
    if os.path.isfile(pointer):
        with open(pointer) as f:
            path = os.path.join(root, f.read().strip())
        if is_complete(path):
            return path
    found = complete_checkpoints(root)
    return max(found, key=_saved_at) if found else None


class CheckpointManager:
    """Saves, finds, prunes and loads the checkpoints of one run folder (all ranks construct it)."""

    def __init__(self, root: str, keep_last: int, rank: int, world_size: int) -> None:
        self.root, self.keep_last, self.rank, self.world_size = root, max(1, keep_last), rank, world_size
        self.classes: list[str] | None = None  # class names stored with the weights (fit sets them)
        self.micro_per_epoch: int | None = None  # micro-batches per rank in an epoch (fit sets it), for meta.json
        self.num_videos: int | None = None  # the train list's length (fit sets it), for meta.json
        if rank == 0:
            os.makedirs(root, exist_ok=True)
            for name in os.listdir(root):
                if name.startswith(".old-"):  # a save at the same step was replacing this checkpoint when killed
                    final = os.path.join(root, name[len(".old-") :])
                    if is_complete(final):  # the new one is in place: the old one goes
                        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
                    else:  # killed between the two renames: the old one comes back
                        shutil.rmtree(final, ignore_errors=True)
                        os.rename(os.path.join(root, name), final)
            for name in os.listdir(root):
                if name.startswith(".tmp-"):  # an interrupted save of an earlier process
                    shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        barrier()

    # ----- finding -----
    def complete_checkpoints(self) -> list[str]:
        """Complete checkpoint folders, oldest first."""
        return complete_checkpoints(self.root)

    def holds(self, path: str) -> bool:
        """Whether `path` is one of this folder's complete checkpoints (links and spellings resolved)."""
        return os.path.realpath(path) in {os.path.realpath(p) for p in self.complete_checkpoints()}

    def latest(self) -> str | None:
        """The checkpoint `latest` names (falls back to the last saved complete folder if the pointer is unusable)."""
        return latest_checkpoint(self.root)

    def best(self) -> dict[str, Any] | None:
        path = os.path.join(self.root, "best.json")
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def resolve_resume(self, spec: str) -> str | None:
        """'' -> None (refused where an earlier run left checkpoints), 'auto' -> newest complete checkpoint or None,
        else the folder given (must be complete)."""
        if not spec:
            found = self.latest()
            if found is not None:  # best.json, keep_last and `latest` would mix the earlier run's saves with these
                raise ConfigError(
                    f"{self.root} holds the checkpoints of an earlier run (the latest: {os.path.basename(found)}): "
                    "go on with it with --resume auto, or train anew in another output_dir (or delete that folder)"
                )
            return None
        if spec == "auto":
            found = self.latest()
            pointer = os.path.join(self.root, "latest")
            if found is None and os.path.isfile(pointer):  # checkpoints were saved: starting from 0 would lose them
                with open(pointer) as f:
                    named = f.read().strip()
                raise CheckpointError(
                    f"--resume auto: {pointer} names {named!r}, but no complete checkpoint is left under {self.root} "
                    "(deleted or damaged): resume from a step_* folder you still have, or delete that folder "
                    "(or use another output_dir) to train anew"
                )
            return found
        if not os.path.isdir(spec):  # bad input (exit status 2), not a checkpoint that cannot be resumed
            raise ConfigError(f"--resume {spec}: no such checkpoint folder (use 'auto' or a step_* folder)")
        if not is_complete(spec):
            raise CheckpointError(
                f"--resume {spec}: incomplete checkpoint (no meta.json or {DS_TAG}/): the save was interrupted; "
                f"use --resume auto to take the newest complete one under {self.root}"
            )
        found = self.latest()
        if found is not None and not self.holds(spec):  # as a new run: this folder's saves and the new ones would mix
            raise ConfigError(
                f"--resume {spec}: {self.root} holds checkpoints of its own (the latest: {os.path.basename(found)}), "
                f"and {spec} is not one of them: go on with those with --resume auto (a run started from {spec} "
                "and stopped saved there), or resume into another output_dir"
            )
        return spec

    # ----- saving -----
    def save(
        self,
        engine: Any,
        cfg: Config,
        step: int,
        epoch: int,
        batches_done: int,
        extra: dict[str, Any] | None = None,
        metric: float | None = None,
    ) -> str:
        """Collective: every rank calls it. Returns the final folder once it and `latest` are in place.

        A full disk (OSError ENOSPC, torch's zip writer "unexpected pos") raises a CheckpointError naming the folder;
        the partial save is removed at the next start and `latest` still names the previous checkpoint.
        """
        name = f"step_{step:08d}"
        with self._full_disk_as_error(name):
            self._write(engine, cfg, name, step, epoch, batches_done, extra, metric)
        barrier()
        return os.path.join(self.root, name)

    @contextlib.contextmanager
    def _full_disk_as_error(self, name: str) -> Iterator[None]:
        """A full disk during a save (OSError ENOSPC, torch's zip writer "unexpected pos", safetensors' StorageFull)
        becomes one CheckpointError naming the folder: it was a traceback, or the bad-input exit status."""
        try:
            yield
        except Exception as err:
            if not _out_of_space(err):
                raise
            first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise CheckpointError(
                f"no space left in {self.root}: saving {name} failed ({type(err).__name__}: {first}). Free space "
                "there (older runs, other files) or give output_dir a larger disk, then --resume auto goes on from "
                f"{self.latest() or 'the start (no checkpoint was saved yet)'}; the partial save is removed then"
            ) from None

    def _write(self, engine: Any, cfg: Config, name: str, step: int, epoch: int, batches_done: int,
               extra: dict[str, Any] | None, metric: float | None) -> None:  # fmt: skip
        """save()'s work: the temporary folder, then renamed into place (rank 0), `latest`, best.json, pruning."""
        final, tmp = os.path.join(self.root, name), os.path.join(self.root, f".tmp-{name}")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp)
        barrier()
        engine.save_checkpoint(tmp, tag=DS_TAG, save_latest=False, exclude_frozen_parameters=True)
        torch.save(rng_state(), os.path.join(tmp, f"rng_rank{self.rank}.pt"))
        if self.rank == 0:
            meta = {
                "step": step,
                "epoch": epoch,
                "batches_done": batches_done,
                "world_size": self.world_size,
                "zero_stage": cfg.train.zero_stage,
                "batch_size": cfg.data.batch_size,
                "repeated_aug": cfg.data.repeated_aug,
                "grad_accum_steps": cfg.train.grad_accum_steps,
                "micro_per_epoch": self.micro_per_epoch,
                # the epoch's order of videos comes from these two: a resume inside the epoch needs the same
                "num_videos": self.num_videos,
                "seed": cfg.train.seed,
                "precision": cfg.train.precision,
                "metric": metric,
                # keep_last keeps the latest saves: after a resume from an earlier checkpoint not the highest steps
                "saved_at": time.time(),
                **(extra or {}),
            }
            save_trainable(
                engine.module,
                os.path.join(tmp, "trainable.safetensors"),
                {"config": to_yaml(cfg), "step": step, "epoch": epoch}
                | ({"classes": self.classes} if self.classes else {}),
            )
            save_config(cfg, tmp)
        if cfg.train.zero_stage > 0 and cfg.train.elastic_checkpoints:
            state = gather_optimizer_state(engine, keep=self.rank == 0)  # collective: every rank's partition
            if self.rank == 0 and state is not None:
                tensors, adam_step = state
                scaler = getattr(engine.optimizer, "loss_scaler", None)  # fp16's dynamic loss scale
                info = {"step": str(adam_step)}
                info |= {key: repr(getattr(scaler, key)) for key in SCALER_KEYS if hasattr(scaler, key)}
                save_file(tensors, os.path.join(tmp, OPTIMIZER_FILE), metadata=info)
        if self.rank == 0:
            _atomic_write_text(os.path.join(tmp, "meta.json"), json.dumps(meta, indent=2))
        barrier()  # every rank's shards and RNG file are written
        fault_point("during_save", step, self.rank)
        if self.rank == 0:
            _fsync_tree(tmp)
            aside = os.path.join(self.root, f".old-{name}")
            if os.path.exists(final):  # saved again at the same step (e.g. after a resume): replace it, keeping the
                shutil.rmtree(aside, ignore_errors=True)  # old one aside until the new one is in place (a kill
                os.rename(final, aside)  # in between: the next start puts it back)
                _fsync_dir(self.root)
            os.rename(tmp, final)
            _fsync_dir(self.root)
            shutil.rmtree(aside, ignore_errors=True)
            _atomic_write_text(os.path.join(self.root, "latest"), name)
            self._update_best()
            self._prune(final)

    def record_metric(self, path: str, metric: float | None) -> None:
        """Collective. Write the evaluation of the checkpoint at `path` in this folder (saved pending before it, by
        this run or by the one it resumed: a long evaluation cannot lose the epoch) into its meta.json, which no
        longer says the epoch's end is pending, then point `latest` at it, update best.json and prune as a save
        does: it is where training stands (after an explicit resume from an older checkpoint, `latest` still named
        the abandoned newer one). The weights are already there: nothing else is written again."""
        if self.rank == 0:
            meta = {**read_meta(path), "metric": metric, "epoch_end_pending": False, "saved_at": time.time()}
            _atomic_write_text(os.path.join(path, "meta.json"), json.dumps(meta, indent=2))
            _atomic_write_text(os.path.join(self.root, "latest"), os.path.basename(path))
            self._update_best()
            self._prune(path)  # the pending save kept the best before this one, which may no longer be best
        barrier()

    def _update_best(self) -> None:
        """best.json from the metrics in the checkpoints' own meta.json: a folder saved again at the same step (after
        a resume) with another metric, or none, can no longer leave best.json naming weights it does not hold."""
        scored = [(meta["metric"], os.path.basename(p)) for p in self.complete_checkpoints()
                  if _finite((meta := read_meta(p)).get("metric"))]  # fmt: skip (NaN: no val video read)
        path = os.path.join(self.root, "best.json")
        if scored:
            metric, name = max(scored, key=lambda pair: (pair[0], -int(pair[1][5:])))  # the earliest of equal ones
            _atomic_write_text(path, json.dumps({"name": name, "metric": metric}))
        elif os.path.exists(path):
            os.remove(path)

    def _prune(self, just_saved: str) -> None:
        """Keep the `keep_last` latest saves (the one just made among them) and the best; by when they were saved,
        not by step: after a resume from an earlier checkpoint the new saves have lower steps than the abandoned
        run's, and ranking by step deleted each new save right after `latest` was pointed at it."""
        best = self.best()
        keep_best = os.path.join(self.root, best["name"]) if best else None
        others = sorted((p for p in self.complete_checkpoints() if p != just_saved), key=_saved_at)
        for path in others[: max(0, len(others) - (self.keep_last - 1))]:
            if path != keep_best:
                shutil.rmtree(path, ignore_errors=True)

    # ----- loading -----
    def load(self, engine: Any, path: str, cfg: Config) -> dict[str, Any]:
        """Restore weights, optimizer, scheduler and this rank's RNG file from `path`; returns its meta."""
        meta = read_meta(path)
        saved_stage = meta.get("zero_stage", 0)
        saved_precision = meta.get("precision") or _saved_train(path).get("precision", cfg.train.precision)
        if saved_stage == 0 and saved_precision != "fp32" and cfg.train.zero_stage > 0:
            raise CheckpointError(
                f"{path} was saved with train.precision={saved_precision} and train.zero_stage=0, which this version "
                "refuses to train (DeepSpeed's stage-0 mixed-precision optimizer: docs/benchmarks.md) and cannot turn "
                "into a ZeRO checkpoint (one without ZeRO holds no whole optimizer state to deal out): it cannot be "
                "resumed. Evaluate its weights (tools/test.py --checkpoint), or start the run anew with ZeRO 1"
            )
        if (saved_stage > 0) != (cfg.train.zero_stage > 0):
            raise CheckpointError(
                f"{path} was saved with train.zero_stage={saved_stage}, this run has {cfg.train.zero_stage}: the "
                "optimizer state is kept whole without ZeRO and in partitions with it. Resume with "
                f"train.zero_stage={saved_stage}" + (" (or the other ZeRO stage)" if saved_stage else "")
            )
        if saved_precision != cfg.train.precision:
            raise CheckpointError(
                f"{path} was saved with train.precision={saved_precision}, this run has {cfg.train.precision}: "
                "DeepSpeed keeps the optimizer state in another form per precision (its fp32 master weights and loss "
                f"scale), which does not load into the other. Resume with train.precision={saved_precision}, or "
                "train anew in another output_dir"
            )
        saved_layout, layout = (meta["world_size"], saved_stage), (self.world_size, cfg.train.zero_stage)
        regroup = cfg.train.zero_stage > 0 and saved_layout != layout  # DeepSpeed's shards fit only their layout
        if regroup and not os.path.isfile(os.path.join(path, OPTIMIZER_FILE)):
            raise CheckpointError(
                f"{path} was saved by {saved_layout[0]} ranks with ZeRO stage {saved_stage}, without "
                f"{OPTIMIZER_FILE} (train.elastic_checkpoints=false, or an older version); this run has {layout[0]} "
                f"with stage {layout[1]}. Resume it with {saved_layout[0]} ranks and train.zero_stage={saved_stage} "
                "(its optimizer shards are per rank)."
            )
        saved_cfg_path = os.path.join(path, "config.yaml")
        saved_data: dict[str, Any] = {}
        if os.path.isfile(saved_cfg_path):
            from aim_video.config import load_config

            saved = to_dict(load_config(saved_cfg_path))  # read once: model, train and data are checked below
            saved_model = saved["model"]
            now_model = to_dict(cfg)["model"]
            diff = sorted(k for k in now_model if k not in RUNTIME_MODEL_KEYS and saved_model.get(k) != now_model[k])
            if diff:
                raise CheckpointError(
                    f"{path} was trained with another model config: "
                    + ", ".join(f"model.{k}={saved_model.get(k)!r} (now {now_model[k]!r})" for k in diff)
                )
            saved_train, now_train = saved["train"], to_dict(cfg)["train"]
            kept = [k for k in RESTORED_TRAIN_KEYS if saved_train.get(k) != now_train[k]]
            if kept:
                raise CheckpointError(
                    f"{path} was saved with "
                    + ", ".join(f"train.{k}={saved_train.get(k)!r}" for k in kept)
                    + f" (this run: {', '.join(f'{now_train[k]!r}' for k in kept)}). Resuming restores the optimizer "
                    "and lr-scheduler states, which keep the saved values, so the change would not take effect: resume "
                    "with the saved values (train.epochs, warmup and min_lr may change), or train anew in another "
                    "output_dir"
                )
            saved_data = saved["data"]
            meta.setdefault("batch_size", saved_data["batch_size"])  # an older meta.json: from the saved config
            meta.setdefault("repeated_aug", saved_data["repeated_aug"])
            meta.setdefault("grad_accum_steps", saved_train["grad_accum_steps"])
            meta.setdefault("seed", saved_train["seed"])
            reshaped = [k for k in SCHEDULE_TRAIN_KEYS if saved_train.get(k) != now_train[k]]
            if reshaped and self.rank == 0:  # allowed (a longer run), but the lr curve bends: say so
                print(
                    "warning: "
                    + ", ".join(f"train.{k} {saved_train.get(k)!r} -> {now_train[k]!r}" for k in reshaped)
                    + " since the checkpoint: the warmup + cosine schedule is recomputed over the new length, so "
                    "the lr jumps to where that schedule is at this step",
                    file=sys.stderr,
                    flush=True,
                )
        try:
            tensors, trainable_meta = read_trainable(os.path.join(path, "trainable.safetensors"))
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
            raise self._damaged(path, "trainable.safetensors", err) from None
        expected = set(engine.module.trainable_parameter_names())
        if set(tensors) != expected:
            raise CheckpointError(
                f"{path}: trainable set differs from this model's (missing {sorted(expected - set(tensors))[:5]}, "
                f"unexpected {sorted(set(tensors) - expected)[:5]})"
            )
        params = dict(engine.module.named_parameters())
        reshaped = [(n, tuple(t.shape), tuple(params[n].shape)) for n, t in sorted(tensors.items())
                    if tuple(t.shape) != tuple(params[n].shape)]  # fmt: skip
        if reshaped:  # DeepSpeed's load failed on these, and was reported as a damaged checkpoint to delete
            now_data = to_dict(cfg)["data"]
            keys = [k for k in ("num_frames", "input_size") if k in saved_data and saved_data[k] != now_data[k]]
            raise CheckpointError(
                f"{path} holds trainable weights of other shapes than this model's: "
                + ", ".join(f"{n} {list(a)} (this model: {list(b)})" for n, a, b in reshaped[:3])
                + (
                    " since " + ", ".join(f"data.{k}={saved_data[k]!r} (now {now_data[k]!r})" for k in keys)
                    if keys
                    else ""
                )
                + ". Resume with the saved values, or start a new run from its weights with model.init_trainable"
            )
        saved_print = saved_fingerprint(trainable_meta)
        if saved_print is not None and (differences := frozen_differences(saved_print, engine.module)):
            was = meta_pretrained(path)
            raise CheckpointError(
                f"{path} was trained on other frozen backbone weights than this model holds (model.pretrained was "
                f"{was!r}, now {cfg.model.pretrained!r}; {len(differences)} frozen tensors differ: "
                f"{describe_differences(differences)}). A checkpoint holds only the trainable weights: resume with "
                "the backbone it was trained on"
            )
        try:
            load_path, _ = engine.load_checkpoint(  # under another number of ranks: module, scheduler, counters
                path, tag=DS_TAG, load_module_strict=False, load_optimizer_states=not regroup,
                load_lr_scheduler_states=True,
            )  # fmt: skip
        except (RuntimeError, OSError, EOFError, KeyError) as err:  # torch.load of a truncated or missing file
            raise self._damaged(path, DS_TAG + "/", err) from None
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load {os.path.join(path, DS_TAG)}")
        if regroup:
            try:
                with safe_open(os.path.join(path, OPTIMIZER_FILE), framework="pt") as f:
                    info = f.metadata() or {}
                    tensors = {key: f.get_tensor(key) for key in f.keys()}
                adam_step = int(info["step"])
            except Exception as err:  # noqa: BLE001 - safetensors' own error types for a damaged file
                raise self._damaged(path, OPTIMIZER_FILE, err) from None
            try:
                restore_optimizer_state(engine, tensors, adam_step)
            except ValueError as err:
                raise CheckpointError(f"{os.path.join(path, OPTIMIZER_FILE)}: {err}") from None
            scaler = getattr(engine.optimizer, "loss_scaler", None)
            for key in SCALER_KEYS:  # fp16: the loss scale goes on where it was, and grows when it would have
                if key in info and hasattr(scaler, key):
                    setattr(scaler, key, type(getattr(scaler, key))(ast.literal_eval(info[key])))
        rng_path = os.path.join(path, f"rng_rank{self.rank}.pt")
        meta["rng"] = torch.load(rng_path, weights_only=False) if os.path.isfile(rng_path) else None
        return meta

    def _damaged(self, path: str, part: str, err: BaseException) -> CheckpointError:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        older = [os.path.basename(p) for p in self.complete_checkpoints() if p != path]
        hint = f"resume from an older one (--resume {os.path.join(self.root, older[-1])})" if older else "start anew"
        return CheckpointError(
            f"{path}: its {part} cannot be read ({type(err).__name__}: {first}): the checkpoint is damaged (a disk "
            f"that filled up, a copy cut short); {hint}, or delete it and --resume auto takes the newest intact one"
        )


def _saved_train(path: str) -> dict[str, Any]:
    """The train section of the config saved with checkpoint `path` ({} when it cannot be read)."""
    try:
        from aim_video.config import load_config

        return to_dict(load_config(os.path.join(path, "config.yaml")))["train"]
    except Exception:  # noqa: BLE001 - a missing or older config: the caller falls back on this run's value
        return {}


def meta_pretrained(path: str) -> str:
    """model.pretrained in the config saved with checkpoint `path` ("?" when it cannot be read)."""
    try:
        from aim_video.config import load_config

        return load_config(os.path.join(path, "config.yaml")).model.pretrained
    except Exception:  # noqa: BLE001 - only for an error message
        return "?"


def agree_on_resume(manager: CheckpointManager, spec: str) -> str | None:
    """Rank 0 picks the checkpoint and every rank uses the same one (a save may land between two ranks' reads)."""
    choice, refused = None, None
    if manager.rank == 0:
        try:
            choice = manager.resolve_resume(spec)
        except (CheckpointError, ConfigError) as err:  # said on every rank: else the others waited in the broadcast
            refused = (type(err) is ConfigError, str(err))  # for the timeout; the type decides the exit status
    choice, refused = broadcast_object((choice, refused))
    if refused is not None:
        raise (ConfigError if refused[0] else CheckpointError)(refused[1])
    return choice
