"""The embedded demo dataset: small, real, encoded mp4 videos whose classes differ by motion.

Written once (cached) as a Kinetics-style tree: per-class folders of `{youtube_id}_{start:06d}_{end:06d}.mp4`,
a Kinetics CSV (`label,youtube_id,time_start,time_end,split`), `path label` list files for train and val, a class
map and a manifest with every video's generating parameters.

Two pairs of classes differ only in temporal order: each "reversed" video is, frame for frame, a forward video
of its partner class played backwards. A model that ignores frame order cannot separate a pair, so their accuracy
is reported on its own. The other classes need the axis of motion (an object moving horizontally vs vertically).
"""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np

from aim_video.data.encode import write_video

# class index -> name (folder names replace spaces by underscores, as Kinetics preparation scripts do)
CLASSES: list[str] = [
    "square growing",
    "square shrinking",
    "disc brightening",
    "disc darkening",
    "moving horizontally",
    "moving vertically",
]
# (forward class, its reversed partner): the pairs only a model of time can separate
TEMPORAL_PAIRS: list[tuple[int, int]] = [(0, 1), (2, 3)]
_REVERSED_OF = {reverse: forward for forward, reverse in TEMPORAL_PAIRS}

DATA_VERSION = 2  # bump when the rendering changes, so cached datasets are rebuilt


