"""Classification metrics over per-video scores: exact accuracies from counts, the confusion matrix from torchmetrics.

Evaluation hands this module one row of averaged scores per video (already gathered across ranks, each video once).
Everything here is a pure function of ``scores [N, K]`` and ``labels [N]``, so a caller can also score a subset of
videos or classes (for example the demo's temporal-order pair) with the same definitions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix


def compute_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """Top-1, top-5, mean-class accuracy, per-class accuracy and the confusion matrix.

    ``scores``: float ``[N, K]`` (probabilities or logits; only their order matters). ``labels``: int64 ``[N]``.
    Mean-class accuracy is the mean recall over the classes that occur in ``labels`` (torchmetrics' ``macro`` would
    also count, as 0, a class without videos that something was predicted as); per-class accuracy is NaN for a class
    with no video. Accuracies are fractions in [0, 1].
    """
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise ValueError(f"scores must be [N, {num_classes}], got {tuple(scores.shape)}")
    if labels.shape != scores.shape[:1]:
        raise ValueError(f"labels must be [N] with N={scores.shape[0]}, got {tuple(labels.shape)}")
    n = int(scores.shape[0])
    support = torch.bincount(labels.long(), minlength=num_classes) if n else torch.zeros(num_classes, dtype=torch.long)
    if n == 0:
        nan = float("nan")
        return {
            "top1": nan,
            "top5": nan,
            "mean_class_accuracy": nan,
            "per_class_accuracy": [nan] * num_classes,
            "support": support.tolist(),
            "confusion_matrix": torch.zeros(num_classes, num_classes, dtype=torch.long),
        }
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]: "
            "does data.num_classes match the annotation file?"
        )
    scores, labels = scores.float().cpu(), labels.long().cpu()
    # accuracies from integer counts, divided in float64: 32 of 72 is 44.44444444444444 %, not float32's 44.444444775
    confusion = multiclass_confusion_matrix(scores, labels, num_classes)  # rows: true class; prediction = argmax
    hits = confusion.diagonal()  # [K] videos of each class predicted right
    top5_hits = (scores.topk(min(5, num_classes), dim=1).indices == labels[:, None]).any(dim=1)  # [N]
    top5_hits |= scores.argmax(dim=1) == labels  # topk orders ties arbitrarily: a top-1 hit is a top-5 hit
    per_class = hits.double() / support.double()  # NaN (0 / 0) for a class without videos
    return {
        "top1": int(hits.sum()) / n,
        "top5": int(top5_hits.sum()) / n,
        "mean_class_accuracy": float(per_class.nanmean()),
        "per_class_accuracy": per_class.tolist(),
        "support": support.tolist(),
        "confusion_matrix": confusion,
    }


def subset_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], restrict_scores: bool = False
) -> dict[str, float | int]:
    """Top-1 over the videos whose label is in ``classes``.

    With ``restrict_scores`` the prediction is the argmax among ``classes`` only (a k-way task inside the full head,
    e.g. "which of the two temporal orders"); otherwise it is the argmax over all classes.
    """
    classes_t = torch.as_tensor(list(classes), dtype=torch.long)
    keep = torch.isin(labels.long(), classes_t)
    n = int(keep.sum())
    if n == 0:
        return {"top1": math.nan, "num_videos": 0}
    sub_scores, sub_labels = scores[keep].float(), labels[keep].long()
    if restrict_scores:
        pred = classes_t[sub_scores[:, classes_t].argmax(dim=1)]
    else:
        pred = sub_scores.argmax(dim=1)
    return {"top1": int((pred == sub_labels).sum()) / n, "num_videos": n}


def confusion_from_predictions(per_video: Sequence[dict[str, int]], num_classes: int) -> torch.Tensor:
    """Confusion matrix ``[K, K]`` (rows: true class) of the labelled entries of an ``evaluate`` ``per_video`` list."""
    rows = [(v["label"], v["pred"]) for v in per_video if v["label"] >= 0]
    if not rows:
        return torch.zeros(num_classes, num_classes, dtype=torch.long)
    labels, preds = torch.tensor(rows, dtype=torch.long).unbind(dim=1)
    return multiclass_confusion_matrix(preds, labels, num_classes)


def top_confused_pairs(confusion: torch.Tensor, k: int = 20) -> list[tuple[int, int, int]]:
    """The ``k`` largest off-diagonal entries of a confusion matrix as ``(true, predicted, count)``, count > 0."""
    off = confusion.clone().long()
    off.fill_diagonal_(0)
    flat = off.flatten()
    k = min(k, int((flat > 0).sum()))
    if k == 0:
        return []
    counts, where = torch.sort(flat, descending=True, stable=True)  # ties keep (true, predicted) order
    counts, where = counts[:k], where[:k]
    num_classes = confusion.shape[1]
    return [(int(i) // num_classes, int(i) % num_classes, int(c)) for c, i in zip(counts, where, strict=True)]
