"""A whole training run: set-up, resume, epochs with periodic evaluation and checkpoints, export and summary.

`tools/train.py` parses the command line and calls :func:`fit`; everything here runs on every rank (rank 0 alone
writes logs, the exported weights and the summary).
"""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sys
import time
import warnings
from collections import Counter
from typing import Any

import torch

from aim_video.config import Config, ConfigError, save_config, to_yaml, warn_training_settings, with_absolute_paths
from aim_video.data.annotations import AnnotationError
from aim_video.engine.checkpoint_io import CheckpointManager, agree_on_resume
from aim_video.engine.deepspeed_setup import build_engine, derive_ds_config, model_dtype, write_ds_config
from aim_video.engine.distributed import (
    DistInfo,
    TrainingStopped,
    all_gather_objects,
    barrier,
    broadcast_object,
    catch_stop_signals,
    check_shared_folder,
    fault_point,
    init_distributed,
    restore_rng,
    restore_signals,
    seed_everything,
    stop_requested,
)
from aim_video.engine.resume import (
    epoch_batches,
    epoch_end_pending,
    global_batch_warning,
    resume_position,
    schedule_step,
)
from aim_video.engine.train_loop import EpochState, RunLog, build_mixing, run_history, train_one_epoch
from aim_video.models.trainable_io import save_trainable


