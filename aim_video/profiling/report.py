"""The verdict (loader-bound or compute-bound, and how many workers keep the model fed), the table and the JSON.

The verdict rests on what training really does: the share of the end-to-end steps spent waiting for the next batch.
Above `WAIT_THRESHOLD` the loop is loader-bound. The worker estimate compares what the model consumes (clips/s of
the compute part of the real steps, at the configured batch size) with what the loader delivers: the smallest worker
count of the sweep that keeps up, else the per-worker rate at the sweep's largest count scaled beyond it. When the
loop is loader-bound, the configured workers' real rate caps that per-worker rate: in training they share the CPU
with the training process, and a sweep of the loader alone can read twice as fast. More workers or cores are advised
only when the loop is loader-bound, checked against the CPU cores one rank can count on (the node's cores shared by
its GPUs).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

WAIT_THRESHOLD = 0.10  # share of step time spent waiting for data above which training is loader-bound


def verdict(
    data_wait_share: float,
    model_clips_per_s: float,
    loader: list[dict[str, Any]],
    configured_workers: int,
    cpu_cores_per_rank: int,
    threshold: float = WAIT_THRESHOLD,
    faster_backend: str = "",
) -> dict[str, Any]:
    """Loader- or compute-bound from the measured data wait; workers needed from the sweep and, when the loop waited
    for data, from what the configured workers really delivered.

    `model_clips_per_s` is the compute rate of the real steps (clips over compute time), so the clips/s the loop got
    end to end are `model_clips_per_s * (1 - data_wait_share)`. `loader` rows carry `workers` and `clips_per_s`.
    `faster_backend`: a decoding backend installed here that reads faster than the configured one (named when
    decoding is what falls short). Returns the bound, the numbers behind it and one sentence.
    """
    bound = "loader" if data_wait_share > threshold else "compute"
    rows = sorted((r for r in loader if r["workers"] > 0 and r["clips_per_s"] > 0), key=lambda r: r["workers"])
    enough = [r for r in rows if r["clips_per_s"] >= model_clips_per_s]
    # the sweep's estimate: the smallest measured count that keeps up, else the largest count's per-worker rate
    # scaled beyond it (never from a smaller count: per-worker rates fall as workers compete for the cores)
    basis = enough[0] if enough else (rows[-1] if rows else None)
    sweep_rate = basis["clips_per_s"] / basis["workers"] if basis else None
    sweep_needed = basis["workers"] if enough else (math.ceil(model_clips_per_s / sweep_rate) if basis else None)
    text = (
        f"{bound}-bound: the training loop waited for data {100 * data_wait_share:.0f}% of the time "
        f"(threshold {100 * threshold:.0f}%) with {configured_workers} worker(s). The model consumes "
        f"{model_clips_per_s:.1f} clips/s at this batch size"
    )
    if basis is not None:
        text += f"; in the loader sweep {basis['workers']} worker(s) delivered {basis['clips_per_s']:.1f} clips/s"
        text += ", enough" if enough else f" ({sweep_rate:.1f} per worker), so about {sweep_needed} at that rate"

    delivered = model_clips_per_s * (1 - data_wait_share)  # clips over wait + compute time: what the loop got
    in_training = (
        delivered / configured_workers if bound == "loader" and configured_workers > 0 and delivered > 0 else None
    )
    per_worker, needed = sweep_rate, sweep_needed
    if in_training is not None:
        # loader-bound: the configured workers delivered `delivered` while the model trained; no more per worker
        per_worker = min(sweep_rate, in_training) if sweep_rate else in_training
        needed = math.ceil(model_clips_per_s / per_worker)
        text += (
            f". In the real steps the {configured_workers} worker(s) delivered {delivered:.1f} clips/s "
            f"({in_training:.1f} per worker"
            + (f", {in_training / sweep_rate:.2f}x the sweep's rate" if sweep_rate else "")
            + ")"
        )
        if sweep_needed is not None and sweep_needed <= configured_workers:
            text += (
                f": loader-bound although at the sweep's rate the {configured_workers} configured worker(s) would "
                "suffice; each delivered less while the model trained than in the sweep, where the loader ran alone"
            )
        text += f"; at {per_worker:.1f} clips/s per worker about {needed} worker(s) keep it fed"
    elif bound == "compute" and needed is not None and needed > configured_workers:
        needed = configured_workers  # the real steps hardly waited: the configured workers keep up
        text += (
            f", yet the real steps hardly waited with {configured_workers}: they suffice"
            if configured_workers > 0
            else ", yet the real steps hardly waited with the clips read in the training process: that suffices"
        )

    if bound == "loader" and needed is not None and needed > configured_workers:
        now = [r["clips_per_s"] for r in rows if r["workers"] == configured_workers]
        more = [r for r in rows if r["workers"] > configured_workers]
        best = max(more, key=lambda r: r["clips_per_s"], default=None)
        cheaper = (
            "make decoding cheaper (videos pre-resized to the short side, fixed keyframe interval: "
            "tools/prepare_kinetics.py reencode"
            + (f"; data.backend={faster_backend}" if faster_backend else "")
            + ") or give each accelerator more cores"
        )
        if now and best is not None and best["clips_per_s"] <= 1.05 * now[0]:  # measured: more did not help
            text += (
                f", but {best['workers']} workers delivered {best['clips_per_s']:.1f} clips/s against "
                f"{now[0]:.1f} with {configured_workers}: more workers do not help on these cores; {cheaper}"
            )
        elif needed > cpu_cores_per_rank:
            text += f". That is more than the {cpu_cores_per_rank} CPU core(s) per rank: {cheaper}"
        else:
            text += f": raise data.num_workers from {configured_workers} to {needed}"
    return {
        "bound": bound,
        "data_wait_share": data_wait_share,
        "threshold": threshold,
        "model_clips_per_s": model_clips_per_s,
        "end_to_end_clips_per_s": delivered,
        "sweep_clips_per_s_per_worker": sweep_rate,
        "end_to_end_clips_per_s_per_worker": in_training,
        "clips_per_s_per_worker": per_worker,
        "workers_needed": needed,
        "measured_sufficient_workers": enough[0]["workers"] if enough else None,
        "configured_workers": configured_workers,
        "cpu_cores_per_rank": cpu_cores_per_rank,
        "text": text + ".",
    }


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain aligned text table."""
    cells = [headers] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_text(result: dict[str, Any]) -> str:
    """The human-readable report printed by tools/profile.py."""
    dev, cfg, params, flops, peak = (result[k] for k in ("device", "config", "params", "flops", "peak"))
    mem = "CUDA max allocated" if result["memory_kind"] == "cuda_max_allocated" else "process RSS"
    parts = [
        f"device: {dev['name']} ({dev['type']}, {dev['cpu_cores']} CPU cores, {dev['torch_threads']} torch threads), "
        f"torch {dev['torch']}, "
        f"dtype {cfg['dtype']}",
        f"model: {cfg['arch']}, {cfg['num_frames']} frames at {cfg['input_size']} px; parameters "
        f"{params['total'] / 1e6:.3f} M total, {params['trainable'] / 1e6:.3f} M trainable "
        f"({100 * params['trainable'] / params['total']:.1f}%)",
        f"FLOPs per clip: forward {flops['forward_per_clip'] / 1e9:.3f} GFLOP, training step "
        f"{flops['train_per_clip'] / 1e9:.3f} GFLOP (forward + backward, counted; 2 FLOPs per multiply-add: "
        f"{flops['forward_per_clip'] / 2e9:.3f} and {flops['train_per_clip'] / 2e9:.3f} GMACs, the unit papers "
        "often quote as GFLOPs)"
        + (f"; MFU against {peak['peak_tflops']:.1f} TFLOP/s ({peak['source']})" if peak.get("peak_tflops") else ""),
        "",
        f"loader ({cfg['train_list']}, batch {cfg['batch_size']}"
        + (f", delay {cfg['loader_delay_s']} s/batch" if cfg["loader_delay_s"] else "")
        + ")",
        format_table(
            ["workers", "clips/s", "ms/batch", "startup s"],
            [[r["workers"], r["clips_per_s"], r["batch_ms"], r["startup_s"]] for r in result["loader"]],
        ),
        "",
        f"model (synthetic clips on the device; peak memory = {mem}, MiB)",
        format_table(
            ["batch", "train clips/s", "train ms", "train MiB", "train TFLOP/s", "MFU %", "infer clips/s", "infer MiB"],
            [
                [r["batch_size"], "OOM"] + [None] * 6
                if r["oom"]
                else [
                    r["batch_size"],
                    r["train_clips_per_s"],
                    r["train_step_ms"],
                    r["train_peak_mib"],
                    r["train_tflops"],
                    None if r["train_mfu"] is None else 100 * r["train_mfu"],
                    r["infer_clips_per_s"],
                    r["infer_peak_mib"],
                ]
                for r in result["model"]
            ],
        ),
        "",
    ]
    e2e = result["end_to_end"]
    parts += [
        f"end to end: {e2e['steps']} real steps, batch {e2e['batch_size']}, {e2e['workers']} worker(s): "
        f"{e2e['clips_per_s']:.1f} clips/s, waiting for data {100 * e2e['data_wait_share']:.0f}% "
        f"({e2e['wait_ms_per_step']:.1f} ms wait + {e2e['compute_ms_per_step']:.1f} ms compute per step)"
        + (f", MFU {100 * e2e['mfu']:.1f}%" if e2e.get("mfu") is not None else ""),
        f"verdict: {result['verdict']['text']}",
    ]
    failed = sum(r.get("failed_loads", 0) for r in result["loader"]) + e2e.get("failed_loads", 0)
    if failed:  # each one costs a failed read and a replacement read: the rates above include that
        parts.append(
            f"note: {failed} loads failed and were replaced by other videos (failed_loads in the JSON); the rates "
            "include them. tools/prepare_kinetics.py verify names the files"
        )
    return "\n".join(parts)


def write_json(data: dict[str, Any], path: str) -> str:
    """Write `data` as indented JSON atomically (temporary name, then rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path
