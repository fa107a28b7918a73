"""Throughput measurements: the loader alone, the model alone, and real training steps end to end.

Every timed part follows one rule (nanoGPT's benchmark): warm-up first, then `torch.cuda.synchronize` around the
timed region on a GPU, so asynchronous kernel launches are not mistaken for finished work.

- :func:`loader_sweep`: clips/s of the configured training loader (the real decode, sampling and augmentation) for
  each worker count, after the workers have started and delivered one batch each.
- :func:`model_sweep`: training-step (forward, loss, backward, AdamW over the trainable set only, with DeepSpeed's
  memory layout: :func:`build_train_step`) and inference clips/s for each batch size, on synthetic normalised clips
  already on the device, with the peak memory of each (CUDA max allocated; on CPU the process RSS, sampled).
- :func:`end_to_end`: N real steps fed by the configured loader, split into time spent waiting for the next batch
  and time computing (copy, normalise, forward, backward, step), optionally with a torch.profiler trace.

`profile.loader_delay_s` makes every loader worker sleep per batch (:class:`DelayedCollate`): an honest slow loader,
as slow storage would be, used to check that the verdict follows the data wait.
"""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import torch
from torch import nn
from torch.utils.data import DataLoader

from aim_video.config import Config
from aim_video.data.loader import build_train_loader, set_epoch
from aim_video.data.transforms import normalize
from aim_video.engine.deepspeed_setup import peak_lr
from aim_video.engine.optim import build_optimizer, build_param_groups
from aim_video.engine.train_loop import loss_fn


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _malloc_trim() -> None:
    """Return the C heap's free pages to the system (glibc; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Context manager: peak memory in MiB of the code inside it, in `.peak_mib` after exit.

    CUDA: `torch.cuda.max_memory_allocated` after a reset. CPU: the largest resident set size of this process,
    sampled every `interval_s` by a thread (worker processes of a loader are not included), after handing the
    memory freed by earlier measurements back to the system (glibc's `malloc_trim`), so that a small batch measured
    after a large one does not report the large one's leftovers.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_mib = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        proc = psutil.Process()
        peak = 0
        while not self._stop.is_set():
            peak = max(peak, proc.memory_info().rss)
            self._stop.wait(self.interval_s)
        self.peak_mib = max(peak, proc.memory_info().rss) / 2**20

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            gc.collect()
            _malloc_trim()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()


class DelayedCollate:
    """Collate a batch, then sleep `delay_s` in the worker that built it (simulated slow storage, picklable)."""

    def __init__(self, collate: Callable[[list], Any], delay_s: float) -> None:
        self.collate = collate
        self.delay_s = delay_s

    def __call__(self, items: list) -> Any:
        batch = self.collate(items)
        time.sleep(self.delay_s)
        return batch


def profiling_loader(cfg: Config, num_workers: int | None = None, delay_s: float = 0.0) -> DataLoader:
    """The training loader of `cfg` (rank 0 of 1), optionally with another worker count and a per-batch delay."""
    data = cfg.data if num_workers is None else dataclasses.replace(cfg.data, num_workers=num_workers)
    loader = build_train_loader(dataclasses.replace(cfg, data=data), 0, 1)
    if delay_s > 0:
        loader.collate_fn = DelayedCollate(loader.collate_fn, delay_s)
    return loader


def endless_batches(loader: DataLoader) -> Iterator[dict[str, Any]]:
    """Batches over as many epochs as asked for (each epoch reshuffled, as training does)."""
    epoch = 0
    while True:
        set_epoch(loader, epoch)
        yield from loader
        epoch += 1


def loader_sweep(cfg: Config, workers: list[int], batches: int, delay_s: float = 0.0) -> list[dict[str, Any]]:
    """Loader clips/s for each worker count: `batches` batches (rounded up to whole rounds of one batch per worker)
    timed after one warm-up batch per worker.

    Worker start-up (process spawn, first decode) is reported apart as `startup_s`, since training pays it once.
    """
    results = []
    for num_workers in workers:
        loader = profiling_loader(cfg, num_workers, delay_s)
        stream = endless_batches(loader)
        start = time.perf_counter()
        with warnings.catch_warnings():  # more workers than cores is the point of a sweep (the report names cores)
            warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)
            failed = len(next(stream)["failures"])  # every read counts: a bad video may only be met in the warm-up
        startup = time.perf_counter() - start
        for _ in range(max(0, num_workers - 1)):  # one batch per worker: every worker is running before timing
            failed += len(next(stream)["failures"])
        # workers deliver in rounds of one batch each: time whole rounds (10 batches from 4 workers would time 3
        # rounds' work as 2.5 and read 0.8x the rate)
        timed = -(-batches // num_workers) * num_workers if num_workers > 0 else batches
        clips, failures = 0, failed
        start = time.perf_counter()
        for _ in range(timed):
            batch = next(stream)
            clips += int(batch["video"].shape[0])
            failures += len(batch["failures"])
        elapsed = time.perf_counter() - start
        stream.close()  # shuts the workers down before the next count starts its own
        del stream, loader
        results.append(
            {
                "workers": num_workers,
                "clips_per_s": clips / elapsed,
                "batch_ms": 1000 * elapsed / timed,
                "batches": timed,
                "startup_s": startup,
                "failed_loads": failures,
            }
        )
    return results


def build_train_step(
    cfg: Config, model: nn.Module, device: torch.device
) -> tuple[torch.optim.Optimizer, Callable[[torch.Tensor, torch.Tensor], None]]:
    """Move the fp32 ``model`` to ``device`` and return AdamW (training's groups) and ``step(video, label)``, one
    optimizer step with the memory layout of DeepSpeed's step for ``train.precision`` on one rank (ZeRO 1, the
    default, whose one partition is the whole trainable set).

    bf16 / fp16: DeepSpeed casts the module to that precision and its ZeRO optimizer keeps fp32 master weights, fp32
    gradients and fp32 AdamW moments for the trainable parameters only: 2 + 2 + 4 + 4 + 8 = 20 bytes per trainable
    parameter, 2 per frozen one. The step below does the same (its CUDA peak was within 4.3% of DeepSpeed's engine
    on an H200: docs/benchmarks.md). We chose this over fp32 parameters under ``torch.autocast`` (the simpler
    option) because autocast holds every frozen weight in fp32 plus a bf16 copy per step, twice DeepSpeed's memory
    for the frozen backbone (the bulk of AIM's), and runs casts DeepSpeed does not; and over AdamW on the bf16
    weights themselves (what the profiler did), whose bf16 moments and missing masters understated memory by 12
    bytes per trainable parameter. fp16's loss scaling is left out: it changes no tensor's size. fp32: AdamW on the
    parameters themselves, as DeepSpeed without a wrapper. Each call is one micro-batch: the optimizer steps on every
    `train.grad_accum_steps`-th call, the gradients of the calls between adding up in the model's precision (as
    DeepSpeed's do under bf16 with ZeRO 1/2), so a timed call is the micro-batch's share of an optimizer step; with
    `train.grad_accum_dtype=fp32` they add up in the fp32 buffers instead, as in DeepSpeed's BF16_Optimizer.
    """
    from aim_video.engine.deepspeed_setup import model_dtype

    dtype = model_dtype(cfg)
    lr = peak_lr(cfg, 1)
    names = model.trainable_parameter_names()
    groups = build_param_groups(model, names, lr, cfg.train.weight_decay, cfg.train.backbone_lr_mult)
    pairs: list[tuple[nn.Parameter, nn.Parameter]] = []  # (model parameter, its fp32 master)
    if dtype != torch.float32:
        for group in groups:
            masters = [
                nn.Parameter(p.detach().to(device=device, dtype=torch.float32, copy=True)) for p in group["params"]
            ]
            pairs += zip(group["params"], masters, strict=True)
            group["params"] = masters
        for _, master in pairs:
            master.grad = torch.zeros_like(master)  # DeepSpeed's fp32 gradient buffer, kept between steps
    model.to(device=device, dtype=dtype)  # tensor by tensor: no fp32 copy of the whole model on the device
    optimizer = build_optimizer(groups, lr, cfg.train.betas)  # after the move: fused AdamW on CUDA
    smoothing = cfg.train.label_smoothing
    accum = max(1, cfg.train.grad_accum_steps)
    in_fp32 = bool(pairs) and cfg.train.grad_accum_dtype == "fp32"  # bf16: DeepSpeed's BF16_Optimizer's buffers
    micro = 0  # micro-batches since the last optimizer step

    def step(video: torch.Tensor, label: torch.Tensor) -> None:
        nonlocal micro
        (loss_fn(model(video), label, smoothing) / accum).backward()  # gradients add up in the model's precision
        micro += 1
        if in_fp32:  # or in the fp32 buffers, one micro-batch at a time
            with torch.no_grad():
                for param, master in pairs:
                    if param.grad is not None:
                        (master.grad.add_ if micro > 1 else master.grad.copy_)(param.grad)
                        param.grad = None
                    elif micro == 1:
                        master.grad.zero_()
        if micro < accum:  # as DeepSpeed under train.grad_accum_steps: no optimizer step yet
            return
        micro = 0
        if not pairs:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return
        with torch.no_grad():
            for param, master in pairs if not in_fp32 else ():  # (in fp32: the buffers hold the sum already)
                if param.grad is None:  # a parameter this step did not reach: zero, as DeepSpeed's buffer
                    master.grad.zero_()
                else:
                    master.grad.copy_(param.grad)  # low-precision gradient -> fp32 buffer
                param.grad = None
            optimizer.step()  # on the fp32 masters
            for param, master in pairs:
                param.copy_(master)  # the updated weights, back in the model's precision

    def reset() -> None:
        """Start the next call at an accumulation boundary (after a measurement cut short, an out-of-memory)."""
        nonlocal micro
        micro = 0
        model.zero_grad(set_to_none=True)

    step.reset = reset  # type: ignore[attr-defined]
    return optimizer, step


def whole_steps(calls: int, cfg: Config) -> int:
    """`calls` rounded up to whole optimizer steps of train.grad_accum_steps micro-batches: a timed window of
    another length holds a varying share of optimizer steps (accumulation 4 over 10 calls: 2 or 3 of them)."""
    accum = max(1, cfg.train.grad_accum_steps)
    return -(-calls // accum) * accum


def _timed(fn: Callable[[], None], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per call of `fn` over `steps` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def model_sweep(
    cfg: Config,
    model: nn.Module,
    step: Callable[[torch.Tensor, torch.Tensor], None],
    batch_sizes: list[int],
    device: torch.device,
    dtype: torch.dtype,
    warmup: int,
    steps: int,
) -> list[dict[str, Any]]:
    """Training-step and inference clips/s and peak memory per batch size, smallest first; stops at the first CUDA
    out-of-memory (a larger batch would not fit either), which its row reports."""
    d = cfg.data
    results: list[dict[str, Any]] = []
    for batch_size in sorted(set(batch_sizes)):
        row: dict[str, Any] = {"batch_size": batch_size, "oom": False}
        # synthetic clips with the statistics of normalised frames: uint8 noise, normalised like real batches
        raw = torch.randint(0, 256, (batch_size, d.num_frames, 3, d.input_size, d.input_size), dtype=torch.uint8)
        video = normalize(raw.to(device), d.mean, d.std).to(dtype)
        label = torch.randint(0, cfg.model.num_classes, (batch_size,), device=device)
        try:
            model.train()
            getattr(step, "reset", lambda: None)()
            calls = whole_steps(warmup, cfg), whole_steps(steps, cfg)  # whole optimizer steps, warm-up and timed
            with PeakMemory(device) as mem:
                step_s = _timed(lambda: step(video, label), *calls, device)  # noqa: B023
            row.update(train_step_ms=1000 * step_s, train_clips_per_s=batch_size / step_s, train_peak_mib=mem.peak_mib)
            model.eval()
            with torch.inference_mode(), PeakMemory(device) as mem:
                infer_s = _timed(lambda: model(video), warmup, steps, device)  # noqa: B023
            row.update(
                infer_step_ms=1000 * infer_s, infer_clips_per_s=batch_size / infer_s, infer_peak_mib=mem.peak_mib
            )
        except torch.cuda.OutOfMemoryError:
            model.zero_grad(set_to_none=True)  # the step's own buffers (fp32 masters) stay, as DeepSpeed's
            torch.cuda.empty_cache()
            row["oom"] = True
            results.append(row)
            break
        finally:
            model.train()
        results.append(row)
    return results


def end_to_end(
    cfg: Config,
    model: nn.Module,
    step: Callable[[torch.Tensor, torch.Tensor], None],
    device: torch.device,
    dtype: torch.dtype,
    steps: int,
    delay_s: float = 0.0,
    trace_dir: str | None = None,
    trace_steps: int = 3,
) -> dict[str, Any]:
    """`steps` real training steps from the configured loader: clips/s and the share of time waiting for data.

    The warm-up is not timed: the first batch (worker start-up) and then as many steps as the loader holds batches
    ahead (workers x prefetch factor), so that what the workers prefetched during the slow first step is used up
    before timing (else a short run reads a loader-bound step as compute-bound); both counts are rounded up to whole
    optimizer steps of train.grad_accum_steps micro-batches (`whole_steps`). With `trace_dir`, `trace_steps`
    more steps run under torch.profiler and a Chrome trace plus a table of the costliest ops are written there.
    """
    loader = profiling_loader(cfg, None, delay_s)
    stream = endless_batches(loader)
    d = cfg.data

    def compute(batch: dict[str, Any]) -> int:
        video = normalize(batch["video"].to(device, non_blocking=True), d.mean, d.std).to(dtype)
        step(video, batch["label"].to(device, non_blocking=True))
        synchronize(device)
        return int(video.shape[0])

    model.train()
    getattr(step, "reset", lambda: None)()  # the model sweep may have stopped inside an accumulation (out of memory)
    warmup = whole_steps(1 + (d.num_workers * d.prefetch_factor if d.num_workers > 0 else 0), cfg)
    steps = whole_steps(steps, cfg)
    failures = 0  # the warm-up's reads count too: a bad video may only be met there
    for _ in range(warmup):  # worker start-up, the first step, then the backlog prefetched meanwhile
        batch = next(stream)
        failures += len(batch["failures"])
        compute(batch)
    wait = busy = 0.0
    clips = 0
    for _ in range(steps):
        start = time.perf_counter()
        batch = next(stream)
        got = time.perf_counter()
        failures += len(batch["failures"])
        clips += compute(batch)
        wait += got - start
        busy += time.perf_counter() - got
    result = {
        "steps": steps,
        "warmup_steps": warmup,
        "batch_size": d.batch_size,
        "workers": d.num_workers,
        "clips_per_s": clips / (wait + busy),
        "compute_clips_per_s": clips / busy,
        "data_wait_share": wait / (wait + busy),
        "wait_ms_per_step": 1000 * wait / steps,
        "compute_ms_per_step": 1000 * busy / steps,
        "failed_loads": failures,
    }
    if trace_dir:
        result["trace"] = _trace(stream, compute, device, trace_dir, trace_steps)
    stream.close()
    return result


def _trace(
    stream: Iterator[dict[str, Any]],
    compute: Callable[[dict[str, Any]], int],
    device: torch.device,
    trace_dir: str,
    steps: int,
) -> dict[str, str]:
    """Profile `steps` loader-fed steps; write trace.json (chrome://tracing, Perfetto) and trace_top_ops.txt."""
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True, profile_memory=True) as prof:
        for _ in range(steps):
            with record_function("data_wait"):
                batch = next(stream)
            with record_function("train_step"):
                compute(batch)
    os.makedirs(trace_dir, exist_ok=True)
    trace_path = os.path.join(trace_dir, "trace.json")
    tmp = f"{trace_path}.tmp.{os.getpid()}.json"
    prof.export_chrome_trace(tmp)
    os.replace(tmp, trace_path)
    sort_by = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table_path = os.path.join(trace_dir, "trace_top_ops.txt")
    with open(table_path + ".tmp", "w") as f:
        f.write(prof.key_averages().table(sort_by=sort_by, row_limit=25) + "\n")
    os.replace(table_path + ".tmp", table_path)
    return {"chrome_trace": trace_path, "top_ops": table_path}
