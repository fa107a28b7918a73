"""tools/test.py end to end on tiny real videos and a tiny AIM checkpoint: outputs, missing videos, 1 vs 2 ranks."""

import copy
import csv
import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from tests.eval.conftest import tiny_config, write_split, write_tiny_checkpoint
from tests.tools.conftest import PYTHONPATH, REPO

sys.path.insert(0, os.path.join(REPO, "tools"))
import test as test_tool  # noqa: E402  (tools/test.py)

NUM_VIDEOS, CORRUPT, NUM_CLASSES = 7, (3,), 3  # odd: 2 ranks pad one repeat


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    root = str(tmp_path_factory.mktemp("eval_tool"))
    write_split(root, NUM_VIDEOS, NUM_CLASSES, corrupt=CORRUPT)
    cfg = tiny_config(root, NUM_CLASSES)
    cfg.data.test_num_clips = 2
    ckpt_dir = os.path.join(cfg.output_dir, "checkpoints", "step_00000007")
    ckpt = write_tiny_checkpoint(cfg, ckpt_dir)
    with open(os.path.join(cfg.output_dir, "checkpoints", "latest"), "w") as f:
        f.write("step_00000007")
    out = os.path.join(root, "out1")
    assert test_tool.main(["--checkpoint", ckpt_dir, "--out", out, "--save-scores", "--no-progress"]) == 0
    return {"root": root, "cfg": cfg, "ckpt_dir": ckpt_dir, "ckpt": ckpt, "out": out}


def _scores(path: str) -> dict[str, torch.Tensor]:
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_results_json_lists_the_unreadable_video_and_scores_the_rest(run):
    results = json.load(open(os.path.join(run["out"], "results.json")))
    assert [m["index"] for m in results["missing"]] == list(CORRUPT)
    assert results["missing"][0]["path"].endswith("videos/v03.mp4") and results["missing"][0]["reason"]
    assert results["num_evaluated"] == NUM_VIDEOS - 1 and results["dataset_size"] == NUM_VIDEOS
    assert results["checkpoint_sha256"] == hashlib.sha256(open(run["ckpt"], "rb").read()).hexdigest()
    assert results["protocol"]["label"] == "4x2x1" and results["protocol"]["average"] == "prob"
    assert results["config"]["model"]["vit_kwargs"]["depth"] == 2 and results["world_size"] == 1
    scores = _scores(os.path.join(run["out"], "scores.safetensors"))
    assert scores["index"].tolist() == [i for i in range(NUM_VIDEOS) if i not in CORRUPT]  # not substituted
    top1 = (scores["scores"].argmax(1) == scores["label"]).float().mean().item()
    assert results["metrics"]["top1"] == pytest.approx(100 * top1)
    assert results["per_video"][0]["path"].endswith("videos/v00.mp4")
    assert [v["pred"] for v in results["per_video"]] == scores["scores"].argmax(1).tolist()
    assert torch.allclose(scores["scores"].sum(1), torch.ones(NUM_VIDEOS - 1), atol=1e-5)  # mean of softmaxes
    rows = list(csv.DictReader(open(os.path.join(run["out"], "per_class.csv"))))
    assert [int(r["support"]) for r in rows] == [2, 2, 2]  # labels i % 3 of videos 0..6 without video 3
    assert os.path.getsize(os.path.join(run["out"], "confusion.png")) > 10_000


def test_checkpoint_forms_resolve_to_the_same_file(run):
    from aim_video.eval.loading import resolve_checkpoint

    checkpoints = os.path.dirname(run["ckpt_dir"])
    for form in (run["ckpt"], run["ckpt_dir"], checkpoints, os.path.dirname(checkpoints)):
        assert resolve_checkpoint(form) == run["ckpt"]
    with pytest.raises(FileNotFoundError, match="model_trainable.safetensors"):
        resolve_checkpoint(run["root"])