class _CastInput(torch.nn.Module):
    """Feeds the model its own dtype: DeepSpeed keeps a bf16/fp16 module, evaluation normalises to float32."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.model(video.to(self.dtype))


def same_data_on_every_rank(num_videos: int, source: str, fingerprint: str = "") -> None:
    """Collective. Stop every rank together when they read different lists (a file dropped as missing, or a verify
    report found stale, on some nodes only): else they leave the epoch at different steps and wait in each other's
    collectives until a timeout, and an evaluation joins rows by index (labels and paths of other videos, one
    counted twice). `fingerprint`: `RecordTable.fingerprint()`, which tells lists of one length apart."""
    seen = all_gather_objects((num_videos, fingerprint))
    if len(set(seen)) > 1:
        sizes = ", ".join(str(n) for n, _ in seen)
        what = f"{sizes} by rank" if len({n for n, _ in seen}) > 1 else f"as many ({sizes}), but not the same ones"
        raise AnnotationError(
            f"{source}: the ranks see different videos ({what}): a file changed or is visible to some nodes only "
            "while the job started (data.missing_files=drop, a verify report's file stamps); make the data the same "
            "on every node and start again"
        )


def prepare_evaluation(cfg: Config, info: DistInfo, cache: dict[str, Any]) -> None:
    """The val loader of the periodic evaluation, built once into `cache`: at the start of training, so that a val
    list that cannot be evaluated (missing files, classes numbered otherwise, no labels) stops the run before its
    first epoch rather than after it."""
    from aim_video.data.annotations import AnnotationError
    from aim_video.data.loader import build_eval_loader
    from aim_video.eval.multiview import apply_protocol

    if "loader" in cache:
        return
    cache["cfg"] = copy.deepcopy(cfg)
    apply_protocol(cache["cfg"])  # eval.protocol's views, as tools/test.py evaluates (not data.test_num_*)
    loader = build_eval_loader(cache["cfg"], "val", info.rank, info.world_size)
    same_data_on_every_rank(len(loader.dataset), cfg.data.val_list, loader.dataset.records.fingerprint())
    if not any(label >= 0 for label in loader.dataset.records.labels):
        raise AnnotationError(
            f"data.val_list={cfg.data.val_list} has no labels (an inference list?): training's evaluation scores "
            "top-1 against them. Give the labelled val list, or train.eval_every=-1 and tools/test.py for predictions"
        )
    dropped = loader.dataset.dropped  # missing files, videos a verify report found wrong
    if cfg.eval.strict and dropped:  # as tools/test.py --strict: the list's videos are evaluated, all of them
        raise AnnotationError(
            f"data.val_list={cfg.data.val_list}: {len(dropped)} listed videos were left out before evaluation and "
            "eval.strict is set, e.g. " + "; ".join(f"{p}: {why}" for p, why in dropped[:3])
        )
    cache["loader"] = loader


def run_evaluation(engine: Any, cfg: Config, info: DistInfo, cache: dict[str, Any]) -> dict[str, Any] | None:
    """Periodic multi-view evaluation on `data.val_list` with aim_video.eval's `evaluate` (every video once).

    Returns the scalar results for the log in percent, like tools/test.py (top-1, top-5, mean class accuracy),
    with the counts and the protocol, or None without a val list.
    """
    if not cfg.data.val_list:
        return None
    from aim_video.eval.multiview import evaluate

    prepare_evaluation(cfg, info, cache)
    model = _CastInput(engine.module, model_dtype(cfg))
    result = evaluate(model, cache["loader"], cache["cfg"], info.device, progress=False)
    engine.train()
    return {
        **{key: float(result[key]) for key in ("top1", "top5", "mean_class_acc")},
        "num_videos": result["num_evaluated"],
        # as tools/test.py counts them: unreadable ones, and those left out before (missing files, verify report)
        "num_missing": result["num_missing"] + len(cache["loader"].dataset.dropped),
        "protocol": result["protocol"],
    }


def _prepare_fn(cfg: Config, device: torch.device):
    from aim_video.data.transforms import normalize

    dtype = model_dtype(cfg)

    def prepare(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        video = batch["video"].to(device, non_blocking=True)  # uint8 [B, T, C, H, W]
        video = normalize(video, cfg.data.mean, cfg.data.std).to(dtype)
        return video, batch["label"].to(device, non_blocking=True)

    return prepare


def fit(cfg: Config, resume: str = "") -> dict[str, Any]:
    """Train `cfg` to the end (or `train.max_steps`); returns the summary rank 0 writes to train_summary.json.

    On one of `train.stop_signals` (preemption, a time limit) every rank saves at the next optimizer step and
    `TrainingStopped` is raised; the signal handlers are put back on the way out. A stop at an epoch's last step
    leaves the epoch's evaluation and metric save to the resume (`epoch_end_pending` in meta.json); one during an
    epoch's evaluation stops right after it.
    """
    previous = catch_stop_signals(cfg.train.stop_signals)  # the loader's workers ignore these signals (worker init)
    made = missing_folders(os.path.join(os.path.abspath(cfg.output_dir), "checkpoints"))
    try:
        return _fit(cfg, resume, stop_signals=bool(previous))
    except Exception:
        if os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) in ("", "0"):  # no empty run folder left
            remove_empty(made)
        raise
    finally:
        restore_signals(previous)


def missing_folders(path: str) -> list[str]:
    """`path` and those of its parent folders that do not exist yet, deepest first."""
    made = []
    while path and not os.path.exists(path):
        made.append(path)
        path = os.path.dirname(path)
    return made


def remove_empty(folders: list[str]) -> None:
    """Remove `folders` (deepest first) while they are empty: what a failed start made and did not fill."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except FileNotFoundError:
            continue
        except OSError:  # holds files (a run that started, a log): it and its parents stay
            return


def normalization_warning(cfg: Config) -> str:
    """Why data.mean / data.std look wrong for the pretrained weights ("" when they match or nothing is known):
    a recipe's CLIP statistics kept after switching to an ImageNet ViT costs accuracy without any error."""
    from aim_video.models.pretrained import weights_normalization

    known = weights_normalization(cfg.model.pretrained, cfg.model.arch)
    if known is None:
        return ""
    mean, std, source = known
    close = all(abs(a - b) < 1e-4 for a, b in zip((*mean, *std), (*cfg.data.mean, *cfg.data.std), strict=True))
    if close:
        return ""
    return (
        f"data.mean={list(cfg.data.mean)} / data.std={list(cfg.data.std)} differ from the statistics the backbone was "
        f"trained with, mean {list(mean)} / std {list(std)} ({source}): set data.mean and data.std to those"
    )


