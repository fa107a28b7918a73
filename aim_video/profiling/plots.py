"""PNG plots of a profile: loader clips/s against workers, model clips/s against batch size (matplotlib, Agg)."""

from __future__ import annotations

import os
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def _save(fig: Any, path: str) -> str:
    """Save atomically (temporary name, then rename) and close the figure."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def plot_loader(result: dict[str, Any], path: str) -> str:
    """Loader clips/s against workers, with the model's training demand as a horizontal line."""
    rows = result["loader"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["workers"] for r in rows], [r["clips_per_s"] for r in rows], "o-", label="loader")
    demand = result["verdict"]["model_clips_per_s"]
    ax.axhline(demand, color="tab:red", ls="--", label=f"model training demand ({demand:.1f})")
    ax.set_xlabel("loader workers")
    ax.set_ylabel("clips/s")
    ax.set_xticks([r["workers"] for r in rows])
    ax.set_ylim(bottom=0)
    ax.set_title(f"loader: batch {result['config']['batch_size']}, {result['device']['cpu_cores']} CPU cores")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_model(result: dict[str, Any], path: str) -> str:
    """Training-step and inference clips/s against batch size (log2 x axis)."""
    rows = [r for r in result["model"] if not r["oom"]]
    sizes = [r["batch_size"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(sizes, [r["train_clips_per_s"] for r in rows], "o-", label="training step")
    ax.plot(sizes, [r["infer_clips_per_s"] for r in rows], "s-", label="inference")
    if len(sizes) > 1:
        ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("batch size (clips)")
    ax.set_ylabel("clips/s")
    ax.set_ylim(bottom=0)
    cfg = result["config"]
    ax.set_title(f"{cfg['arch']}, {cfg['num_frames']}x{cfg['input_size']}px, {result['device']['name']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)