def test_a_checkpoint_pruned_during_the_evaluation_keeps_its_results_and_an_old_scores_file_goes(
    run, tmp_path, monkeypatch
):
    """A training run's keep_last may delete the folder being evaluated: the hash was read after the evaluation, so
    the results were lost. A scores file of an earlier run in the same --out no longer stays beside new results."""
    import shutil

    ckpt_dir = str(tmp_path / "step_00000007")
    shutil.copytree(run["ckpt_dir"], ckpt_dir)
    real = test_tool.evaluate

    def pruned_meanwhile(*args, **kwargs):
        shutil.rmtree(ckpt_dir)
        return real(*args, **kwargs)

    monkeypatch.setattr(test_tool, "evaluate", pruned_meanwhile)
    out = str(tmp_path / "out")
    os.makedirs(out)
    shutil.copy(os.path.join(run["out"], "scores.safetensors"), out)
    assert test_tool.main(["--checkpoint", ckpt_dir, "--out", out, "--no-progress"]) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["checkpoint_sha256"] == hashlib.sha256(open(run["ckpt"], "rb").read()).hexdigest()
    assert not os.path.exists(os.path.join(out, "scores.safetensors"))


def test_strict_fails_on_the_unreadable_video_and_bad_input_exits_2(run, capsys):
    assert test_tool.main(["--checkpoint", run["ckpt"], "--strict", "--no-progress", "--out", run["root"]]) == 3
    assert "v03.mp4" in capsys.readouterr().err
    assert test_tool.main(["--checkpoint", os.path.join(run["root"], "nope")]) == 2
    assert test_tool.main(["--checkpoint", run["ckpt"], "eval.protocl=k400"]) == 2
    assert "eval.protocl" in capsys.readouterr().err


def _two_ranks(*args: str) -> subprocess.CompletedProcess:
    """tools/test.py on 2 ranks (torchrun, gloo)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [os.path.join(REPO, "tools", "test.py"), *args]
    env = {**os.environ, "PYTHONPATH": PYTHONPATH, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # ~30 s: two fresh processes import torch, timm and PyAV
def test_two_ranks_equal_one_rank_exactly(run):
    out2 = os.path.join(run["root"], "out2")
    proc = _two_ranks("--checkpoint", run["ckpt_dir"], "--out", out2, "--save-scores")
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = json.load(open(os.path.join(run["out"], "results.json")))
    two = json.load(open(os.path.join(out2, "results.json")))
    assert two["world_size"] == 2
    for key in ("metrics", "missing", "num_evaluated", "per_video"):
        assert two[key] == one[key], key
    s1, s2 = _scores(os.path.join(run["out"], "scores.safetensors")), _scores(os.path.join(out2, "scores.safetensors"))
    assert torch.equal(s1["index"], s2["index"]) and torch.equal(s1["scores"], s2["scores"])


@pytest.mark.slow  # ~30 s: two fresh processes import torch, timm and PyAV
def test_a_rank_that_fails_alone_stops_every_rank_with_its_status(run):
    """--strict with a video missing on one node only: that rank returned 3 while the others went on into the
    gather of results and waited there (NCCL: the 10-minute timeout; gloo: 'connection closed', exit 1). The ranks
    now agree before evaluating; rank 0 names the rank and the video. Started as `srun` starts them: each rank gets
    its own command line, so rank 1 reads a list whose file is absent."""
    listed = os.path.join(run["root"], "absent_on_rank1.txt")
    with open(os.path.join(run["root"], "val.txt")) as src, open(listed, "w") as dst:
        dst.write(src.read() + "videos/only_on_other_nodes.mp4 1\n")
    codes, errs = _two_srun_ranks(run, "alone", [["--strict"], ["--strict", f"data.val_list={listed}",
                                                                 "data.missing_files=drop"]])  # fmt: skip
    assert codes == [3, 3], errs[0][-2000:]
    assert "error: rank 1: 1 listed videos were left out before evaluation" in errs[0]
    assert "only_on_other_nodes.mp4" in errs[0] and "error:" not in errs[1]


def _two_srun_ranks(run: dict, name: str, args_by_rank: list[list[str]]) -> tuple[list[int], list[str]]:
    """tools/test.py as `srun` starts it: each rank with its own command line; their exit statuses and stderr."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    procs = []
    for rank, extra in enumerate(args_by_rank):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
        env.update(PYTHONPATH=PYTHONPATH, OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="",
                   MASTER_PORT=port, SLURM_STEP_NUM_TASKS="2", SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank),
                   SLURM_STEP_NODELIST="localhost")  # fmt: skip
        cmd = [sys.executable, os.path.join(REPO, "tools", "test.py"), "--checkpoint", run["ckpt"],
               "--no-progress", "--out", os.path.join(run["root"], f"out_{name}{rank}"), *extra]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    errs = [p.communicate(timeout=240)[1] for p in procs]
    return [p.returncode for p in procs], errs


