import csv
import hashlib
import json
import os
import stat

import matplotlib.image
import torch
from safetensors import safe_open

from aim_video.config import Config, to_dict
from aim_video.eval.multiview import evaluate
from aim_video.eval.report import (
    plot_confusion,
    results_record,
    sha256_file,
    write_per_class_csv,
    write_results_json,
    write_scores,
)
from tests.eval.conftest import SyntheticViews, TinyClassifier, synthetic_loader


def _result(num_classes: int = 4):
    cfg = Config()
    cfg.model.num_classes = num_classes
    cfg.data.test_num_clips, cfg.data.test_num_crops = 1, 3
    dataset = SyntheticViews(size=7, num_views=3, num_classes=num_classes, broken=(2,))
    return cfg, evaluate(
        TinyClassifier(num_classes), synthetic_loader(dataset, 3), cfg, "cpu", progress=False, return_scores=True
    )


def test_results_json_lists_the_missing_video_and_scores_the_rest(tmp_path):
    cfg, result = _result(num_classes=8)  # classes 7 has no video: NaN accuracy must become null
    ckpt = tmp_path / "model_trainable.safetensors"
    ckpt.write_bytes(b"weights")
    record = results_record(result, to_dict(cfg), str(ckpt), sha256_file(str(ckpt)), split="val")
    path = write_results_json(record, str(tmp_path / "out" / "results.json"))
    loaded = json.loads(open(path).read())
    assert loaded["missing"] == [{"index": 2, "path": "videos/002.mp4", "reason": "cannot decode: moov atom not found"}]
    assert loaded["num_evaluated"] == 6 and loaded["dataset_size"] == 7 and loaded["num_missing"] == 1
    assert loaded["checkpoint_sha256"] == hashlib.sha256(b"weights").hexdigest()
    assert loaded["metrics"]["per_class_acc"][7] is None
    assert loaded["top5_of_k"] == 5  # 8 classes; with 3 it says top-5 is top-3 (always 100 %)
    _, few = _result(num_classes=3)
    assert results_record(few, to_dict(cfg), str(ckpt), "0" * 64, split="val")["top5_of_k"] == 3
    assert loaded["protocol"]["num_crops"] == 3 and loaded["config"]["model"]["num_classes"] == 8
    assert loaded["metrics"]["top1"] == result["top1"] and loaded["per_video"] == result["per_video"]
    assert [v["index"] for v in loaded["per_video"]] == [0, 1, 3, 4, 5, 6]
    assert not list((tmp_path / "out").glob("*.tmp*"))


def test_per_class_csv_rows_match_the_confusion_matrix(tmp_path):
    """Each row's accuracy and most-confused class are its own: a writer that put class 0's accuracy on every row,
    or named the least (not the most) confused class, passed when every row read alike."""
    _, result = _result()
    names = ["walk", "run", "jump", "swim"]
    rows = list(csv.DictReader(open(write_per_class_csv(result, names, str(tmp_path / "per_class.csv")))))
    cm = result["confusion_matrix"]
    assert [r["class_name"] for r in rows] == names
    for k, row in enumerate(rows):
        assert int(row["support"]) == int(cm[k].sum()) and int(row["correct"]) == int(cm[k, k])
    assert sum(int(r["support"]) for r in rows) == 6
    # a matrix whose rows differ in accuracy and in their (single, untied) largest off-diagonal entry
    cm = torch.tensor([[3, 1, 2, 0], [0, 2, 0, 1], [4, 0, 1, 0], [0, 0, 0, 2]])
    per_video = [{"index": 0, "label": -1, "pred": 1}]  # unlabelled: counted nowhere
    per_video += [{"index": 0, "label": t, "pred": p} for t in range(4) for p in range(4) for _ in range(int(cm[t, p]))]
    per_class_acc = [100 * int(cm[k, k]) / int(cm[k].sum()) for k in range(4)]
    path = write_per_class_csv({"per_video": per_video, "per_class_acc": per_class_acc}, names, str(tmp_path / "b.csv"))
    rows = list(csv.DictReader(open(path)))
    assert [(int(r["support"]), int(r["correct"])) for r in rows] == [(6, 3), (3, 2), (5, 1), (2, 2)]
    assert [r["accuracy"] for r in rows] == ["50.00", "66.67", "20.00", "100.00"]
    confused = [(r["most_confused_with"], r["count"]) for r in rows]
    assert confused == [("jump", "2"), ("swim", "1"), ("walk", "4"), ("", "")]  # the row's off-diagonal maximum


def test_confusion_png_at_400_classes(tmp_path):
    g = torch.Generator().manual_seed(0)
    cm = torch.diag(torch.full((400,), 40)) + torch.randint(0, 3, (400, 400), generator=g) * (
        torch.rand(400, 400, generator=g) < 0.01
    )
    cm[17, 212] = 25  # the most confused pair
    path = plot_confusion(cm, [f"class_{i}" for i in range(400)], str(tmp_path / "confusion.png"))
    image = matplotlib.image.imread(path)
    assert image.shape[:2] == (1000, 2000)


def test_scores_file_round_trips(tmp_path):
    _, result = _result()
    previous = os.umask(0o022)
    try:
        path = write_scores(result, str(tmp_path / "scores.safetensors"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # safetensors alone writes 0600: unreadable to the group
    with safe_open(path, framework="pt") as f:
        assert torch.equal(f.get_tensor("index"), result["scores"]["index"])
        assert torch.equal(f.get_tensor("scores"), result["scores"]["scores"])
        assert json.loads(f.metadata()["protocol"])["num_views"] == 3
        assert "paths" not in f.metadata()
    index = result["scores"]["index"].tolist()
    names = [f"v{i}.mp4" for i in range(max(index) + 1)]
    with safe_open(write_scores(result, str(tmp_path / "named.safetensors"), paths=names), framework="pt") as f:
        assert json.loads(f.metadata()["paths"]) == [names[i] for i in index]  # each row's video, by name


def test_results_record_joins_dropped_videos_paths_and_predicted_names(tmp_path, monkeypatch) -> None:
    """Dropped entries join 'missing' (and num_missing); per_video gets path by index, pred_name by prediction."""
    from aim_video.config import Config, to_dict
    from aim_video.eval.multiview import evaluate
    from aim_video.eval.report import results_record
    from tests.eval.conftest import SyntheticViews, TinyClassifier, synthetic_loader

    cfg = Config()
    cfg.model.num_classes = 4
    cfg.data.test_num_clips, cfg.data.test_num_crops = 1, 3
    dataset = SyntheticViews(size=7, num_views=3, num_classes=4, broken=(2,))
    result = evaluate(TinyClassifier(4), synthetic_loader(dataset, 3), cfg, "cpu", progress=False)
    paths = [f"v{i}.mp4" for i in range(7)]
    names = ["walk", "run", "jump", "swim"]
    monkeypatch.chdir(tmp_path)
    record = results_record(result, to_dict(cfg), "w.safetensors", "0" * 64, "val",
                            dropped=[("gone.mp4", "missing file")], paths=paths, names=names)  # fmt: skip
    assert record["checkpoint"] == str(tmp_path / "w.safetensors")
    assert record["num_missing"] == 2 and record["num_listed"] == 8
    assert {"index": None, "path": "gone.mp4", "reason": "missing file"} in record["missing"]
    for v in record["per_video"]:
        assert v["path"] == paths[v["index"]] and v["pred_name"] == names[v["pred"]]
    assert any(v["pred"] != v["index"] for v in record["per_video"])  # index and pred differ somewhere
    assert any(v["pred"] != v["label"] for v in record["per_video"])  # a wrong prediction: pred_name is not the label's
