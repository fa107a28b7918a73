"""One profile of a config: parameters, FLOPs, loader and model sweeps, real steps, verdict, JSON, table, plots.

`run_profile(cfg, out_dir)` is what `tools/profile.py` calls; `profile.*` in the config sets the sweep sizes
(`aim_video.profiling.QUICK_OVERRIDES` gives the demo's short settings). The model is built as training builds it
(`build_model`, the configured precision, AdamW over the trainable set only), on CUDA when there is one.
"""

from __future__ import annotations

import datetime
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from aim_video.config import Config, to_dict
from aim_video.data import decode
from aim_video.engine.deepspeed_setup import model_dtype
from aim_video.engine.distributed import device_and_backend
from aim_video.models.build import build_model
from aim_video.profiling import plots
from aim_video.profiling.flops import mfu, model_flops_per_clip, peak_info
from aim_video.profiling.report import summary_text, verdict, write_json
from aim_video.profiling.throughput import build_train_step, end_to_end, loader_sweep, model_sweep


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity mask, which containers and schedulers narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cores_per_rank(device: torch.device) -> int:
    """CPU cores one training rank can count on: all of them on CPU, an equal share per GPU of the node on CUDA
    (training runs one rank per GPU, and every rank's loader workers share the node's cores)."""
    gpus = torch.cuda.device_count() if device.type == "cuda" else 1
    return max(1, cpu_cores() // max(1, gpus))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def device_info(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()
    return {
        "type": device.type,
        "name": name,
        "cpu_cores": cpu_cores(),
        "cpu_cores_per_rank": cores_per_rank(device),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def run_profile(cfg: Config, out_dir: str, trace: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure everything, write `profile.json` and the plots into `out_dir`, and return the result dict."""
    started = time.perf_counter()
    p = cfg.profile
    if p.max_workers < 1 or not p.batch_sizes or p.steps < 1 or p.loader_batches < 1 or p.warmup < 0:
        raise ValueError(
            "profile.max_workers, profile.steps and profile.loader_batches must be >= 1, profile.warmup >= 0 and "
            f"profile.batch_sizes non-empty; got {p}"
        )
    device, _ = device_and_backend(0)  # as training chooses: DS_ACCELERATOR=cpu on a GPU node is the CPU
    dtype = model_dtype(cfg)
    d = cfg.data
    model = build_model(cfg.model, d.num_frames, d.input_size)
    _, step = build_train_step(cfg, model, device)  # moves and casts it, as DeepSpeed holds it for train.precision
    trainable, total = model.parameter_counts()

    log("[profile] counting FLOPs per clip")
    flops = model_flops_per_clip(model, d.num_frames, d.input_size, device, dtype)
    peak = peak_info(device, dtype, p.peak_tflops)

    log(f"[profile] model: batch sizes {list(p.batch_sizes)}, {p.warmup} warm-up + {p.steps} timed steps each")
    model_rows = model_sweep(cfg, model, step, list(p.batch_sizes), device, dtype, p.warmup, p.steps)
    for row in model_rows:
        if not row["oom"]:
            row["train_tflops"] = flops["train"] * row["train_clips_per_s"] / 1e12
            row["train_mfu"] = mfu(flops["train"], row["train_clips_per_s"], peak.get("peak_tflops"))
            row["infer_tflops"] = flops["forward"] * row["infer_clips_per_s"] / 1e12
            row["infer_mfu"] = mfu(flops["forward"], row["infer_clips_per_s"], peak.get("peak_tflops"))

    workers = list(range(1, p.max_workers + 1))
    if d.decode_device != "cpu":  # NVDEC decodes in this process: forked workers cannot use CUDA
        workers = [0]
        log(f"[profile] data.decode_device={d.decode_device}: the loader is measured in this process only")
    log(f"[profile] loader: workers {workers}, {p.loader_batches} timed batches of {d.batch_size} each")
    loader_rows = loader_sweep(cfg, workers, p.loader_batches, p.loader_delay_s)

    log(f"[profile] end to end: {p.steps} real training steps with {d.num_workers} worker(s)")
    trace_dir = out_dir if trace or p.trace else None
    e2e = end_to_end(cfg, model, step, device, dtype, p.steps, p.loader_delay_s, trace_dir)

    e2e["train_tflops"] = flops["train"] * e2e["clips_per_s"] / 1e12
    e2e["mfu"] = mfu(flops["train"], e2e["clips_per_s"], peak.get("peak_tflops"))

    result: dict[str, Any] = {
        "schema_version": 1,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(device),
        "config": {
            "arch": cfg.model.arch,
            "num_frames": d.num_frames,
            "input_size": d.input_size,
            "batch_size": d.batch_size,
            "num_workers": d.num_workers,
            "train_list": d.train_list,
            "backend": d.backend,
            "precision": cfg.train.precision,
            "dtype": str(dtype).replace("torch.", ""),
            "loader_delay_s": p.loader_delay_s,
        },
        "params": {"total": total, "trainable": trainable, "trainable_share": trainable / total},
        "flops": {
            "forward_per_clip": flops["forward"],
            "train_per_clip": flops["train"],
            "counter": "torch.utils.flop_counter.FlopCounterMode (matmul, conv, attention; 2 FLOPs per MAC)",
        },
        "peak": peak,
        "memory_kind": "cuda_max_allocated" if device.type == "cuda" else "rss",
        "loader": loader_rows,
        "model": model_rows,
        "end_to_end": e2e,
    }
    result["verdict"] = verdict(
        e2e["data_wait_share"],
        e2e["compute_clips_per_s"],
        loader_rows,
        d.num_workers,
        cores_per_rank(device),
        # torchcodec reads 1.04-1.56x decord's clips/s (docs/benchmarks.md "Loader"), where FFmpeg's libraries are
        faster_backend="torchcodec" if d.backend == "decord" and not decode.torchcodec_unavailable() else "",
    )
    result["resolved_config"] = to_dict(cfg)
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "json": os.path.join(out_dir, "profile.json"),
        "loader_plot": plots.plot_loader(result, os.path.join(out_dir, "loader_workers.png")),
        "model_plot": plots.plot_model(result, os.path.join(out_dir, "model_batch.png")),
        "table": os.path.join(out_dir, "profile.txt"),
    }
    if "trace" in e2e:
        files.update(e2e["trace"])
    result["files"] = files
    result["wall_s"] = time.perf_counter() - started
    text = summary_text(result)
    tmp = f"{files['table']}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, files["table"])
    write_json(result, files["json"])
    log(text)
    return result