@pytest.mark.slow  # ~30 s: two fresh processes import torch, timm and PyAV
def test_ranks_that_read_other_videos_of_one_count_are_refused_not_scored(run):
    """Each node lacked another file (data.missing_files=drop): the counts matched, the rows were joined by index,
    and the results held other videos' labels, one video twice and one never, with exit status 0."""
    lines = open(os.path.join(run["root"], "val.txt")).read().splitlines()
    lists = []
    for rank, gone in enumerate((1, 4)):
        path = os.path.join(run["root"], f"lacks_v0{gone}.txt")
        with open(path, "w") as f:
            listed = (f"videos/gone_{rank}.mp4 0" if i == gone else line for i, line in enumerate(lines))
            f.write("\n".join(listed) + "\n")
        lists.append([f"data.val_list={path}", "data.missing_files=drop"])
    codes, errs = _two_srun_ranks(run, "other_lists", lists)
    assert codes == [2, 2], errs[0][-2000:]
    assert "the ranks see different videos (as many (6, 6), but not the same ones)" in errs[0]


def test_a_listed_file_that_does_not_exist_is_reported_missing(run, capsys):
    listed = os.path.join(run["root"], "with_absent.txt")
    with open(os.path.join(run["root"], "val.txt")) as src, open(listed, "w") as dst:
        dst.write(src.read() + "videos/absent.mp4 1\n")
    out = os.path.join(run["root"], "out_absent")
    base = ["--checkpoint", run["ckpt"], "--no-progress", f"data.val_list={listed}"]
    assert test_tool.main([*base, "--out", out, "data.missing_files=drop"]) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    absent = [m for m in results["missing"] if m["path"].endswith("absent.mp4")]
    assert len(absent) == 1 and absent[0]["index"] is None and "not found" in absent[0]["reason"]
    assert results["num_missing"] == 2 and results["num_listed"] == NUM_VIDEOS + 1
    assert results["num_evaluated"] == NUM_VIDEOS - 1  # the metrics are over the readable videos only
    assert test_tool.main([*base, "--strict", "data.missing_files=drop"]) == 3
    assert test_tool.main(base) == 2  # data.missing_files=fail (default): the list is rejected, naming the file
    assert "absent.mp4" in capsys.readouterr().err
    # a failed start leaves no empty results folder (nor the parents it made); a folder with results stays
    fresh = os.path.join(run["root"], "new", "deeper")
    assert test_tool.main([*base, "--out", fresh]) == 2 and not os.path.exists(os.path.join(run["root"], "new"))
    assert test_tool.main([*base, "--out", out, "--strict", "data.missing_files=drop"]) == 3
    assert os.path.isfile(os.path.join(out, "results.json"))


