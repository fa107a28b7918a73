"""Multi-view testing: every video's views through the model, averaged, gathered across ranks, each video once.

The eval loader decodes a video once and yields all its views, ``[B, V, T, C, H, W]`` uint8 with V = clips x crops
(clip-major). :func:`evaluate` runs those views in chunks of ``cfg.eval.view_chunk`` (memory stays bounded whatever
V is), averages them per video (``prob``: softmax per view then mean; ``score``: mean of logits), gathers the
per-video rows from all ranks, drops the repeats a ``DistributedSampler`` pads the last batch with, checks that each
video of the split is counted exactly once (evaluated or listed as unreadable) and scores the rest with torchmetrics.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from einops import rearrange
from tqdm import tqdm

from aim_video.config import Config
from aim_video.data.transforms import normalize
from aim_video.eval.metrics import compute_metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewProtocol:
    """How many views a video is tested with: ``num_clips`` temporal clips x ``num_crops`` spatial crops."""

    name: str
    num_clips: int
    num_crops: int

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops


# The paper's test protocols (AIM_SPEC.md section 3); frames per clip come from data.num_frames ("8x3x1" = 8 frames,
# 3 clips, 1 crop).
PROTOCOLS: dict[str, ViewProtocol] = {
    "k400": ViewProtocol("k400", num_clips=3, num_crops=1),
    "ssv2": ViewProtocol("ssv2", num_clips=1, num_crops=3),
    "diving48": ViewProtocol("diving48", num_clips=1, num_crops=1),
}
AVERAGE_MODES = ("prob", "score")


def resolve_protocol(cfg: Config) -> ViewProtocol:
    """The named preset ``cfg.eval.protocol``, or ``custom`` from ``data.test_num_clips`` x ``data.test_num_crops``."""
    name = cfg.eval.protocol
    if name:
        if name not in PROTOCOLS:
            raise ValueError(f"unknown eval.protocol '{name}': use one of {', '.join(PROTOCOLS)} or '' (custom)")
        return PROTOCOLS[name]
    if cfg.data.test_num_clips < 1 or cfg.data.test_num_crops not in (1, 3):
        raise ValueError(
            f"data.test_num_clips must be >= 1 and data.test_num_crops 1 or 3, got "
            f"{cfg.data.test_num_clips} x {cfg.data.test_num_crops}"
        )
    return ViewProtocol("custom", cfg.data.test_num_clips, cfg.data.test_num_crops)


def apply_protocol(cfg: Config) -> ViewProtocol:
    """Resolve the protocol and write its views into ``cfg.data`` so that ``build_eval_loader`` yields them."""
    protocol = resolve_protocol(cfg)
    asked = {k: getattr(cfg.data, k) for k in ("test_num_clips", "test_num_crops")}
    wanted = {"test_num_clips": protocol.num_clips, "test_num_crops": protocol.num_crops}
    # any disagreement is told: a value equal to the schema default may have been set on purpose all the same
    dropped = {k: v for k, v in asked.items() if v != wanted[k]}
    if cfg.eval.protocol and dropped:  # set on purpose, yet the preset decides: say so, not silently
        log.warning(
            "eval.protocol=%s evaluates %d clips x %d crops; %s ignored (set eval.protocol= to use them)",
            cfg.eval.protocol, protocol.num_clips, protocol.num_crops,
            ", ".join(f"data.{k}={v}" for k, v in dropped.items()),
        )  # fmt: skip
    cfg.data.test_num_clips = protocol.num_clips
    cfg.data.test_num_crops = protocol.num_crops
    return protocol


def protocol_record(cfg: Config, protocol: ViewProtocol) -> dict[str, Any]:
    """Everything that makes two reported numbers comparable, for the results JSON."""
    return {
        **dataclasses.asdict(protocol),
        "num_views": protocol.num_views,
        "num_frames": cfg.data.num_frames,
        "sampling": cfg.data.sampling,
        "frame_stride": cfg.data.frame_stride,
        "test_short_side": cfg.data.test_short_side,
        "input_size": cfg.data.input_size,
        "average": cfg.eval.average,
        "label": f"{cfg.data.num_frames}x{protocol.num_clips}x{protocol.num_crops}",
    }


def average_views(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """``[B, V, K]`` logits -> ``[B, K]``: mean of per-view softmax (``prob``) or mean of logits (``score``)."""
    if mode == "prob":
        return logits.float().softmax(dim=-1).mean(dim=1)
    if mode == "score":
        return logits.float().mean(dim=1)
    raise ValueError(f"eval.average must be one of {AVERAGE_MODES}, got '{mode}'")


@torch.inference_mode()
def forward_views(
    model: torch.nn.Module,
    video: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    view_chunk: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    input_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Logits ``[B, V, K]`` (fp32, on CPU) for a uint8 batch ``[B, V, T, C, H, W]``, at most ``view_chunk`` views
    (of any videos) per forward pass; the uint8 chunk is copied to ``device`` and normalised there, as
    ``input_dtype`` (the model's own dtype when DeepSpeed holds it in bf16/fp16), under autocast to ``amp_dtype``."""
    b, v = video.shape[:2]
    flat = rearrange(video, "b v t c h w -> (b v) t c h w")  # [B*V, T, C, H, W], clip-major views stay adjacent
    outputs = []
    for chunk in flat.split(max(1, view_chunk)):
        x = normalize(chunk.to(device, non_blocking=True), mean, std, dtype=input_dtype)
        with torch.autocast(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(x)
        outputs.append(logits.float().cpu())
    return rearrange(torch.cat(outputs), "(b v) k -> b v k", b=b, v=v)  # [B, V, K]


def _gather(local: dict[str, Any], world_size: int) -> list[dict[str, Any]]:
    if world_size == 1:
        return [local]
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, local)
    return parts


