import math

import pytest
import torch

from aim_video.eval.metrics import compute_metrics, subset_accuracy, top_confused_pairs


def _scores(preds_ranked: list[list[int]], num_classes: int) -> torch.Tensor:
    """Scores whose descending order per row is `preds_ranked[i]` followed by the other classes."""
    rows = []
    for ranked in preds_ranked:
        row = torch.zeros(num_classes)
        for rank, cls in enumerate(ranked):
            row[cls] = float(num_classes - rank)
        rows.append(row)
    return torch.stack(rows)


def test_hand_computed_accuracies():
    # 6 classes, 5 videos; labels 0,0,1,2,2 (classes 3..5 have no video)
    labels = torch.tensor([0, 0, 1, 2, 2])
    scores = _scores([[0], [1, 0], [1], [3, 4, 5, 0, 1, 2], [2]], 6)
    m = compute_metrics(scores, labels, 6)
    assert m["top1"] == pytest.approx(3 / 5)  # videos 0, 2, 4
    assert m["top5"] == pytest.approx(4 / 5)  # video 3 has its label ranked 6th
    per_class = m["per_class_accuracy"]
    assert per_class[:3] == pytest.approx([0.5, 1.0, 0.5])
    assert all(math.isnan(x) for x in per_class[3:])
    assert m["mean_class_accuracy"] == pytest.approx((0.5 + 1.0 + 0.5) / 3)  # over classes present only
    assert m["support"] == [2, 1, 2, 0, 0, 0]
    cm = m["confusion_matrix"]
    assert cm.shape == (6, 6) and int(cm.sum()) == 5
    assert cm[0, 0] == 1 and cm[0, 1] == 1 and cm[1, 1] == 1 and cm[2, 3] == 1 and cm[2, 2] == 1


def test_top5_with_fewer_than_five_classes_and_empty_input():
    m = compute_metrics(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([0, 0]), 2)
    assert m["top1"] == pytest.approx(0.5) and m["top5"] == pytest.approx(1.0)
    empty = compute_metrics(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 3)
    assert math.isnan(empty["top1"]) and int(empty["confusion_matrix"].sum()) == 0


def test_a_top1_hit_among_tied_scores_is_a_top5_hit():
    """Six or more classes tied at the maximum (a fresh head): top-1 takes the first, topk any five of them."""
    scores = torch.zeros(2, 10)  # row 0: all ten tied, argmax 0 = its label; topk picks five of the ten
    scores[1, 4] = 1.0
    m = compute_metrics(scores, torch.tensor([0, 4]), 10)
    assert m["top1"] == pytest.approx(1.0) and m["top5"] == pytest.approx(1.0)


def test_bad_labels_and_shapes_are_named():
    with pytest.raises(ValueError, match="num_classes"):
        compute_metrics(torch.zeros(2, 3), torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        compute_metrics(torch.zeros(2, 3), torch.tensor([0, 1]), 4)


def test_subset_accuracy_full_and_restricted_argmax():
    scores = torch.tensor([[0.5, 0.3, 0.2], [0.6, 0.1, 0.3], [0.1, 0.2, 0.7], [0.9, 0.05, 0.05]])
    labels = torch.tensor([1, 2, 2, 0])
    # videos with labels in {1, 2}: rows 0..2; argmax over all classes: 0, 0, 2 -> 1 of 3
    assert subset_accuracy(scores, labels, [1, 2]) == {"top1": pytest.approx(1 / 3), "num_videos": 3}
    # argmax among {1, 2} only: 1, 2, 2 -> 3 of 3
    assert subset_accuracy(scores, labels, [1, 2], restrict_scores=True)["top1"] == pytest.approx(1.0)
    assert subset_accuracy(scores, labels, [5])["num_videos"] == 0


def test_top_confused_pairs_orders_off_diagonal_counts():
    cm = torch.tensor([[9, 3, 0], [1, 7, 5], [3, 0, 4]])
    assert top_confused_pairs(cm, k=3) == [(1, 2, 5), (0, 1, 3), (2, 0, 3)]
    assert top_confused_pairs(torch.eye(3, dtype=torch.long)) == []


def test_accuracies_are_exact_fractions_not_float32():
    """32 of 72 right was reported as top1 44.44444477558136 (float32); it is 44.44444444444444 (32 / 72 * 100)."""
    labels = torch.arange(72) % 3  # 24 videos per class
    right = torch.zeros(72, dtype=torch.bool)
    right[torch.tensor([i for c, k in ((0, 10), (1, 11), (2, 11)) for i in range(c, 72, 3)[:k]])] = True  # 32
    scores = torch.nn.functional.one_hot(torch.where(right, labels, (labels + 1) % 3), 3).float()
    m = compute_metrics(scores, labels, 3)
    assert m["top1"] == 32 / 72 and str(100 * m["top1"]) == "44.44444444444444"
    assert m["per_class_accuracy"] == [10 / 24, 11 / 24, 11 / 24]
    assert m["mean_class_accuracy"] == pytest.approx((10 / 24 + 11 / 24 + 11 / 24) / 3, rel=1e-15, abs=0)
    assert m["top5"] == 1.0
    sub = subset_accuracy(scores, labels, [1, 2])
    assert sub["top1"] == 22 / 48 and sub["num_videos"] == 48
