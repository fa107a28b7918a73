"""tools/infer.py: top-k class names with probabilities for one video, equal to what evaluation computes for it."""

import os
import shutil
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
    ckpt = write_tiny_checkpoint(cfg, os.path.join(root, "run"), classes=CLASSES)  # names stored, as training does
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


def test_an_override_before_the_video_is_an_override(run):
    """`infer.py eval.protocol=k400 video.mp4 ...` took the override for the video and the video for an override."""
    video = os.path.join(run["root"], "videos", "v01.mp4")
    args = infer_tool.parse_args(["eval.view_chunk=3", video, "--checkpoint", run["ckpt"], "data.num_threads=1"])
    assert args.video == video and args.overrides == ["eval.view_chunk=3", "data.num_threads=1"]
    with pytest.raises(SystemExit):  # two videos
        infer_tool.parse_args([video, video, "--checkpoint", run["ckpt"]])


def test_unreadable_or_absent_video_and_bad_class_map(run, capsys):
    bad = os.path.join(run["root"], "videos", "v02.mp4")
    assert infer_tool.main([bad, "--checkpoint", run["ckpt"]]) == 1
    assert "cannot read the video" in capsys.readouterr().err
    assert infer_tool.main([os.path.join(run["root"], "none.mp4"), "--checkpoint", run["ckpt"]]) == 1
    short_map = os.path.join(run["root"], "two.txt")
    with open(short_map, "w") as f:
        f.write("a\nb\n")
    assert infer_tool.main([bad, "--checkpoint", run["ckpt"], "--class-map", short_map]) == 2
    assert f"--class-map: 2 classes, but {run['ckpt']} was trained with 3: give" in capsys.readouterr().err
    # the right count in another order named every prediction wrongly; it is checked as data.class_map is
    reordered = os.path.join(run["root"], "reordered.txt")
    with open(reordered, "w") as f:
        f.write("\n".join(CLASSES[::-1]) + "\n")
    video = os.path.join(run["root"], "videos", "v00.mp4")
    assert infer_tool.main([video, "--checkpoint", run["ckpt"], "--class-map", reordered]) == 2
    err = capsys.readouterr().err
    assert "was trained with other class numbers" in err and "Set --class-map to the class map" in err


def test_a_list_file_or_folder_is_refused_naming_tools_test(run, capsys):
    """A list file was decoded as if it were a video; infer.py classifies one video, tools/test.py evaluates lists."""
    listing = os.path.join(run["root"], "val.txt")
    with open(listing, "w") as f:
        f.write("videos/v01.mp4 1\n")
    for target in (listing, os.path.join(run["root"], "videos")):
        with pytest.raises(SystemExit) as stop:
            infer_tool.main([target, "--checkpoint", run["ckpt"]])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and "one video file" in err and "tools/test.py" in err and target in err


@pytest.mark.parametrize("k", ["0", "-1"])
def test_top_k_below_one_is_an_argument_error(run, capsys, k):
    """--top-k -1 crashed with a traceback and --top-k 0 printed only a header."""
    video = os.path.join(run["root"], "videos", "v01.mp4")
    with pytest.raises(SystemExit) as stop:
        infer_tool.main([video, "--checkpoint", run["ckpt"], "--top-k", k])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "--top-k" in err and f"must be 1 or more, got {k}" in err


