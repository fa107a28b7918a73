"""Evaluation outputs on disk: results JSON, per-class CSV, confusion figure, per-video scores.

Everything is written atomically (temporary name, then ``os.replace``) so a reader never sees half a file. The
results JSON records what makes a number comparable across papers: the view protocol, the number of videos really
scored, the unreadable ones, the checkpoint's hash and the resolved config.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from aim_video.eval.metrics import confusion_from_predictions, top_confused_pairs
from aim_video.models.trainable_io import save_safetensors


def _atomic(path: str, write: Callable[[str], None]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _write_text(path: str, text: str) -> str:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            f.write(text)

    return _atomic(path, write)


def sha256_file(path: str, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _json_safe(value: Any) -> Any:
    """NaN -> null (strict JSON), tensors -> lists."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def results_record(
    result: dict[str, Any],
    config: dict[str, Any],
    checkpoint: str,
    checkpoint_sha256: str,
    split: str,
    dropped: Sequence[tuple[str, str]] = (),
    paths: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The results JSON for an :func:`~aim_video.eval.multiview.evaluate` result (accuracies in percent).

    ``dropped``: (path, reason) of list entries left out before the dataset was built (a file that does not exist
    under ``data.missing_files=drop``, a video the verify report found returning wrong frames under
    ``data.inexact_videos=drop``: the eval dataset's ``dropped``); they join ``missing`` with index null and count in
    ``num_listed``. ``paths``: the split's video paths by dataset index, added to every ``per_video`` entry;
    ``names``: the class names, each entry's predicted one added as ``pred_name``.
    """
    missing = [*result["missing"], *({"index": None, "path": p, "reason": why} for p, why in dropped)]
    listed = result["dataset_size"] + len(dropped)
    per_video = result["per_video"]
    if paths is not None:
        per_video = [{**v, "path": paths[v["index"]]} for v in per_video]
    if names is not None:  # an unlabelled test list's predictions are read from here: by name, not only index
        per_video = [{**v, "pred_name": names[v["pred"]]} for v in per_video]
    return _json_safe(
        {
            "metrics": {key: result[key] for key in ("top1", "top5", "mean_class_acc", "per_class_acc")},
            # top-5 of fewer than 6 classes is top-K: 100 % whatever the model does
            "top5_of_k": min(5, len(result["per_class_acc"])),
            "num_evaluated": result["num_evaluated"],
            "num_missing": len(missing),
            "num_unlabelled": result["num_unlabelled"],
            "dataset_size": result["dataset_size"],
            "num_listed": listed,
            "note": f"metrics over {result['num_evaluated']} of {listed} listed videos; {len(missing)} missing or "
            "unreadable (listed in 'missing', not substituted)",
            "split": split,
            "protocol": result["protocol"],
            "checkpoint": os.path.abspath(checkpoint),
            "checkpoint_sha256": checkpoint_sha256,
            "world_size": result["world_size"],
            "elapsed_s": result["elapsed_s"],
            "videos_per_s": result["videos_per_s"],
            "missing": missing,
            "num_fallback_reads": result.get("num_fallback_reads", 0),
            "fallback_reads": result.get("fallback_reads", []),  # read with data.fallback_backend: exact, slow
            "per_video": per_video,
            "config": config,
        }
    )


def write_results_json(record: dict[str, Any], path: str) -> str:
    return _write_text(path, json.dumps(record, indent=2, allow_nan=False) + "\n")


def write_per_class_csv(result: dict[str, Any], class_names: Sequence[str], path: str) -> str:
    """One row per class: support, correct, accuracy (%), and the class it is most often mistaken for."""
    confusion = confusion_from_predictions(result["per_video"], len(class_names))
    off = confusion.clone()
    off.fill_diagonal_(0)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["class_index", "class_name", "support", "correct", "accuracy", "most_confused_with", "count"])
    for k, name in enumerate(class_names):
        acc = result["per_class_acc"][k]
        worst = int(off[k].argmax())
        worst_count = int(off[k, worst])
        writer.writerow(
            [
                k,
                name,
                int(confusion[k].sum()),
                int(confusion[k, k]),
                "" if acc is None or math.isnan(acc) else f"{acc:.2f}",
                class_names[worst] if worst_count else "",
                worst_count if worst_count else "",
            ]
        )
    return _write_text(path, buf.getvalue())


def plot_confusion(confusion: torch.Tensor, class_names: Sequence[str], path: str, top_pairs: int = 25) -> str:
    """A figure readable at any class count: the most confused (true -> predicted) pairs as bars, and the confusion
    matrix restricted to the classes those pairs involve (all classes when there are at most 30), row-normalised."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = confusion.long().cpu()
    num_classes = confusion.shape[0]
    pairs = top_confused_pairs(confusion, top_pairs)
    if num_classes <= 30:
        shown = list(range(num_classes))
    else:
        shown = sorted({c for t, p, _ in pairs for c in (t, p)})[:40] or list(range(min(num_classes, 10)))
    sub = confusion[shown][:, shown].float()
    rows = confusion.sum(dim=1).float()[shown].clamp(min=1)
    sub = sub / rows[:, None]  # share of each true class's videos

    fig, (ax_bar, ax_mat) = plt.subplots(1, 2, figsize=(20, 10), gridspec_kw={"width_ratios": [1, 1.2]})
    if pairs:
        labels = [f"{class_names[t]} -> {class_names[p]}" for t, p, _ in pairs][::-1]
        counts = [c for _, _, c in pairs][::-1]
        shares = [c / max(1, int(confusion[t].sum())) for t, _, c in pairs][::-1]
        ax_bar.barh(range(len(pairs)), counts, color="tab:red")
        ax_bar.set_yticks(range(len(pairs)), labels, fontsize=8)
        for y, (c, s) in enumerate(zip(counts, shares, strict=True)):
            ax_bar.text(c, y, f" {c} ({100 * s:.0f}%)", va="center", fontsize=7)
        ax_bar.set_xlabel("videos (share of the true class)")
    else:
        ax_bar.text(0.5, 0.5, "no confusions", ha="center", va="center")
    ax_bar.set_title(f"top {len(pairs)} confused pairs (true -> predicted), {num_classes} classes")
    image = ax_mat.imshow(sub.numpy(), cmap="viridis", vmin=0, vmax=1)
    fontsize = 8 if len(shown) <= 30 else 6
    ax_mat.set_xticks(range(len(shown)), [class_names[c] for c in shown], rotation=90, fontsize=fontsize)
    ax_mat.set_yticks(range(len(shown)), [class_names[c] for c in shown], fontsize=fontsize)
    ax_mat.set_xlabel("predicted")
    ax_mat.set_ylabel("true")
    ax_mat.set_title("confusion (row-normalised)" + ("" if len(shown) == num_classes else ", most confused classes"))
    fig.colorbar(image, ax=ax_mat, fraction=0.046)
    fig.tight_layout()

    def write(tmp: str) -> None:
        fig.savefig(tmp, format="png", dpi=100)

    try:
        return _atomic(path, write)
    finally:
        plt.close(fig)


def write_scores(
    result: dict[str, Any], path: str, metadata: dict[str, Any] | None = None, paths: list[str] | None = None
) -> str:
    """Per-video averaged scores for ensembling: safetensors ``index`` [N], ``label`` [N], ``scores`` [N, K].

    Needs a result of ``evaluate(..., return_scores=True)``. ``index`` numbers the videos evaluated (after the ones
    left out), not the list's lines: with ``paths`` (the dataset's, by index) the metadata's ``paths`` (JSON) names
    each row's video, so that score files of runs that left out different videos are matched by video."""
    preds = result["scores"]
    tensors = {
        "index": preds["index"].long().contiguous(),
        "label": preds["label"].long().contiguous(),
        "scores": preds["scores"].float().contiguous(),
    }
    meta = {"protocol": json.dumps(result["protocol"]), **{k: json.dumps(v) for k, v in (metadata or {}).items()}}
    if paths is not None:
        meta["paths"] = json.dumps([paths[i] for i in tensors["index"].tolist()])
    return save_safetensors(tensors, path, meta)