def test_a_video_the_verify_report_drops_is_listed_with_its_reason(run, capsys):
    """data.inexact_videos=drop leaves out what a verify report found returning wrong frames: results.json still
    lists it with the report's finding and counts it among the listed videos; --strict refuses."""
    from aim_video.data import verify

    wrong = os.path.join(run["root"], "videos", "v05.mp4")
    report = os.path.join(run["root"], "verify_v05.json")
    backend = run["cfg"].data.backend  # the report must be made for the backend evaluation reads with
    verify.write_report([verify.VideoCheck(wrong, "shifted", backend, reason="3 of 9 checked reads")], report,
                        backend, "exact")  # fmt: skip
    out = os.path.join(run["root"], "out_inexact")
    base = ["--checkpoint", run["ckpt"], "--no-progress", f"data.verify_report={report}"]
    assert test_tool.main([*base, "--out", out, "data.inexact_videos=drop"]) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    left_out = [m for m in results["missing"] if m["index"] is None]
    assert [m["path"] for m in left_out] == [wrong]
    assert "shifted: 3 of 9 checked reads" in left_out[0]["reason"] and "inexact_videos=drop" in left_out[0]["reason"]
    assert results["num_listed"] == NUM_VIDEOS and results["dataset_size"] == NUM_VIDEOS - 1
    assert results["num_missing"] == 2 and results["num_evaluated"] == NUM_VIDEOS - 2  # and the unreadable v03
    assert test_tool.main([*base, "--strict", "data.inexact_videos=drop"]) == 3
    assert f"v05.mp4: returns wrong frames with {backend} (shifted" in capsys.readouterr().err
    assert test_tool.main(base) == 2  # data.inexact_videos=fail (default): refused, naming the video


def test_videos_read_through_the_fallback_are_listed(run, capsys):
    """An AV1 video (decord cannot decode it) is evaluated through PyAV: scored like the others, and named in
    results.json and on the console, so a slow evaluation says why."""
    from aim_video.data import encode
    from tests.eval.conftest import band_video

    encode.write_video(os.path.join(run["root"], "videos", "av1.mkv"), band_video(24), fps=25.0, codec="libsvtav1")
    listed = os.path.join(run["root"], "with_av1.txt")
    with open(listed, "w") as f:
        f.write("videos/v00.mp4 0\nvideos/av1.mkv 0\n")
    out = os.path.join(run["root"], "out_av1")
    args = ["--checkpoint", run["ckpt"], "--no-progress", "--out", out, f"data.val_list={listed}",
            "data.backend=decord", "data.fallback_backend=pyav"]  # fmt: skip
    assert test_tool.main(args) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["num_evaluated"] == 2 and results["num_missing"] == 0 and results["num_fallback_reads"] == 1
    (read,) = results["fallback_reads"]
    assert read["index"] == 1 and read["path"].endswith("videos/av1.mkv")
    assert read["reason"].startswith("read with pyav: decord cannot decode its av1 video")
    assert "(0 missing); 1 read with data.fallback_backend (see fallback_reads)" in capsys.readouterr().out


def test_an_unwritable_out_stops_before_the_evaluation_and_nothing_readable_is_an_error(run, capsys):
    blocker = os.path.join(run["root"], "a_file")
    open(blocker, "w").close()
    assert test_tool.main(["--checkpoint", run["ckpt"], "--no-progress", "--out", os.path.join(blocker, "x")]) == 2
    err = capsys.readouterr().err  # before any video was read: the folder, the reason and the flag to change
    assert "a_file" in err and "Not a directory" in err and "choose another --out" in err
    only_bad = os.path.join(run["root"], "only_bad.txt")
    with open(only_bad, "w") as f:
        f.write("videos/v03.mp4 0\n")
    out = os.path.join(run["root"], "out_bad")
    args = ["--checkpoint", run["ckpt"], "--no-progress", "--out", out, f"data.val_list={only_bad}"]
    assert test_tool.main(args) == 3
    assert "none of the 1 listed videos could be read" in capsys.readouterr().err
    assert json.load(open(os.path.join(out, "results.json")))["num_evaluated"] == 0
    unlabelled = os.path.join(run["root"], "unlabelled.txt")  # predicted, not scored: a success, not 'nothing read'
    with open(unlabelled, "w") as f:
        f.write("videos/v00.mp4\nvideos/v01.mp4 -1\n")
    args = ["--checkpoint", run["ckpt"], "--no-progress", "--out", out, "--split", "test"]
    capsys.readouterr()
    assert not os.path.exists(os.path.join(out, "per_class.csv"))  # nothing scored: no empty class statistics
    for name in ("per_class.csv", "confusion.png"):  # an earlier labelled evaluation's: they would read as this one's
        open(os.path.join(out, name), "w").close()
    assert test_tool.main([*args, f"data.test_list={unlabelled}"]) == 0
    assert not {"per_class.csv", "confusion.png"} & set(os.listdir(out))
    unscored = json.load(open(os.path.join(out, "results.json")))
    assert unscored["num_unlabelled"] == 2 and [v["pred_name"] for v in unscored["per_video"]] == [
        str(v["pred"]) for v in unscored["per_video"]]  # fmt: skip  (this checkpoint's classes are named 0, 1, 2)
    assert "over 0 of 2 videos (0 missing); 2 unlabelled: predicted, not scored" in capsys.readouterr().out


