"""Profile training throughput: is training loader-bound or compute-bound, and how fast is each part.

    python tools/profile.py --config configs/k400_vit_b16_8f.yaml [--out DIR] [--quick] [--trace] [key=value ...]

Measures loader clips/s against workers (1..profile.max_workers) on the configured training split; training-step
and inference clips/s and peak memory against batch size (profile.batch_sizes) at the configured frames and
resolution; FLOPs per clip, parameters and MFU (on a GPU); profile.steps real training steps with the share of time
spent waiting for data; and a verdict. Writes DIR/profile.json, DIR/profile.txt (the table printed here),
DIR/loader_workers.png, DIR/model_batch.png and, with --trace, DIR/trace.json (chrome://tracing or Perfetto) and
DIR/trace_top_ops.txt. DIR defaults to <output_dir>/profile. --quick: 1-2 workers, batch sizes 1 and 4, 4 steps.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# this script's folder would shadow the standard library's `profile` module (cProfile imports it): drop it
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
sys.path.insert(0, REPO)  # run from a checkout, no install

from aim_video.config import config_cli_main  # noqa: E402
from aim_video.profiling import QUICK_OVERRIDES as QUICK  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("--out", default="", help="output folder (default: <output_dir>/profile)")
    parser.add_argument("--quick", action="store_true", help="short settings (the demo's): " + "; ".join(QUICK))
    parser.add_argument("--trace", action="store_true", help="also record a torch.profiler trace of a few steps")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. profile.max_workers=8")
    args = parser.parse_args(argv)
    overrides = (QUICK if args.quick else []) + list(args.overrides)  # the user's overrides win over --quick
    cfg = config_cli_main(args.config, overrides)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from aim_video.data.annotations import AnnotationError
    from aim_video.profiling.runner import run_profile

    out = args.out or os.path.join(cfg.output_dir, "profile")
    try:
        run_profile(cfg, out, trace=args.trace, log=lambda line: print(line, flush=True))
    except (AnnotationError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[profile] wrote {os.path.join(out, 'profile.json')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