def test_top_k_beyond_the_classes_shows_all_of_them_and_says_so(run, capsys):
    video = os.path.join(run["root"], "videos", "v01.mp4")
    assert infer_tool.main([video, "--checkpoint", run["ckpt"], "--class-map", run["classes"], "--top-k", "10"]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1 + len(CLASSES)
    assert "--top-k 10 is more than the model's 3 classes" in err
    assert infer_tool.main([video, "--checkpoint", run["ckpt"], "--class-map", run["classes"]]) == 0  # default 5
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1 + len(CLASSES) and "--top-k" not in err  # not asked for: no note


def test_a_missing_class_map_names_the_option_and_the_path(run, capsys):
    video = os.path.join(run["root"], "videos", "v01.mp4")
    missing = os.path.join(run["root"], "no_such_classes.txt")
    with pytest.raises(SystemExit) as stop:
        infer_tool.main([video, "--checkpoint", run["ckpt"], "--class-map", missing])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"--class-map {missing}: no such file" in err


def test_weights_moved_without_the_class_map_use_the_names_they_store(run, capsys, caplog):
    """The stored config names the training machine's class map: infer.py exited 2 on any other machine although
    the weights file holds the class names."""
    video = os.path.join(run["root"], "videos", "v01.mp4")
    gone = os.path.join(run["root"], "moved_away.txt")
    assert infer_tool.main([video, "--checkpoint", run["ckpt"], f"data.class_map={gone}"]) == 0
    out = capsys.readouterr().out
    assert any(name in out for name in CLASSES) and "using the 3 class names stored in" in caplog.text


def test_a_backbone_file_that_does_not_fit_is_status_2_not_a_traceback(run, tmp_path, capsys):
    from safetensors.torch import save_file

    misfit = str(tmp_path / "other.safetensors")
    save_file({"blocks.0.norm1.weight": torch.ones(3)}, misfit)
    video = os.path.join(run["root"], "videos", "v00.mp4")
    assert infer_tool.main([video, "--checkpoint", run["ckpt"], f"model.pretrained={misfit}"]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_the_verify_report_applies_to_the_video_as_in_evaluation(run, capsys):
    """A video the config's verify report found returning wrong frames is refused (or dropped: nothing to classify)
    under data.inexact_videos=fail / drop, and classified under keep, as evaluation would."""
    from aim_video.data import verify

    video = os.path.join(run["root"], "videos", "v01.mp4")
    report = os.path.join(run["root"], "verify_v01.json")
    backend = run["cfg"].data.backend
    verify.write_report([verify.VideoCheck(video, "shifted", backend, reason="2 of 9 reads")], report, backend, "exact")
    base = [video, "--checkpoint", run["ckpt"], f"data.verify_report={report}"]
    assert infer_tool.main(base) == 1
    assert "return wrong frames" in capsys.readouterr().err
    assert infer_tool.main([*base, "data.inexact_videos=drop"]) == 1
    assert f"returns wrong frames with {backend} (shifted: 2 of 9 reads)" in capsys.readouterr().err
    assert infer_tool.main([*base, "data.inexact_videos=keep"]) == 0


def test_a_model_error_is_not_reported_as_an_unreadable_video(run, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(infer_tool, "forward_views", out_of_memory)
    video = os.path.join(run["root"], "videos", "v01.mp4")
    with pytest.raises(torch.OutOfMemoryError, match="CUDA out of memory"):  # its own traceback, not "cannot read"
        infer_tool.main([video, "--checkpoint", run["ckpt"]])


@pytest.mark.parametrize(
    "env",
    [
        {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"},  # the deepspeed launcher (adds --local_rank), torchrun
        {"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "2", "SLURM_STEP_NODELIST": "n1"},  # srun
    ],
)
def test_several_processes_are_refused_with_a_clear_message(run, capsys, monkeypatch, env):
    """Under a launcher infer.py stopped on --local_rank (exit 2, 'unrecognized arguments'); under srun or torchrun
    every process classified the same video on cuda:0."""
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    video = os.path.join(run["root"], "videos", "v01.mp4")
    with pytest.raises(SystemExit) as stop:
        infer_tool.main([video, "--checkpoint", run["ckpt"], "--local_rank=1"])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "infer.py classifies one video in one process, but this is one of" in err and "tools/test.py" in err
    assert "unrecognized arguments" not in err


def test_local_rank_is_accepted_in_a_world_of_one(run, capsys, monkeypatch):
    for key in ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(key, raising=False)
    video = os.path.join(run["root"], "videos", "v01.mp4")
    assert infer_tool.main([video, "--checkpoint", run["ckpt"], "--class-map", run["classes"], "--local_rank=0"]) == 0


def test_a_video_whose_name_looks_like_an_override_is_the_video(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(os.path.join(run["root"], "videos", "v01.mp4"), tmp_path / "take=2.mp4")
    # data.read_timeout_s=0: the guarded reader's child, forked by an earlier test in another folder, would resolve
    # the relative path in that folder (aim_video/data/watchdog.py GuardedReader passes the path as given)
    args = ["take=2.mp4", "--checkpoint", run["ckpt"], "--class-map", run["classes"], "data.read_timeout_s=0"]
    assert infer_tool.main(args) == 0
    assert capsys.readouterr().out.startswith("take=2.mp4 (2 clips x 3 crops")


def test_a_verify_report_that_is_not_there_is_status_2(run, capsys):
    video = os.path.join(run["root"], "videos", "v01.mp4")
    gone = os.path.join(run["root"], "no_such_report.json")
    assert infer_tool.main([video, "--checkpoint", run["ckpt"], f"data.verify_report={gone}"]) == 2
    err = capsys.readouterr().err
    assert "no_such_report.json" in err and "cannot read the video" not in err


def test_score_averaging_prints_probabilities(run, capsys):
    """eval.average=score: the softmax of the mean logits, so the three classes' numbers are probabilities."""
    video = os.path.join(run["root"], "videos", "v01.mp4")
    args = [video, "--checkpoint", run["ckpt"], "--class-map", run["classes"], "eval.average=score"]
    assert infer_tool.main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "score averaging" in lines[0] and len(lines) == 4
    probs = [float(line.split()[-1]) for line in lines[1:]]
    assert all(0 <= p <= 1 for p in probs) and sum(probs) == pytest.approx(1, abs=1e-3)
    assert probs == sorted(probs, reverse=True)


def test_five_classes_are_shown_by_default(tmp_path, capsys):
    root = str(tmp_path)
    write_split(root, num_videos=1, num_classes=7, num_frames=16)
    cfg = tiny_config(root, num_classes=7)
    ckpt = write_tiny_checkpoint(cfg, os.path.join(root, "run"))
    video = os.path.join(root, "videos", "v00.mp4")
    assert infer_tool.main([video, "--checkpoint", ckpt]) == 0
    out, err = capsys.readouterr()
    assert len(out.strip().splitlines()) == 1 + 5 and "--top-k" not in err