def merge_rank_outputs(parts: Iterable[dict[str, Any]], dataset_size: int, world_size: int) -> dict[str, Any]:
    """Concatenate per-rank rows, drop sampler padding and check exactly-once coverage of ``range(dataset_size)``.

    Each part holds ``index`` [n], ``label`` [n], ``scores`` [n, K] and ``errors`` [(index, path, reason)]. A video
    seen twice (a ``DistributedSampler`` pads with repeats of the first videos) keeps its first row; a video read
    successfully anywhere counts as evaluated. Raises if a video is never seen, lies outside the split, or more
    repeats appear than a sampler can pad (ranks evaluating overlapping shards).
    """
    parts = list(parts)
    index = torch.cat([p["index"].long() for p in parts])
    label = torch.cat([p["label"].long() for p in parts])
    scores = torch.cat([p["scores"].float() for p in parts])
    errors = [tuple(e) for p in parts for e in p["errors"]]

    order = torch.argsort(index, stable=True)  # rank order kept among repeats: the first row wins
    index, label, scores = index[order], label[order], scores[order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    group = first.long().cumsum(0) - 1  # [n] which unique video each row belongs to
    repeats_ok = label == label[first][group]  # every repeat must carry its first row's label
    if not bool(repeats_ok.all()):
        bad = index[~repeats_ok].unique().tolist()[:10]
        raise RuntimeError(f"videos {bad} were evaluated twice with different labels: the ranks disagree on the split")
    num_repeats = int((~first).sum())
    index, label, scores = index[first], label[first], scores[first]

    evaluated = set(index.tolist())
    missing: dict[int, tuple[str, str]] = {}
    for idx, path, reason in errors:
        if int(idx) in evaluated or int(idx) in missing:  # a padded copy (read or not) of a video already counted
            num_repeats += 1
            continue
        missing[int(idx)] = (str(path), str(reason))
    if num_repeats > world_size - 1:
        raise RuntimeError(
            f"{num_repeats} repeated videos across {world_size} ranks, more than a distributed sampler pads "
            f"(at most {world_size - 1}): each rank must evaluate its own shard of the split"
        )
    seen = evaluated | set(missing)
    outside = sorted(i for i in seen if not 0 <= i < dataset_size)
    never = sorted(set(range(dataset_size)) - seen)
    if outside or never:
        raise RuntimeError(
            f"evaluation did not count every video of the split exactly once ({dataset_size} videos): "
            f"never seen {never[:10]} ({len(never)}), outside the split {outside[:10]} ({len(outside)})"
        )
    return {
        "index": index,
        "label": label,
        "scores": scores,
        "missing": [{"index": i, "path": p, "reason": r} for i, (p, r) in sorted(missing.items())],
        "num_repeats_dropped": num_repeats,
    }


def inference_precision(
    model: torch.nn.Module, cfg: Config, device: torch.device
) -> tuple[torch.dtype | None, torch.dtype]:
    """(autocast dtype, input dtype): a model already in bf16/fp16 (DeepSpeed's engine.module) gets inputs in its
    dtype; an fp32 model on CUDA runs under autocast to ``train.precision``; on CPU everything stays fp32."""
    param_dtype = next(model.parameters()).dtype
    if param_dtype in (torch.bfloat16, torch.float16):
        return None, param_dtype
    if device.type != "cuda":
        return None, torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.precision), torch.float32


