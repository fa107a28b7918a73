"""The whole aim-video pipeline on the embedded demo data, on CPU, in a few minutes.

    python tools/demo.py [--config configs/demo.yaml] [--nproc 2] [--skip-profile] [key=value ...]

1. writes the demo dataset (real h264 mp4s, Kinetics CSV, list files) under data/demo unless it is there already;
2. trains a tiny image-pretrained frozen ViT with AIM adapters through the `deepspeed` launcher (2 ranks, gloo);
3. evaluates the exported trainable weights with multi-view testing on the val split (tools/test.py, 2 ranks);
4. profiles loader and model throughput (tools/profile.py, short settings);
5. ends with one JSON line: top-1, top-5, mean-class and temporal-order pairs' accuracy (percent), clips/s, paths.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# run from a checkout: the repo root on the path, tools/ off it (tools/profile.py would shadow the stdlib profile)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, REPO)

from aim_video.compare import pair_accuracy  # noqa: E402
from aim_video.config import config_cli_main  # noqa: E402
from aim_video.data.demo_data import CLASSES, TEMPORAL_PAIRS, generate  # noqa: E402
from aim_video.engine.distributed import free_port  # noqa: E402


def run(cmd: list[str], env: dict[str, str], what: str) -> None:
    print(f"[demo] {what}: {' '.join(cmd)}", flush=True)
    proc = subprocess.run(cmd, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"[demo] error: {what} failed with exit status {proc.returncode} (see the output above)")


def launcher(nproc: int, script: str) -> list[str]:
    """`deepspeed` on N local ranks, or a plain process for one."""
    if nproc <= 1:
        return [sys.executable, script]
    deepspeed = shutil.which("deepspeed", path=os.path.dirname(sys.executable)) or shutil.which("deepspeed")
    if deepspeed is None:
        raise SystemExit("[demo] error: the `deepspeed` launcher is not on PATH; run tools/setup.sh first")
    return [deepspeed, "--num_gpus", str(nproc), "--master_port", str(free_port()), script]  # two demos: two ports


DEMO_MARKER = ".aim_video_demo"  # written into the demo's run folder: only such a folder is ever removed


def clear_run_folder(folder: str) -> None:
    """Start the demo's run folder afresh, marked as the demo's: remove it only when it is empty or a previous demo
    run (its marker), never anything else that `output_dir` happens to name (a real training run, the checkout)."""
    if os.path.isdir(folder):
        path = os.path.realpath(folder)
        if path == os.path.realpath(REPO) or os.path.realpath(REPO).startswith(path + os.sep) or path == os.sep:
            raise SystemExit(f"[demo] error: output_dir={folder} holds the checkout; choose a folder such as runs/demo")
        legacy = path == os.path.join(os.path.realpath(REPO), "runs", "demo")  # the default, run before the marker
        if os.listdir(path) and not os.path.exists(os.path.join(path, DEMO_MARKER)) and not legacy:
            raise SystemExit(
                f"[demo] error: output_dir={folder} exists and is not a previous demo run (no {DEMO_MARKER}); the demo "
                "starts its run folder afresh, so choose another output_dir or empty this one"
            )
        shutil.rmtree(path)
    os.makedirs(folder)
    with open(os.path.join(folder, DEMO_MARKER), "w") as f:
        f.write("made by tools/demo.py: it replaces this folder on its next run\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--nproc", type=int, default=2, help="ranks for training and evaluation (gloo on CPU)")
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args()
    args.config = os.path.abspath(args.config)  # given from the caller's folder; the steps run from the checkout
    os.chdir(REPO)
    cfg = config_cli_main(args.config, args.overrides)
    start = time.time()
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("OMP_NUM_THREADS", "1")  # 2 ranks on 2 cores: one thread each

    print(f"[demo] data: {cfg.data.root} (generated once, then cached)", flush=True)
    try:
        files = generate(cfg.data.root)
    except FileExistsError as err:
        raise SystemExit(f"[demo] error: {err}") from None
    given = {o.split("=", 1)[0].strip() for o in args.overrides}
    lists = [f"data.{k}={files[k]}" for k in ("train_list", "val_list", "class_map") if f"data.{k}" not in given]
    if "data.root" not in given:
        lists = []  # the config's lists are the generated ones
    if not os.path.isfile(cfg.model.pretrained):  # the weights go where the run will look for them
        pretrain = [sys.executable, "tools/pretrain_backbone.py", "--config", args.config, *args.overrides]
        run(pretrain, env, "pretrain the backbone")
    clear_run_folder(cfg.output_dir)
    overrides = [f"output_dir={cfg.output_dir}", *args.overrides, *lists]
    run([*launcher(args.nproc, "tools/train.py"), "--config", args.config, *overrides], env, "train")

    weights = os.path.join(cfg.output_dir, "model_trainable.safetensors")
    eval_dir = os.path.join(cfg.output_dir, "eval")
    test_cmd = ["--config", args.config, "--checkpoint", weights, "--split", "val", "--out", eval_dir, *overrides]
    run([*launcher(args.nproc, "tools/test.py"), *test_cmd], env, "multi-view evaluation")
    with open(os.path.join(eval_dir, "results.json")) as f:
        results = json.load(f)

    profile_path = os.path.join(cfg.output_dir, "profile", "profile.json")
    if not args.skip_profile:
        out = os.path.dirname(profile_path)
        profile_cmd = [sys.executable, "tools/profile.py", "--config", args.config, "--out", out, "--quick", *overrides]
        run(profile_cmd, env, "throughput profile")
    with open(os.path.join(cfg.output_dir, "train_summary.json")) as f:
        summary = json.load(f)

    pair_acc = pair_accuracy(results["per_video"], TEMPORAL_PAIRS)
    line = {  # accuracies in percent, as in results.json and compare.json
        **{key: round(results["metrics"][key], 2) for key in ("top1", "top5", "mean_class_acc")},
        "temporal_pairs_top1": round(pair_acc, 2),
        "temporal_pairs": [f"{CLASSES[a]} <-> {CLASSES[b]}" for a, b in TEMPORAL_PAIRS],
        "videos_evaluated": results["num_evaluated"],
        "protocol": results["protocol"],
        "train_clips_per_s": round(summary["clips_per_s"], 2),
        "train_data_wait_share": round(summary["data_wait_share"], 3),
        "seconds": round(time.time() - start, 1),
        "paths": {
            "run": cfg.output_dir,
            "weights": weights,
            "results": os.path.join(eval_dir, "results.json"),
            "profile": profile_path if not args.skip_profile else None,
        },
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
