"""One training epoch as a plain function, with the loss, MixUp/CutMix, and rank-0 logging it reports through.

`train_one_epoch` drives a DeepSpeed engine over uint8 clip batches (normalised on the device after the copy), keeps
the epoch's position (so a checkpoint can resume mid-epoch exactly), measures clips/s and the share of time spent
waiting for data, logs the gradient norm DeepSpeed computed (bf16, fp16 or ZeRO), counts the videos the loader had
to replace, and stops with a message naming rank, epoch, step and sample indices when a loss is NaN or infinite.
fp16 steps that DeepSpeed skips on overflow are reported, not fatal.

The data wait is host time spent blocked on the next batch. There is no device sync per step (the loss's `.item()`
follows the forward pass only), so on a GPU the backward pass and optimizer step may still run during part of that
wait: the logged share can overstate the GPU's idle time (not yet measured on a GPU). `tools/profile.py`'s end-to-end
figure synchronises after each step and counts only the GPU's idle time.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from aim_video.engine.distributed import all_reduce_sum, rank_with_non_finite


class NonFiniteLossError(FloatingPointError):
    """A NaN or infinite training loss; the message says where."""


def build_mixing(mixup_alpha: float, cutmix_alpha: float, num_classes: int, repeats: int = 1) -> Callable | None:
    """torchvision v2 MixUp / CutMix (one of the two per batch when both are on) producing soft targets.

    v2 mixes each clip with its neighbour in the batch. With `repeats` = data.repeated_aug = N the batch holds the
    N clips of each video side by side, so (N - 1) / N of the pairs would be one video with itself (an unmixed
    target): the batch is first reordered repeat by repeat (all first clips, then all second clips, ...), which
    puts another video next to every clip whenever a batch holds two videos or more.
    """
    ops = []
    if mixup_alpha > 0:
        ops.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        ops.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not ops:
        return None
    op = ops[0] if len(ops) == 1 else v2.RandomChoice(ops)

    def mix(video: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # video: float [B, T, C, H, W]; wrapped as a Video so v2 mixes whole clips (one box / lambda per clip)
        if repeats > 1 and video.shape[0] % repeats == 0:
            order = torch.arange(video.shape[0], device=video.device).view(-1, repeats).t().reshape(-1)
            video, label = video[order], label[order]  # [v0a, v0b, v1a, v1b] -> [v0a, v1a, v0b, v1b]
        mixed, target = op(tv_tensors.Video(video), label)
        return mixed.as_subclass(torch.Tensor), target

    return mix


def loss_fn(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy in fp32 on hard labels [B] or soft targets [B, K] (MixUp/CutMix), with label smoothing."""
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


@dataclass
class EpochState:
    """Where training is: the engine's optimizer-step count and the position inside the current epoch."""

    epoch: int = 0
    batches_done: int = 0  # micro-batches of `epoch` already consumed
    step: int = 0  # optimizer steps since the start of training
    last_loss: float = float("nan")
    history: list[dict[str, Any]] = field(default_factory=list)
    # what the loader reported during the current `train_one_epoch` call so far (videos it replaced, clips read with
    # the fallback backend): a stop inside the epoch logs them, since the call's own statistics are never returned
    failures: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)


class RunLog:
    """Rank 0: JSON-lines log, TensorBoard scalars and a tqdm bar; other ranks keep nothing."""

    def __init__(self, output_dir: str, is_main: bool, total_steps: int, initial_step: int) -> None:
        self.is_main = is_main
        self.path = os.path.join(output_dir, "log.jsonl")
        self.tb_dir = os.path.join(output_dir, "tensorboard")
        self.bar = self.tb = None
        if is_main:
            from torch.utils.tensorboard import SummaryWriter
            from tqdm import tqdm

            self.tb = SummaryWriter(self.tb_dir)
            self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True, mininterval=1.0)

    def event(self, kind: str, **fields: Any) -> None:
        if not self.is_main:
            return
        line = json.dumps({"event": kind, "time": round(time.time(), 3), **fields})
        with open(self.path, "a") as f:  # one append per line: a crash leaves every earlier line intact
            f.write(line + "\n")
        if self.bar is not None and kind not in ("train",):
            self.bar.write(line)

    def scalars(self, step: int, prefix: str, values: dict[str, float]) -> None:
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def progress(self, steps: int, **postfix: str) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()


