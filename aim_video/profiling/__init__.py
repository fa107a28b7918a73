"""Throughput profiling for tools/profile.py: loader, model, end-to-end steps, FLOPs, MFU and the verdict."""

# `tools/profile.py --quick`: well under a minute for the demo config on 2 CPU cores (kept here, free of torch
# imports, so the CLI can show them in --help without loading torch)
QUICK_OVERRIDES = [
    "profile.max_workers=2",
    "profile.loader_batches=4",
    "profile.batch_sizes=[1,4]",
    "profile.steps=4",
    "profile.warmup=1",
]
