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

import os
import sys

if __name__ != "__main__":
    # Every script in tools/ runs with tools/ first on sys.path, so `import profile` there (cProfile does it, and
    # torch._dynamo imports cProfile when timm or torchvision load) would find this file instead of the standard
    # library's module. Hand the importer the standard library's `profile` (the import system returns whatever
    # sys.modules holds under the name once this file has run).
    import importlib.util
    import sysconfig

    _spec = importlib.util.spec_from_file_location(__name__, os.path.join(sysconfig.get_path("stdlib"), "profile.py"))
    if _spec is None or _spec.loader is None:
        raise ImportError("tools/profile.py shadows the standard library's `profile` module, which was not found")
    _stdlib_profile = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _stdlib_profile
    _spec.loader.exec_module(_stdlib_profile)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import logging

    tools = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != tools]  # no stdlib shadowing from here on
    sys.path.insert(0, os.path.dirname(tools))  # run from a checkout, no install

    from aim_video.config import config_cli_main
    from aim_video.profiling import QUICK_OVERRIDES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config (configs/*.yaml)")
    parser.add_argument("--out", default="", help="output folder (default: <output_dir>/profile)")
    parser.add_argument(
        "--quick", action="store_true", help="short settings (the demo's): " + "; ".join(QUICK_OVERRIDES)
    )
    parser.add_argument("--trace", action="store_true", help="also record a torch.profiler trace of a few steps")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. profile.max_workers=8")
    args = parser.parse_intermixed_args(argv)  # overrides may come before, between or after options
    overrides = (QUICK_OVERRIDES if args.quick else []) + list(args.overrides)  # the user's overrides win
    cfg = config_cli_main(args.config, overrides)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from aim_video.data.annotations import AnnotationError
    from aim_video.models.pretrained import PretrainedLoadError
    from aim_video.profiling.runner import run_profile

    out = args.out or os.path.join(cfg.output_dir, "profile")
    try:
        run_profile(cfg, out, trace=args.trace, log=lambda line: print(line, flush=True))
    except (AnnotationError, FileNotFoundError, ValueError, PretrainedLoadError) as err:  # a backbone that misfits
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"[profile] wrote {os.path.join(out, 'profile.json')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