def run_history(log_path: str) -> dict[str, Any]:
    """The run's evaluations and loader counts from log.jsonl, across resumes (a resumed process only saw its own).

    A start without `resumed_from` begins the record anew (a new run in the same output_dir); a resume from step S
    drops what the earlier processes logged after S (the resumed run does those steps again). Loader counts come
    from the `epoch` events and from `stopped` inside an epoch; a killed process's part epoch logged none.
    """
    evals: dict[int, dict[str, Any]] = {}
    counts: list[tuple[int, int, int]] = []  # (step of the event, loader failures, fallback reads)
    with open(log_path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill
                continue
            kind = rec.get("event")
            if kind == "start":
                start = rec.get("start_step", 0) if rec.get("resumed_from") else -1
                evals = {step: e for step, e in evals.items() if step <= start}
                counts = [c for c in counts if c[0] <= start]
            elif kind == "eval":
                evals[rec["step"]] = {k: v for k, v in rec.items() if k not in ("event", "time")}
            elif kind == "epoch":
                counts.append((rec["steps"], rec["failures"], rec["fallback_reads"]))
            elif kind == "stopped":
                counts.append((rec["step"], rec.get("failures", 0), rec.get("fallback_reads", 0)))
    return {
        "eval": [evals[step] for step in sorted(evals)],
        "failures": sum(c[1] for c in counts),
        "fallbacks": sum(c[2] for c in counts),
    }


def _new_window() -> dict[str, Any]:
    """What a log line sums: loss, micro-batches, data wait, time, clips, and the steps' gradient norms."""
    return {"loss": 0.0, "micro": 0, "wait": 0.0, "time": 0.0, "clips": 0, "norms": []}


def train_one_epoch(
    engine: Any,
    batches: Iterator[dict[str, Any]],
    state: EpochState,
    *,
    micro_batches: int,
    prepare: Callable[[dict[str, Any]], tuple[torch.Tensor, torch.Tensor]],
    mix: Callable | None,
    label_smoothing: float,
    max_steps: int,
    log: RunLog,
    log_every: int,
    rank: int,
    world_size: int,
    on_step: Callable[[EpochState], None] | None = None,
) -> dict[str, Any]:
    """Consume micro-batches until the epoch has `micro_batches` of them (or `max_steps` is reached).

    `batches` already starts at `state.batches_done` (the sampler skipped what a resumed checkpoint consumed).
    `prepare` turns a loader batch into (float video on the device in the model's dtype, int64 labels).
    `on_step` runs after every optimizer step (checkpoints by step count, fault points). Returns epoch statistics:
    loss, clips/s, data wait and failures of this call's micro-batches, from `from_batch` of the epoch on (0 unless a
    resume started inside the epoch: the steps before it ran in another process, whose log has them).
    """
    engine.train()
    from_batch = state.batches_done
    accum = engine.gradient_accumulation_steps()
    micro = 0
    failures = state.failures = []
    fallbacks = state.fallbacks = []
    window = _new_window()
    epoch_wait = epoch_time = epoch_loss = 0.0
    epoch_clips = epoch_micro = 0
    skipped_before = engine.skipped_steps
    tick = time.perf_counter()
    while state.batches_done < micro_batches and (max_steps <= 0 or state.step < max_steps):
        batch = next(batches)
        got = time.perf_counter()
        failures.extend(batch.get("failures", []))
        fallbacks.extend(batch.get("fallbacks", []))
        video, label = prepare(batch)
        target = label
        if mix is not None:
            video, target = mix(video, label)
        logits = engine(video)
        loss = loss_fn(logits, target, label_smoothing)
        value = loss.item()
        bad_rank = rank_with_non_finite(value, rank, loss.device)  # every rank stops at once, not only this one
        if bad_rank >= 0:
            lr = engine.lr_scheduler.get_last_lr()[0]
            where = f"at epoch {state.epoch}, optimizer step {state.step + 1}, micro-batch {state.batches_done}"
            where += " of the epoch"
            if math.isfinite(value):
                what = f"loss is not finite on rank {bad_rank} {where} (its message names the samples); rank {rank}"
                what += " stops with it"
            else:
                what = f"loss is {value} on rank {rank} {where} (sample indices {batch['index'].tolist()})"
            raise NonFiniteLossError(
                f"{what}, lr {lr:.3g}. Lower train.lr, try train.precision=bf16/fp32 or set train.clip_grad."
            )
        engine.backward(loss)
        step_lr = max(engine.lr_scheduler.get_last_lr())  # the lr this optimizer step applies
        engine.step()
        state.batches_done += 1
        micro += 1
        now = time.perf_counter()
        window["loss"] += value
        window["micro"] += 1
        window["wait"] += got - tick
        window["time"] += now - tick
        window["clips"] += int(video.shape[0])
        tick = now
        if micro % accum:
            continue
        state.step += 1
        norm = engine.get_global_grad_norm()  # the whole model's, before clipping (None: DeepSpeed kept none)
        if norm is not None:
            window["norms"].append(norm)  # read at the log step: no device sync per step here
        skipped = engine.skipped_steps - skipped_before
        if skipped:
            for _ in range(skipped):  # DeepSpeed leaves the schedule behind on an fp16 overflow skip; it follows the
                engine.lr_scheduler.step()  # step count here, as in the authors' loop (mmcv's hook per iteration)
            log.event(
                "overflow_skip",
                step=state.step,
                skipped_total=int(engine.skipped_steps),
                loss_scale=float(getattr(engine.optimizer, "cur_scale", float("nan"))),
            )
            skipped_before = engine.skipped_steps
        if state.step % log_every == 0 or state.batches_done >= micro_batches or state.step == max_steps:
            loss_sum, micro_sum, clips_sum = all_reduce_sum([window["loss"], window["micro"], window["clips"]])
            state.last_loss = loss_sum / micro_sum
            clips_s = clips_sum / max(window["time"], 1e-9)
            wait = window["wait"] / max(window["time"], 1e-9)
            record = {
                "step": state.step,
                "epoch": state.epoch,
                "loss": state.last_loss,
                "lr": step_lr,
                "clips_per_s": clips_s,
                "data_wait": wait,
            }
            norms = [n for n in map(float, window["norms"]) if math.isfinite(n)]  # fp16 overflow steps: inf
            if norms:  # mean over the window's steps (bf16/fp16 or ZeRO: DeepSpeed computes it)
                record["grad_norm"] = sum(norms) / len(norms)
            log.event("train", **record)
            log.scalars(state.step, "train", {k: v for k, v in record.items() if k not in ("step", "epoch")})
            log.progress(
                0,
                loss=f"{state.last_loss:.4f}",
                lr=f"{step_lr:.2e}",
                clips_s=f"{clips_s:.1f}",
                wait=f"{100 * wait:.0f}%",
            )
            epoch_wait += window["wait"]
            epoch_time += window["time"]
            epoch_clips += int(clips_sum)
            epoch_loss += loss_sum
            epoch_micro += int(micro_sum)
            window = _new_window()
        log.progress(1)
        if on_step is not None:
            on_step(state)
            tick = time.perf_counter()  # checkpoint time is not data wait
    return {
        "epoch": state.epoch,
        "steps": state.step,
        "from_batch": from_batch,  # the statistics below cover the epoch's micro-batches from here on
        "loss": epoch_loss / epoch_micro if epoch_micro else state.last_loss,  # this call's micro-batches, all ranks
        "last_loss": state.last_loss,  # the last logging window's
        "clips_per_s": epoch_clips / max(epoch_time, 1e-9),
        "data_wait": epoch_wait / max(epoch_time, 1e-9),
        "failures": failures,
        "fallbacks": fallbacks,
        "skipped_steps": int(engine.skipped_steps),
    }
