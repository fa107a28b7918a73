"""Train AIM on a video data set with DeepSpeed.

    deepspeed --num_gpus 8 tools/train.py --config configs/k400_vit_b16_8f.yaml output_dir=runs/k400 [key=value ...]
    deepspeed --hostfile hosts --num_nodes 2 --num_gpus 8 tools/train.py --config ... (multi-node; shared output_dir)
    python tools/train.py --config ... (one process)
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 tools/train.py --config ... (CPU, gloo; tests and the demo)

Writes into `output_dir`: config.yaml, deepspeed_config.json, log.jsonl, tensorboard/, checkpoints/ (atomic, keep last K
and the best), model_trainable.safetensors (the trainable set only) and train_summary.json. `--resume auto` continues
from the newest complete checkpoint (or starts fresh when none was saved; `latest` naming checkpoints that are
gone is refused).

Exit status: 0 trained; 2 bad input (config and its combinations, lists, paths, weights, an output_dir holding an
earlier run's checkpoints); 3 eval.strict and val videos that could not be read (an epoch saved before that
evaluation is evaluated at --resume auto); 128 + N stopped by signal N after a checkpoint; 1 anything else (a failed
rank, a full disk, a checkpoint that cannot be resumed, a non-finite loss).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import traceback

# run from a checkout: the repo root on the path, tools/ off it (tools/profile.py would shadow the stdlib profile)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aim_video.config import config_cli_main  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("--resume", default="", help="'auto' (newest complete checkpoint) or a checkpoint folder "
                        "(one of another run's: into an output_dir without checkpoints)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)  # launcher
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.max_steps=10")
    return parser.parse_known_args(argv)


_AS_SCRIPT = False  # set when run as a program: only then may an error end the process at once


def main(argv: list[str] | None = None) -> int:
    args, unknown = parse_args(argv)
    flags = [u for u in unknown if u.startswith("-")]
    if flags:  # exit status 2, as for every other bad input
        print(f"error: unknown options {' '.join(flags)} (config values are section.key=value)", file=sys.stderr)
        return 2
    cfg = config_cli_main(args.config, list(args.overrides) + unknown)

    import torch.distributed as dist

    from aim_video.config import ConfigError
    from aim_video.data.annotations import AnnotationError
    from aim_video.engine.checkpoint_io import CheckpointError
    from aim_video.engine.deepspeed_setup import EngineSetupError
    from aim_video.engine.distributed import TrainingStopped
    from aim_video.engine.fit import fit
    from aim_video.engine.train_loop import NonFiniteLossError
    from aim_video.eval.multiview import MissingVideosError
    from aim_video.models.pretrained import PretrainedLoadError

    try:
        summary = fit(cfg, resume=args.resume)
    except (NonFiniteLossError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        os._exit(1)  # other ranks may be blocked in a collective: leave at once so the launcher stops them
    except (ConfigError, EngineSetupError, AnnotationError, PretrainedLoadError, OSError) as err:  # the input
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):  # not the input: the disk is full
            print(f"error: no space left in {cfg.output_dir}: {err}", file=sys.stderr, flush=True)
            os._exit(1)
        print(f"error: {err}", file=sys.stderr, flush=True)
        os._exit(2)
    except MissingVideosError as err:  # eval.strict, at an epoch's end
        print(
            f"error: {err} Then --resume auto goes on from the latest checkpoint (an epoch saved before this "
            "evaluation, as train.save_every decides, is evaluated without training it again)",
            file=sys.stderr,
            flush=True,
        )
        os._exit(3)
    except TrainingStopped as stop:  # every rank agreed at the same step, after the checkpoint was saved
        if int(os.environ.get("RANK", "0")) == 0:
            print(str(stop), file=sys.stderr, flush=True)
        if dist.is_initialized():
            dist.destroy_process_group()
        return 128 + stop.signum  # as if the signal had ended the process: not a finished run
    except (Exception, KeyboardInterrupt):  # anything else (CUDA out of memory, a bug): say it, then leave at once.
        if not _AS_SCRIPT:  # called in-process (tests, other tools): the caller handles it
            raise
        traceback.print_exc()  # A normal exit would wait forever for the loader workers, which ignore the stop
        sys.stderr.flush()  # signals (train.stop_signals), and hold the GPUs until someone kills the job
        os._exit(1)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: summary[k] for k in ("steps", "epochs", "final_loss", "clips_per_s", "paths")}))
    if dist.is_initialized():  # without it NCCL warns at exit that resources may leak (seen on an H200)
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    _AS_SCRIPT = True
    sys.exit(main())