def check_pretrained_choice(cfg: Config) -> None:
    """Refuse a training run whose backbone would be random by accident: the AIM authors' users trained for days on
    a random frozen backbone when the weights flag was forgotten (an unset ``$WEIGHTS`` gives the same empty path)."""
    m = cfg.model
    if not m.pretrained and not m.random_backbone:
        raise ConfigError(
            "model.pretrained is empty: the backbone would keep its random initialisation. Set model.pretrained to "
            "the local weights file (OpenAI CLIP .pt, timm .pth/.safetensors, a Hugging Face cache folder), or "
            "model.random_backbone=true to train on a random backbone on purpose"
        )
    if m.pretrained and m.random_backbone:
        raise ConfigError(
            f"model.random_backbone=true but model.pretrained={m.pretrained}: the backbone is either random or "
            "loaded; drop one of the two"
        )


def start_from_trained(model: torch.nn.Module, path: str, classes: list[str] | None) -> str:
    """model.init_trainable: another run's trainable weights (its file or run folder) into `model`, the head only
    for the same `classes` (this run's names, when known); the log line."""
    from aim_video.engine.optim import head_module_name
    from aim_video.eval.loading import resolve_checkpoint
    from aim_video.models.trainable_io import init_from_trainable

    try:
        return init_from_trainable(model, resolve_checkpoint(path), head_module_name(model), classes)
    except (FileNotFoundError, ValueError) as err:  # named once: the loader's messages may start with the key
        message = str(err)
        named = message if message.startswith("model.init_trainable") else f"model.init_trainable: {message}"
        raise ConfigError(named) from None


