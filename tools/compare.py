"""Compare AIM with the baselines on one split: same config, seed, schedule, loader and engine for every method.

    python tools/compare.py --config configs/demo.yaml --out docs/compare_demo [--methods aim,linear_probe,...] \\
        [--split val] [--temporal-pairs demo] [key=value ...]

Each method (aim_video/compare.py METHODS: AIM's component ablations, linear probe, full fine-tuning, LoRA, VPT
shallow/deep, merged linear adapters) is trained in this process with the engine of tools/train.py (a world of one),
evaluated with the multi-view protocol on --split and measured (tunable parameters, inference GFLOPs and GMACs per
clip, training clips/s, peak training memory). Every method's config is built and its model checked before the first
one trains; settings a method does not read (AIM's adapter settings for a baseline, ...) are reset for it. Every
method trains with the config's recipe: with a recipe config, full_finetune is full fine-tuning under AIM's lr and
weight decay, not the paper's full fine-tuning baseline. compare.md, compare.json and compare.png in --out are
rewritten after each method, so a crash later keeps the rows done; the run folders go under output_dir (one per
method). `--temporal-pairs demo` adds top-1 on the demo's temporal-order class pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

# run from a checkout: the repo root on the path, tools/ off it (tools/profile.py would shadow the stdlib profile)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aim_video.config import ConfigError, config_cli_main  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from aim_video.compare import METHODS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config shared by every method")
    p.add_argument("--out", required=True, help="folder for compare.md / compare.json / compare.png")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from: {', '.join(METHODS)}")
    p.add_argument("--split", default="val", choices=("val", "test"))
    p.add_argument("--temporal-pairs", default="", choices=("", "demo"), help="'demo': score the demo's pairs")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides applied to every method")
    return p.parse_intermixed_args(argv)  # overrides may come before or after options (rerun + train.resume=auto)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed's CPU accelerator (gloo), as tools/demo.py sets
    from aim_video.compare import METHODS, markdown_table, prepare_methods, run_method, write_outputs
    from aim_video.data.annotations import AnnotationError
    from aim_video.engine.distributed import TrainingStopped
    from aim_video.models.pretrained import PretrainedLoadError

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        print(f"error: --methods: unknown {unknown or 'empty list'}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    cfg = config_cli_main(args.config, args.overrides)  # validates the shared config and overrides up front
    try:  # every method's config and model, before the first one trains
        configs = prepare_methods(methods, args.config, args.overrides, cfg.output_dir, args.split)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pairs = None
    if args.temporal_pairs == "demo":
        from aim_video.data.demo_data import TEMPORAL_PAIRS

        pairs = TEMPORAL_PAIRS
    started = time.time()
    command = "python tools/compare.py " + " ".join(sys.argv[1:] if argv is None else argv)
    meta = {
        "command": command,
        "config": args.config,
        "overrides": args.overrides,
        "split": args.split,
        "seed": cfg.train.seed,
        "epochs": cfg.train.epochs,
    }
    rows = []
    for name in methods:
        print(f"[compare] {name}", flush=True)
        try:
            row = run_method(name, configs[name], args.split, pairs)
        except (ConfigError, AnnotationError, PretrainedLoadError, FileNotFoundError) as err:  # the input, not a bug:
            print(f"error: method {name}: {err}", file=sys.stderr)  # e.g. a backbone file that does not fit the
            return 2  # model (checked on the meta device up front, without loading); earlier rows are written
        except TrainingStopped as stop:  # preempted: the method's checkpoint is saved, the finished rows written
            print(
                f"method {name} stopped by {signal.Signals(stop.signum).name} at step {stop.step} after a checkpoint: "
                "rerun the same command with train.resume=auto to go on (methods already trained are not trained "
                "again)",
                file=sys.stderr,
            )
            return 128 + stop.signum  # as if the signal had ended the process, as tools/train.py does
        rows.append(row)
        shown = {k: row[k] for k in ("top1", "top5", "tunable_params", "wall_s") if k in row}
        print(f"[compare] {name}: {json.dumps(shown)}", flush=True)
        meta.update(methods_done=f"{len(rows)} of {len(methods)}", total_wall_s=round(time.time() - started, 1))
        paths = write_outputs(rows, args.out, meta)  # after each method: a later crash loses none of these rows
    print(markdown_table(rows))
    print(json.dumps({"paths": paths, "total_wall_s": meta["total_wall_s"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