@dataclass
class DemoSpec:
    num_frames: int = 40
    size: int = 64
    fps: float = 25.0
    train_per_class: int = 48
    val_per_class: int = 12
    seed: int = 0


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dim, smooth, random background (fixed over the video) so objects never sit on a flat colour."""
    low = rng.uniform(0, 60, size=(4, 4, 3))
    up = np.kron(low, np.ones((size // 4, size // 4, 1)))
    return up + rng.normal(0, 4, size=(size, size, 3))


def render(label: int, rng: np.random.Generator, spec: DemoSpec) -> np.ndarray:
    """Frames uint8 [T, H, W, 3] of one video of class `label`, drawn with `rng`.

    A reversed class renders its forward partner with the same draws and plays it backwards.
    """
    if label in _REVERSED_OF:
        return render(_REVERSED_OF[label], rng, spec)[::-1].copy()
    t_count, size = spec.num_frames, spec.size
    bg = _background(rng, size)
    color = rng.uniform(140, 255, size=3)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    progress = np.linspace(0.0, 1.0, t_count)
    frames = np.empty((t_count, size, size, 3), np.float32)
    if label == 0:  # square growing
        cx, cy = rng.uniform(size * 0.35, size * 0.65, size=2)
        half0, half1 = rng.uniform(2, 5), rng.uniform(size * 0.3, size * 0.42)
        for t, p in enumerate(progress):
            half = half0 + (half1 - half0) * p
            mask = (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
            frames[t] = np.where(mask[..., None], color, bg)
    elif label == 2:  # disc brightening
        cx, cy = rng.uniform(size * 0.3, size * 0.7, size=2)
        radius = rng.uniform(size * 0.18, size * 0.3)
        mask = ((xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2)[..., None]
        lo, hi = rng.uniform(0.0, 0.15), rng.uniform(0.9, 1.0)
        for t, p in enumerate(progress):
            level = lo + (hi - lo) * p
            frames[t] = np.where(mask, bg * (1 - level) + color * level, bg)
    elif label in (4, 5):  # a disc crossing the frame horizontally (4) or vertically (5), either direction
        radius = rng.uniform(size * 0.15, size * 0.22)
        across = rng.uniform(size * 0.3, size * 0.7)
        start, end = radius + 1, size - radius - 1
        if rng.random() < 0.5:
            start, end = end, start
        for t, p in enumerate(progress):
            along = start + (end - start) * p
            cx, cy = (along, across) if label == 4 else (across, along)
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2)[..., None]
            frames[t] = np.where(mask, color, bg)
    else:
        raise ValueError(f"no renderer for demo class {label}")
    return np.clip(frames, 0, 255).astype(np.uint8)


def _video_seed(spec: DemoSpec, split: str, label: int, k: int) -> int:
    return (spec.seed * 1_000_003 + {"train": 0, "val": 1}[split] * 10_007 + label * 1009 + k) % (2**31)


def _youtube_id(seed: int) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    rng = np.random.default_rng(seed)
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=11))


def _remove_stale_partials(root: str) -> None:
    """Remove `root.tmp<pid>` folders left by generations that were killed (their process is gone)."""
    for partial in glob.glob(f"{glob.escape(root.rstrip('/'))}.tmp*"):
        pid = partial.rsplit(".tmp", 1)[1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # still running: another generation in progress
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except PermissionError:  # alive, another user's
            continue


def generate(root: str, spec: DemoSpec | None = None, force: bool = False) -> dict[str, str]:
    """Write the demo dataset under `root` unless an identical one is already there; return its files.

    Writes into `root.tmp` and renames at the end, so an interrupted run never leaves a half dataset behind.
    """
    spec = spec or DemoSpec()
    stamp = {"version": DATA_VERSION, **spec.__dict__}
    files = {
        "root": root,
        "train_list": os.path.join(root, "train.txt"),
        "val_list": os.path.join(root, "val.txt"),
        "csv": os.path.join(root, "kinetics_demo.csv"),
        "class_map": os.path.join(root, "classes.txt"),
        "manifest": os.path.join(root, "manifest.json"),
    }
    stamp_path = os.path.join(root, "dataset.json")
    if not force and os.path.isfile(stamp_path):
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                return files
    if os.path.isdir(root) and os.listdir(root) and not os.path.isfile(stamp_path):
        raise FileExistsError(
            f"{root} exists and is not a demo dataset (no dataset.json): the demo replaces its data folder, so "
            "choose another data.root or empty this one"
        )
    _remove_stale_partials(root)
    tmp_root = f"{root.rstrip('/')}.tmp{os.getpid()}"
    shutil.rmtree(tmp_root, ignore_errors=True)
    os.makedirs(tmp_root)
    lists: dict[str, list[str]] = {"train": [], "val": []}
    csv_rows, manifest = [], []
    duration = spec.num_frames / spec.fps
    for split, per_class in (("train", spec.train_per_class), ("val", spec.val_per_class)):
        for label, name in enumerate(CLASSES):
            folder = name.replace(" ", "_")
            for k in range(per_class):
                seed = _video_seed(spec, split, label, k)
                youtube_id = _youtube_id(seed)
                start = int(np.random.default_rng(seed).integers(0, 300))
                end = start + int(np.ceil(duration))
                rel = f"{folder}/{youtube_id}_{start:06d}_{end:06d}.mp4"
                frames = render(label, np.random.default_rng(seed), spec)
                write_video(os.path.join(tmp_root, rel), frames, fps=spec.fps, gop=spec.num_frames // 4)
                lists[split].append(f"{rel} {label}")
                csv_rows.append([name, youtube_id, start, end, split])
                manifest.append(
                    {
                        "path": rel,
                        "label": label,
                        "class": name,
                        "split": split,
                        "seed": seed,
                        "num_frames": spec.num_frames,
                        "reversed_of": _REVERSED_OF.get(label),
                    }
                )
    for split, lines in lists.items():
        with open(os.path.join(tmp_root, f"{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    with open(os.path.join(tmp_root, "kinetics_demo.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        writer.writerows(csv_rows)
    with open(os.path.join(tmp_root, "classes.txt"), "w") as f:
        f.write("\n".join(CLASSES) + "\n")
    with open(os.path.join(tmp_root, "manifest.json"), "w") as f:
        json.dump({"spec": stamp, "temporal_pairs": TEMPORAL_PAIRS, "videos": manifest}, f, indent=1)
    with open(os.path.join(tmp_root, "dataset.json"), "w") as f:
        json.dump(stamp, f)
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
    os.replace(tmp_root, root)
    return files


# Images for pretraining the demo's frozen backbone (tools/pretrain_backbone.py): AIM adapts an image model that
# already sees, and none can be downloaded here, so the demo makes one. Targets: shape, size, brightness, position.
IMAGE_TASKS = {"shape": 4, "size": 3, "brightness": 3, "position": 9}


def render_image(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, dict[str, int]]:
    """One uint8 [H, W, 3] image with a shape on a demo background, and its labels for each task."""
    bg = _background(rng, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    shape, size_bin, bright_bin = (int(x) for x in rng.integers(0, (4, 3, 3)))
    half = size * (0.06, 0.14, 0.26)[size_bin] * rng.uniform(0.85, 1.15)
    cx, cy = rng.uniform(half + 1, size - half - 1, size=2)
    if shape == 0:  # square
        mask = (np.abs(xx - cx) <= half) & (np.abs(yy - cy) <= half)
    elif shape == 1:  # disc
        mask = (xx - cx) ** 2 + (yy - cy) ** 2 <= half**2
    elif shape == 2:  # cross
        mask = ((np.abs(xx - cx) <= half / 3) & (np.abs(yy - cy) <= half)) | (
            (np.abs(yy - cy) <= half / 3) & (np.abs(xx - cx) <= half)
        )
    else:  # ring
        dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        mask = (dist <= half) & (dist >= half * 0.55)
    level = (rng.uniform(0.1, 0.35), rng.uniform(0.45, 0.7), rng.uniform(0.8, 1.0))[bright_bin]
    color = rng.uniform(140, 255, size=3)
    img = np.where(mask[..., None], bg * (1 - level) + color * level, bg)
    position = int(min(cy * 3 // size, 2) * 3 + min(cx * 3 // size, 2))
    labels = {"shape": shape, "size": size_bin, "brightness": bright_bin, "position": position}
    return np.clip(img, 0, 255).astype(np.uint8), labels