def test_default_results_go_into_the_run_folder_the_weights_are_in(tmp_path, monkeypatch):
    """Results went under the output_dir the weights' config names: an older run's relative one under whatever folder
    test.py ran from, a moved run's old folder recreated, a copied checkpoint's results into the other run's folder."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "somewhere" / "runs" / "v64"
    assert test_tool._default_out(str(run_dir / "model_trainable.safetensors"), "val") == str(
        run_dir / "eval" / "export-val"
    )
    step = run_dir / "checkpoints" / "step_00000004" / "trainable.safetensors"
    assert test_tool._default_out(str(step), "test") == str(run_dir / "eval" / "step_00000004-test")
    assert test_tool._default_out("runs/v64/model_trainable.safetensors", "val") == str(
        tmp_path / "runs" / "v64" / "eval" / "export-val"
    )
    # a step folder copied alone, or checkpoints/ given by its link's target: beside the step folder, never in it
    alone = tmp_path / "u" / "step_00000004" / "trainable.safetensors"
    assert test_tool._default_out(str(alone), "val") == str(tmp_path / "u" / "eval" / "step_00000004-val")
    # a step's file copied alone: beside it, as an export (it went two folders up, to the file system's root)
    assert test_tool._default_out(str(tmp_path / "u" / "trainable.safetensors"), "val") == str(
        tmp_path / "u" / "eval" / "export-val"
    )


def test_an_evaluation_into_the_default_folder_says_it_replaces_earlier_results(run, capsys):
    """The default folder is named by the weights and the split only: another list or setting replaced the results
    without a word."""
    args = ["--checkpoint", run["ckpt"], "--no-progress"]
    assert test_tool.main(args) == 0
    assert "replacing the results" not in capsys.readouterr().err
    assert test_tool.main([*args, "eval.view_chunk=2"]) == 0
    assert "note: replacing the results of an earlier evaluation in" in capsys.readouterr().err


def test_a_failed_evaluation_leaves_no_results_folder_with_stored_class_names(run, tmp_path, capsys):
    """Weights evaluated where the config names no classes get the stored names written into the results folder;
    a failure then left that folder behind with only classes.txt in it."""
    ckpt = write_tiny_checkpoint(run["cfg"], str(tmp_path / "named"), classes=["a", "b", "c"][:NUM_CLASSES])
    out = str(tmp_path / "made" / "here")
    args = ["--checkpoint", ckpt, "--out", out, "--no-progress", "data.class_map=",
            f"data.val_list={tmp_path / 'no_such_list.txt'}"]  # fmt: skip
    assert test_tool.main(args) == 2 and "no_such_list.txt" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "made")
    # into a folder that exists (--out of the user's, or a default folder of an earlier evaluation): classes.txt stayed
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("the user's")
    assert test_tool.main([*args[:3], str(existing), *args[4:]]) == 2
    assert os.listdir(existing) == ["notes.txt"]
    # an earlier evaluation's classes.txt there stays with its results
    (existing / "classes.txt").write_text("a\nb\n")
    assert test_tool.main([*args[:3], str(existing), *args[4:]]) == 2
    assert sorted(os.listdir(existing)) == ["classes.txt", "notes.txt"]


def test_a_failed_evaluation_leaves_what_another_wrote_into_its_new_folder(run, tmp_path, monkeypatch, capsys):
    """Two evaluations into one new default folder: the one that fails removed the folder with the other's files."""
    def other_writes_then_fails(cfg, split, rank, world_size):
        with open(os.path.join(out, "another_runs_scores.safetensors"), "w") as f:
            f.write("x")
        raise FileNotFoundError("no_such_list.txt")

    out = str(tmp_path / "shared")
    monkeypatch.setattr(test_tool, "build_eval_loader", other_writes_then_fails)
    assert test_tool.main(["--checkpoint", run["ckpt"], "--out", out, "--no-progress"]) == 2
    assert os.listdir(out) == ["another_runs_scores.safetensors"]