class MissingVideosError(RuntimeError):
    """``eval.strict`` is set and some videos of the split could not be read."""


def evaluate(
    model: torch.nn.Module,
    loader: Iterable[dict[str, Any]],
    cfg: Config,
    device: torch.device | str | None = None,
    *,
    dataset_size: int | None = None,
    progress: bool = True,
    strict: bool | None = None,
    return_scores: bool = False,
) -> dict[str, Any]:
    """Multi-view evaluation of ``model`` on ``loader`` (this rank's shard); every rank returns the same dict.

    The dict is JSON-ready (a training log can store it): ``top1``, ``top5``, ``mean_class_acc`` and
    ``per_class_acc`` in percent (NaN for a class without videos) over the ``num_evaluated`` labelled, readable
    videos; ``missing`` (index, path, reason of each unreadable video: never substituted); ``num_unlabelled`` (label
    < 0: predicted, not scored); ``per_video`` (index, label, pred for every readable video, sorted by index, so a
    caller can score a subset of classes); ``protocol``; throughput. ``return_scores`` adds the tensors
    ``scores`` (index [N], label [N], averaged scores [N, K]) and ``confusion_matrix`` [K, K].
    ``strict`` (default ``cfg.eval.strict``) raises :class:`MissingVideosError` on every rank when a video is missing.
    ``device`` defaults to the model's; call it on every rank (it gathers), with the model as it is (fp32 or the
    bf16/fp16 weights of DeepSpeed's ``engine.module``).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    rank = dist.get_rank() if world_size > 1 else 0
    protocol = resolve_protocol(cfg)
    if cfg.eval.average not in AVERAGE_MODES:
        raise ValueError(f"eval.average must be one of {AVERAGE_MODES}, got '{cfg.eval.average}'")
    if dataset_size is None:
        dataset_size = len(loader.dataset)  # type: ignore[attr-defined]
    amp_dtype, input_dtype = inference_precision(model, cfg, device)

    model.eval()
    rows: dict[str, list[torch.Tensor]] = {"index": [], "label": [], "scores": []}
    errors: list[tuple[int, str, str]] = []
    fallbacks: dict[int, tuple[str, str]] = {}  # videos read with data.fallback_backend: exact, but slow
    sampler = getattr(loader, "sampler", None)
    per_rank = len(sampler) if sampler is not None and hasattr(sampler, "__len__") else -(-dataset_size // world_size)
    bar = tqdm(
        total=per_rank * world_size, unit="video", desc="eval", disable=not (progress and rank == 0), dynamic_ncols=True
    )
    start = time.perf_counter()
    for batch in loader:
        errors.extend((int(i), str(p), str(r)) for i, p, r in batch.get("errors", []))
        fallbacks.update((int(i), (str(p), str(r))) for i, p, r in batch.get("fallbacks", []))
        video = batch["video"]
        n = 0 if video is None else int(video.shape[0])
        if n:
            if video.ndim != 6 or video.shape[1] != protocol.num_views:
                raise ValueError(
                    f"eval batch has shape {tuple(video.shape)}, expected [B, {protocol.num_views}, T, C, H, W] for "
                    f"protocol {protocol.name} ({protocol.num_clips} clips x {protocol.num_crops} crops): call "
                    "apply_protocol(cfg) before build_eval_loader so the loader makes the protocol's views"
                )
            logits = forward_views(
                model, video, cfg.data.mean, cfg.data.std, cfg.eval.view_chunk, device, amp_dtype, input_dtype
            )
            rows["scores"].append(average_views(logits, cfg.eval.average))  # [B, K]
            rows["index"].append(torch.as_tensor(batch["index"]).long().view(-1))
            rows["label"].append(torch.as_tensor(batch["label"]).long().view(-1))
        bar.update((n + len(batch.get("errors", []))) * world_size)  # ranks move in step: a global estimate
        bar.set_postfix(missing_on_rank0=len(errors), refresh=False)
    bar.close()
    elapsed = time.perf_counter() - start

    num_classes = cfg.model.num_classes
    local = {
        "index": torch.cat(rows["index"]) if rows["index"] else torch.zeros(0, dtype=torch.long),
        "label": torch.cat(rows["label"]) if rows["label"] else torch.zeros(0, dtype=torch.long),
        "scores": torch.cat(rows["scores"]) if rows["scores"] else torch.zeros(0, num_classes),
        "errors": errors,
        "fallbacks": fallbacks,
    }
    parts = _gather(local, world_size)
    merged = merge_rank_outputs(parts, dataset_size, world_size)
    fell_back = {i: pr for part in parts for i, pr in part.get("fallbacks", {}).items()}  # padded repeats: once
    strict = cfg.eval.strict if strict is None else strict
    if strict and merged["missing"]:
        listed = "; ".join(f"{m['path']}: {m['reason']}" for m in merged["missing"][:10])
        raise MissingVideosError(
            f"{len(merged['missing'])} of {dataset_size} videos could not be read (strict evaluation): {listed}. "
            "Fix or remove them from the list, or leave eval.strict off (tools/test.py: without --strict) to score "
            "the rest."
        )
    labelled = merged["label"] >= 0
    metrics = compute_metrics(merged["scores"][labelled], merged["label"][labelled], num_classes)
    num_seen = int(merged["index"].numel()) + len(merged["missing"])
    preds = merged["scores"].argmax(dim=1) if merged["scores"].numel() else torch.zeros(0, dtype=torch.long)
    result: dict[str, Any] = {
        "top1": 100 * metrics["top1"],
        "top5": 100 * metrics["top5"],
        "mean_class_acc": 100 * metrics["mean_class_accuracy"],
        "per_class_acc": [100 * a for a in metrics["per_class_accuracy"]],
        "num_evaluated": int(labelled.sum()),
        "num_unlabelled": int((~labelled).sum()),
        "num_missing": len(merged["missing"]),
        "missing": merged["missing"],
        "num_fallback_reads": len(fell_back),
        "fallback_reads": [{"index": i, "path": p, "reason": r} for i, (p, r) in sorted(fell_back.items())],
        "dataset_size": dataset_size,
        "num_classes": num_classes,
        "protocol": protocol_record(cfg, protocol),
        "per_video": [
            {"index": i, "label": y, "pred": p}
            for i, y, p in zip(merged["index"].tolist(), merged["label"].tolist(), preds.tolist(), strict=True)
        ],
        "world_size": world_size,
        "num_repeats_dropped": merged["num_repeats_dropped"],
        "elapsed_s": elapsed,
        "videos_per_s": num_seen / elapsed if elapsed > 0 else float("nan"),
    }
    if return_scores:
        result["scores"] = {"index": merged["index"], "label": merged["label"], "scores": merged["scores"]}
        result["confusion_matrix"] = metrics["confusion_matrix"]
    return result
