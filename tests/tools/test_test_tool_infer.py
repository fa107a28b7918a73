"""tools/infer.py: top-k class names with probabilities for one video, equal to what evaluation computes for it."""

import os
import sys

import pytest
import torch

from aim_video.data.loader import build_eval_loader
from aim_video.eval.loading import load_model
from aim_video.eval.multiview import apply_protocol, evaluate
from tests.eval.conftest import tiny_config, write_split, write_tiny_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))
import infer as infer_tool  # noqa: E402  (tools/infer.py)

CLASSES = ["square growing", "square shrinking", "moving horizontally"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = str(tmp_path_factory.mktemp("infer_tool"))
    write_split(root, num_videos=3, num_classes=3, corrupt=(2,))
    with open(os.path.join(root, "classes.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    cfg = tiny_config(root, num_classes=3)
    cfg.data.test_num_clips, cfg.data.test_num_crops = 2, 3
    ckpt = write_tiny_checkpoint(cfg, os.path.join(root, "run"))
    return {"root": root, "cfg": cfg, "ckpt": ckpt, "classes": os.path.join(root, "classes.txt")}


def test_prints_top_k_names_with_the_evaluation_probabilities(run, capsys):
    video = os.path.join(run["root"], "videos", "v01.mp4")
    assert infer_tool.main([video, "--checkpoint", run["ckpt"], "--class-map", run["classes"], "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "2 clips x 3 crops" in lines[0] and len(lines) == 3
    printed = {line[4:44].strip(): float(line.split()[-1]) for line in lines[1:]}

    cfg = run["cfg"]
    apply_protocol(cfg)
    model = load_model(cfg, run["ckpt"], torch.device("cpu"))
    result = evaluate(model, build_eval_loader(cfg, "val"), cfg, progress=False, return_scores=True)
    row = result["scores"]["index"].tolist().index(1)
    probs = result["scores"]["scores"][row]  # prob averaging: mean of per-view softmax
    top = probs.topk(2)
    assert list(printed) == [CLASSES[k] for k in top.indices.tolist()]
    assert list(printed.values()) == pytest.approx(top.values.tolist(), abs=1e-4)


def test_unreadable_or_absent_video_and_bad_class_map(run, capsys):
    bad = os.path.join(run["root"], "videos", "v02.mp4")
    assert infer_tool.main([bad, "--checkpoint", run["ckpt"]]) == 1
    assert "cannot read the video" in capsys.readouterr().err
    assert infer_tool.main([os.path.join(run["root"], "none.mp4"), "--checkpoint", run["ckpt"]]) == 1
    short_map = os.path.join(run["root"], "two.txt")
    with open(short_map, "w") as f:
        f.write("a\nb\n")
    assert infer_tool.main([bad, "--checkpoint", run["ckpt"], "--class-map", short_map]) == 2
    assert "2 classes" in capsys.readouterr().err