def _fit(cfg: Config, resume: str, stop_signals: bool) -> dict[str, Any]:
    from aim_video.data.loader import build_train_loader, resolve_classes
    from aim_video.models.build import build_model, check_method, check_model_config

    started = time.time()
    cfg = with_absolute_paths(cfg)  # the saved config (and the weights' copy of it) work from any folder
    if cfg.model.num_classes != cfg.data.num_classes:  # else an IndexError in the loss, or a head with unused classes
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but data.num_classes={cfg.data.num_classes}: set both to the "
            "number of classes of the data set"
        )
    check_pretrained_choice(cfg)
    warn_training_settings(cfg)
    check_method(cfg.model)  # before the process group and config.yaml, as a bad key at load time
    try:  # the architecture on the meta device: an unknown model.arch or vit_kwargs key is a config error
        check_model_config(cfg.model, cfg.data.num_frames, cfg.data.input_size)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    info = init_distributed(cfg.train.dist_timeout_min)
    out = cfg.output_dir
    check_shared_folder(out, info)  # every rank writes checkpoint shards there: one folder, seen by all
    ds_config = derive_ds_config(cfg, info.world_size)
    torch.manual_seed(cfg.train.seed)  # the same initial weights on every rank (a random backbone included)
    model = build_model(cfg.model, cfg.data.num_frames, cfg.data.input_size)
    norm_warning = normalization_warning(cfg)
    if norm_warning and info.is_main:
        print(f"warning: {norm_warning}", file=sys.stderr, flush=True)
    seed_everything(cfg.train.seed, info.rank)  # then per-rank streams: dropout, drop_path, MixUp
    loader = build_train_loader(cfg, info.rank, info.world_size)
    same_data_on_every_rank(len(loader.dataset), cfg.data.train_list, loader.dataset.records.fingerprint())
    accum = cfg.train.grad_accum_steps
    micro_per_epoch = (len(loader) // accum) * accum
    if micro_per_epoch == 0:
        raise ConfigError(
            f"{len(loader)} batches per rank per epoch is fewer than train.grad_accum_steps={accum}: "
            f"use a longer train list ({cfg.data.train_list}), a smaller data.batch_size or fewer ranks"
        )
    steps_per_epoch = micro_per_epoch // accum
    manager = CheckpointManager(os.path.join(out, "checkpoints"), cfg.train.keep_last, info.rank, info.world_size)
    resumed_from = agree_on_resume(manager, resume or cfg.train.resume)
    classes = resolve_classes(cfg)  # stored with the weights: evaluation checks its numbering against them
    if classes is not None and len(classes) != cfg.data.num_classes:  # else test.py refuses, later
        raise ConfigError(
            f"the classes of this data set ({len(classes)}: data.class_map, or the train CSV's labels or class "
            f"folders) are not data.num_classes={cfg.data.num_classes}: set data.num_classes and model.num_classes "
            f"to {len(classes)}"
        )
    started_from = ""
    if cfg.model.init_trainable and not resumed_from:  # before the engine: ZeRO copies the weights it starts from
        started_from = start_from_trained(model, cfg.model.init_trainable, classes)
        if info.is_main:
            print(started_from, file=sys.stderr, flush=True)
    engine, opt_summary = build_engine(cfg, model, steps_per_epoch, info.world_size, ds_config)
    manager.micro_per_epoch = micro_per_epoch
    manager.num_videos = len(loader.dataset)
    manager.classes = classes
    state = EpochState()
    summary_path = os.path.join(out, "train_summary.json")
    end_pending = False  # the checkpoint ends an epoch whose evaluation and metric save are still to do
    at = None  # where the lr schedule stands after a resume under another global batch
    if resumed_from:
        meta = manager.load(engine, resumed_from, cfg)
        state.epoch, state.batches_done, state.step = meta["epoch"], meta["batches_done"], meta["step"]
        state.batches_done = resume_position(
            cfg, meta, info.world_size, micro_per_epoch, len(loader.dataset), resumed_from, info.is_main
        )
        if (batch_warning := global_batch_warning(cfg, meta, info.world_size, resumed_from)) and info.is_main:
            print(batch_warning, file=sys.stderr, flush=True)
        restore_rng(meta["rng"], cfg.train.seed, info.rank, state.step)
        at = schedule_step(cfg, meta, info.world_size, state.epoch, state.batches_done, steps_per_epoch)
        if at is not None:  # another global batch: the schedule's place in training, not its count of steps
            engine.lr_scheduler.last_epoch = at - 1
            with warnings.catch_warnings():  # torch warns of a schedule stepped before the optimizer: meant here
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                engine.lr_scheduler.step()  # the optimizer's groups take the lr of that place
        finished = state.batches_done >= micro_per_epoch
        end_pending = epoch_end_pending(cfg, meta, finished, os.path.isfile(summary_path))
        # saved inside its epoch, whose rest does not fill one of this run's steps: the epoch ends here, with its
        # evaluation and save (it went on to the next epoch without them)
        end_pending |= finished and meta.get("metric") is None and meta["batches_done"] < meta.get("micro_per_epoch", 0)
        if finished and not end_pending:
            state.epoch, state.batches_done = state.epoch + 1, 0
    max_steps = cfg.train.max_steps
    eval_cache: dict[str, Any] = {}
    will_run = end_pending or (state.epoch < cfg.train.epochs and (max_steps <= 0 or state.step < max_steps))
    if will_run and cfg.data.val_list and cfg.train.eval_every >= 0:  # a val list that cannot be evaluated stops now
        prepare_evaluation(cfg, info, eval_cache)
    if info.is_main:  # after the resume and val list checks: a refused start leaves the run's files as they were
        save_config(cfg, out)
        write_ds_config(ds_config, out)
    total_steps = opt_summary["total_steps"]
    # after another global batch the count goes on in steps of the new size from the saved step: the bar ends there
    last_step = total_steps if at is None else state.step + max(0, total_steps - at)
    log = RunLog(out, info.is_main, last_step, state.step)
    log.event(
        "start",
        world_size=info.world_size,
        device=str(info.device),
        steps_per_epoch=steps_per_epoch,
        resumed_from=resumed_from,
        start_step=state.step,
        last_step=last_step,
        start_epoch=state.epoch,
        global_batch=ds_config["train_batch_size"],
        normalization_warning=norm_warning,
        started_from=started_from,
        **opt_summary,
    )
    prepare = _prepare_fn(cfg, info.device)
    mix = build_mixing(cfg.train.mixup_alpha, cfg.train.cutmix_alpha, cfg.model.num_classes, cfg.data.repeated_aug)
    save_steps = cfg.train.save_every_steps
    last_saved = state.step if resumed_from else -1
    last_path = resumed_from or ""  # the checkpoint of step `last_saved`: this run's, or another run's it resumed
    results: list[dict[str, Any]] = []
    totals = Counter()
    last_stats: dict[str, Any] | None = None
    stop_at_end = 0  # a stop signal at the last step of a train_one_epoch call: handled after its `epoch` event

    def save(metric: float | None = None, pending: bool = False) -> None:
        """A checkpoint of where `state` is; `pending`: this epoch's evaluation and save are still to do."""
        nonlocal last_saved, last_path
        extra = {"epoch_end_pending": pending}
        last_path = manager.save(engine, cfg, state.step, state.epoch, state.batches_done, extra=extra, metric=metric)
        last_saved = state.step

    def stop(signum: int, **counts: int) -> None:
        log.event("stopped", signal=signal.Signals(signum).name, step=state.step, epoch=state.epoch, **counts)
        raise TrainingStopped(signum, state.step)

    def on_step(s: EpochState) -> None:
        nonlocal stop_at_end
        call_ends = s.batches_done >= micro_per_epoch or 0 < max_steps <= s.step  # the epoch's end comes next
        if save_steps > 0 and s.step % save_steps == 0 and not call_ends:  # at the end: saved there, with the metric
            save()
        fault_point("after_step", s.step, info.rank)
        signum = stop_requested(info.device) if stop_signals else 0
        if signum and call_ends:
            stop_at_end = signum
        elif signum:  # preemption or a time limit announced: save here and stop
            if last_saved != s.step:
                save()
            counts = all_gather_objects((len(s.failures), len(s.fallbacks)))  # the part epoch's, for run_history
            stop(signum, failures=sum(c[0] for c in counts), fallback_reads=sum(c[1] for c in counts))

    def evaluate_now() -> float | None:
        """Evaluate on the val list, log and keep the result; its top-1 (None without a val list)."""
        result = run_evaluation(engine, cfg, info, eval_cache)
        if result is None:
            return None
        results.append({"epoch": state.epoch, "step": state.step, **result})
        log.event("eval", epoch=state.epoch, step=state.step, **result)
        log.scalars(state.step, "val", {k: v for k, v in result.items() if isinstance(v, float)})
        return result.get("top1")

    worked = end_pending  # this process trained, evaluated or saved something
    while end_pending or (state.epoch < cfg.train.epochs and (max_steps <= 0 or state.step < max_steps)):
        if not end_pending:  # (else resumed at an epoch's end whose evaluation and save a stop signal put off)
            worked = True
            batches = epoch_batches(loader, state.epoch, state.batches_done, cfg.train.seed, info.rank)
            stats = train_one_epoch(
                engine,
                batches,
                state,
                micro_batches=micro_per_epoch,
                prepare=prepare,
                mix=mix,
                label_smoothing=cfg.train.label_smoothing,
                max_steps=max_steps,
                log=log,
                log_every=max(1, cfg.train.log_every),
                rank=info.rank,
                world_size=info.world_size,
                on_step=on_step,
            )
            del batches  # ends the epoch's workers before evaluation starts its own
            failures = [f for per_rank in all_gather_objects(stats.pop("failures")) for f in per_rank]
            fallbacks = [f for per_rank in all_gather_objects(stats.pop("fallbacks")) for f in per_rank]
            totals["failures"] += len(failures)
            totals["fallbacks"] += len(fallbacks)
            by_video: dict[str, str] = {}  # each video once, whatever reason each worker and rank gave
            for failure in failures:  # "path: reason" (two paths alike up to a ": " in them count as one)
                by_video.setdefault(failure.split(": ", 1)[0], failure)
            log.event(
                "epoch",
                finished=state.batches_done >= micro_per_epoch,
                failures=len(failures),  # failed reads: a known-bad video drawn again (as a replacement) counts
                failed_videos=len(by_video),
                failure_examples=list(by_video.values())[:20],
                fallback_reads=len(fallbacks),  # clips read with data.fallback_backend: exact, but slow
                fallback_examples=sorted(set(fallbacks))[:5],
                **stats,
            )
            totals["clips_per_s_sum"] += stats["clips_per_s"]
            totals["data_wait_sum"] += stats["data_wait"]
            totals["epochs_run"] += 1
            last_stats = stats
            if stop_at_end:  # the evaluation may take long: saved here, it runs after --resume auto
                save(pending=True)
                stop(stop_at_end)
        end_pending = False
        finished = state.batches_done >= micro_per_epoch
        last_epoch = state.epoch + 1 >= cfg.train.epochs or (0 < max_steps <= state.step)
        fault_point("epoch_end", state.step, info.rank)
        every = cfg.train.eval_every
        evaluates = bool(cfg.data.val_list) and (
            (finished and every > 0 and (state.epoch + 1) % every == 0) or (last_epoch and every >= 0)
        )
        due = (
            (finished and (state.epoch + 1) % max(1, cfg.train.save_every) == 0)
            or last_epoch
            or (save_steps > 0 and state.step % save_steps == 0)
        )
        held = last_saved == state.step  # a checkpoint of this step exists (a resume from it): it needs the metric
        if evaluates and (due or held):
            if not held:  # before the evaluation, which may outlast a scheduler's grace period or fail (eval.strict)
                save(pending=True)
                fault_point("after_epoch_save", state.step, info.rank)
            metric = evaluate_now()
            # decided on rank 0 for all: a rank whose file system shows another listing would call the other collective
            if broadcast_object(manager.holds(last_path) if info.is_main else None):
                manager.record_metric(last_path, metric)
            else:  # resumed from another run's folder (or a copy): this run saves its own, with the metric
                save(metric=metric)
        else:
            metric = evaluate_now() if evaluates else None
            if due and not held:
                save(metric=metric)
                fault_point("after_epoch_save", state.step, info.rank)
        if not last_epoch and stop_signals and (signum := stop_requested(info.device)):  # e.g. during evaluation
            if last_saved != state.step:
                save(metric=metric)
            stop(signum)
        if finished:
            state.epoch, state.batches_done = state.epoch + 1, 0

    export = os.path.join(out, "model_trainable.safetensors")
    if not worked and resumed_from and os.path.isfile(summary_path):
        # resumed at the end of training: nothing ran, so the finished run's summary and export stay as they are
        note = f"nothing to train: {resumed_from} had already reached the end (train.epochs / train.max_steps)"
        log.event("end", note=note, resumed_from=resumed_from)
        log.close()
        with open(summary_path) as f:
            return {**json.load(f), "note": note, "resumed_from": resumed_from}
    if info.is_main:
        meta = {"config": to_yaml(cfg), "step": state.step, "epoch": state.epoch}
        save_trainable(engine.module, export, meta | ({"classes": manager.classes} if manager.classes else {}))
    barrier()
    epochs_run = max(1, totals["epochs_run"])
    evaluated_here = bool(results)
    if resumed_from and info.is_main:  # this process's counts and evaluations are only part of the run's
        history = run_history(log.path)
        results, totals["failures"], totals["fallbacks"] = history["eval"], history["failures"], history["fallbacks"]
    summary = {
        "steps": state.step,
        "epochs": state.epoch,
        "final_loss": state.last_loss if math.isfinite(state.last_loss) else None,  # no step ran: NaN is not JSON
        "clips_per_s": totals["clips_per_s_sum"] / epochs_run,
        "data_wait_share": totals["data_wait_sum"] / epochs_run,
        "skipped_steps": int(engine.skipped_steps),
        "loader_failures": int(totals["failures"]),
        "loader_fallback_reads": int(totals["fallbacks"]),
        "world_size": info.world_size,
        "global_batch": ds_config["train_batch_size"],
        "resumed_from": resumed_from,
        "eval": results,
        "best": manager.best(),
        "wall_s": time.time() - started,
        "paths": {
            "output_dir": out,
            "config": os.path.join(out, "config.yaml"),
            "deepspeed_config": os.path.join(out, "deepspeed_config.json"),
            "log": log.path,
            "tensorboard": log.tb_dir,
            "checkpoints": manager.root,
            "latest_checkpoint": manager.latest(),
            "model_trainable": export,
        },
    }
    if totals["epochs_run"] == 0:
        summary["note"] = "nothing to train: the resumed checkpoint had already reached the end" + (
            "; its final evaluation ran now" if evaluated_here else ""
        )
    elif last_stats:
        summary["last_epoch"] = last_stats
    log.event("end", **{k: v for k, v in summary.items() if k != "eval"})
    log.close()
    if info.is_main:
        with open(summary_path + ".tmp", "w") as f:
            json.dump(summary, f, indent=2)
        os.replace(summary_path + ".tmp", summary_path)
    return summary