def test_a_config_of_another_model_is_named_as_the_cause_of_a_class_count_mismatch(run, tmp_path, capsys):
    """--config of another recipe ended in 'the class map lists 3 classes, model.num_classes is 5' without saying
    that the config, not the class map, was the other model's."""
    from aim_video.config import save_config

    other = copy.deepcopy(run["cfg"])
    other.model.num_classes = other.data.num_classes = 5
    names = tmp_path / "classes.txt"
    names.write_text("a\nb\nc\n")
    other.data.class_map = str(names)
    save_config(other, str(tmp_path))
    args = ["--checkpoint", run["ckpt"], "--config", str(tmp_path / "config.yaml"), "--out", str(tmp_path / "o")]
    assert test_tool.main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "the class map lists 3 classes, model.num_classes is 5 (from --config " in err
    assert "the weights were trained with model.num_classes=3: leave out --config" in err


def test_eval_strict_in_the_config_is_strict_like_the_flag(run, capsys):
    """eval.strict=true (a config value, as a recipe sets it) must refuse the unreadable video as --strict does."""
    out = os.path.join(run["root"], "out_cfg_strict")
    assert test_tool.main(["--checkpoint", run["ckpt"], "--no-progress", "--out", out, "eval.strict=true"]) == 3
    assert "v03.mp4" in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "results.json"))


def test_eval_save_scores_in_the_config_writes_the_scores_like_the_flag(run):
    out = os.path.join(run["root"], "out_cfg_scores")
    assert test_tool.main(["--checkpoint", run["ckpt"], "--no-progress", "--out", out, "eval.save_scores=true"]) == 0
    assert os.path.isfile(os.path.join(out, "scores.safetensors"))
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["num_evaluated"] == 6


def test_results_of_nothing_readable_keep_the_stored_class_names_they_name(run, tmp_path):
    """Status 3 (no listed video could be read) comes after results.json is written: the classes.txt written for
    those results is part of them and must stay (results.json's config names it as data.class_map)."""
    ckpt = write_tiny_checkpoint(run["cfg"], str(tmp_path / "named"), classes=["a", "b", "c"][:NUM_CLASSES])
    only_bad = tmp_path / "only_bad.txt"
    only_bad.write_text("videos/v03.mp4 0\n")
    out = str(tmp_path / "out")
    args = ["--checkpoint", ckpt, "--out", out, "--no-progress", "data.class_map=", f"data.val_list={only_bad}"]
    assert test_tool.main(args) == 3
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["num_evaluated"] == 0
    assert results["config"]["data"]["class_map"] == os.path.join(out, "classes.txt")
    assert open(os.path.join(out, "classes.txt")).read().split() == ["a", "b", "c"]


@pytest.mark.slow  # ~30 s: two fresh processes import torch, timm and PyAV
def test_two_ranks_print_and_write_the_results_once(run):
    """Only rank 0 writes the results and prints the summary: other ranks return after the gather."""
    out2 = os.path.join(run["root"], "out2_once")
    proc = _two_ranks("--checkpoint", run["ckpt"], "--out", out2, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(f"results: {out2}") == 1, proc.stdout[-2000:]
    assert proc.stdout.count("val [") == 1
    assert json.load(open(os.path.join(out2, "results.json")))["world_size"] == 2
