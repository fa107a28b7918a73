"""Classify one video: the top-5 class names with probabilities, from a trained checkpoint and a class map.

    python tools/infer.py VIDEO --checkpoint runs/k400/model_trainable.safetensors [--class-map classes.txt] \\
        [--config configs/k400_vit_b16_8f.yaml] [--top-k 5] [eval.protocol=k400 ...]

The video is tested like the evaluation split (the config's view protocol and decoding settings, its verify report
if the video is in it, one decode for all views, the same precision). With ``eval.average=score`` the probabilities
are the softmax of the mean logits. Exit status 1: the video cannot be read (or the verify report refuses it);
2: bad arguments, config or checkpoint.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

# run from a checkout: the repo root on the path, tools/ off it (tools/profile.py would shadow the stdlib profile)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from aim_video.config import ConfigError  # noqa: E402
from aim_video.data.annotations import AnnotationError, VideoRecord  # noqa: E402
from aim_video.data.dataset import MultiViewDataset  # noqa: E402
from aim_video.data.loader import eval_dataset_of  # noqa: E402
from aim_video.engine.distributed import device_and_backend, world_from_slurm  # noqa: E402
from aim_video.eval.loading import class_names, load_model, resolve_checkpoint, resolve_eval_config  # noqa: E402
from aim_video.eval.multiview import apply_protocol, average_views, forward_views, inference_precision  # noqa: E402
from aim_video.models.pretrained import PretrainedLoadError  # noqa: E402

LIST_SUFFIXES = (".txt", ".csv", ".lst", ".list")  # annotation lists, not videos


def positive_int(text: str) -> int:
    """argparse type of --top-k: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _is_override(word: str) -> bool:
    """`section.key=value`, unless a file of that name exists (a video may have '=' in its name)."""
    return re.match(r"[A-Za-z_][\w.\[\]]*=", word) is not None and not os.path.exists(word)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("video", help="one video file (tools/test.py evaluates a list of videos)")
    p.add_argument("--checkpoint", required=True, help="model_trainable.safetensors or an engine checkpoint folder")
    p.add_argument("--config", default=None, help="YAML (default: the config stored in the checkpoint)")
    p.add_argument("--class-map", default=None, help="class names, one per line (default: data.class_map)")
    p.add_argument("--top-k", type=positive_int, default=None, help="classes to print (default 5; at most all)")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # refused below
    p.add_argument("overrides", nargs="*", help="section.key=value config overrides")
    args = p.parse_intermixed_args(argv)  # overrides may come before or after options
    given = [args.video, *args.overrides]  # argparse gives the first word to the video, an override or not
    videos = [g for g in given if not _is_override(g)]
    if len(videos) != 1:
        p.error(f"give one video file and section.key=value overrides; got {len(videos)} video(s): {videos[:3]}")
    args.video, args.overrides = videos[0], [g for g in given if g is not videos[0]]
    env = dict(os.environ)
    world_from_slurm(env)  # srun's tasks, as training and tools/test.py read them
    if int(env.get("WORLD_SIZE", "1")) > 1:  # each process would classify the same video on the same device
        p.error(
            f"infer.py classifies one video in one process, but this is one of {env['WORLD_SIZE']} (a launcher, "
            "torchrun or srun with several tasks): run it with plain python, or evaluate a list of videos on several "
            "ranks with tools/test.py"
        )
    if os.path.isdir(args.video) or args.video.lower().endswith(LIST_SUFFIXES):
        p.error(
            f"{args.video} is a list or folder of videos, but infer.py classifies one video file; evaluate a list "
            f"with tools/test.py --checkpoint {args.checkpoint} data.test_list={args.video} --split test"
        )
    if args.class_map and not os.path.isfile(args.class_map):
        p.error(f"--class-map {args.class_map}: no such file (class names, one per line)")
    return args


class UnreadableVideoError(RuntimeError):
    """The video cannot be decoded (a model error is not this: it propagates with its own traceback)."""


def predict(model: torch.nn.Module, dataset: MultiViewDataset, cfg, device: torch.device) -> torch.Tensor:
    """Class probabilities ``[K]`` for the dataset's single video; UnreadableVideoError if it cannot be read."""
    item = dataset[0]
    if item["error"] is not None:
        raise UnreadableVideoError(f"{item['path']}: {item['error']}")
    amp_dtype, input_dtype = inference_precision(model, cfg, device)
    logits = forward_views(
        model, item["video"][None], cfg.data.mean, cfg.data.std, cfg.eval.view_chunk, device, amp_dtype, input_dtype
    )
    scores = average_views(logits, cfg.eval.average)[0]  # [K]
    return scores if cfg.eval.average == "prob" else scores.softmax(dim=-1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device, _ = device_and_backend(0)  # as tools/test.py: DS_ACCELERATOR=cpu keeps a GPU machine's run on the CPU
    try:
        checkpoint_file = resolve_checkpoint(args.checkpoint)
        cfg = resolve_eval_config(checkpoint_file, args.config, args.overrides)
        apply_protocol(cfg)
        if args.class_map:  # checked against the names training stored, as data.class_map is
            cfg.data.class_map = args.class_map
        names = class_names(cfg, checkpoint_file, "--class-map" if args.class_map else "data.class_map")
        if names is not None and len(names) != cfg.model.num_classes:
            raise ValueError(f"the class map lists {len(names)} classes, the model has {cfg.model.num_classes}")
        model = load_model(cfg, checkpoint_file, device)
    except (ConfigError, FileNotFoundError, ValueError, PretrainedLoadError) as err:  # a backbone file that misfits too
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not os.path.isfile(args.video):
        print(f"error: video not found: {args.video}", file=sys.stderr)
        return 1
    d = cfg.data
    try:
        dataset = eval_dataset_of(cfg, [VideoRecord(path=args.video, label=-1)], "the video")
        if not len(dataset):  # data.inexact_videos=drop
            raise AnnotationError(f"{args.video}: {dataset.dropped[0][1]}")
        probs = predict(model, dataset, cfg, device)
    except (UnreadableVideoError, AnnotationError) as err:
        print(f"error: cannot read the video: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a verify report or another file the config names is not there: the setting, not the video
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.top_k is not None and args.top_k > probs.numel():  # asked for: say why fewer are shown
        print(
            f"note: --top-k {args.top_k} is more than the model's {probs.numel()} classes: all shown", file=sys.stderr
        )
    top = probs.topk(min(args.top_k or 5, probs.numel()))
    print(f"{args.video} ({d.test_num_clips} clips x {d.test_num_crops} crops, {cfg.eval.average} averaging):")
    for rank, (p, k) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True), start=1):
        print(f"{rank:2d}. {names[k] if names else k:<40} {p:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
