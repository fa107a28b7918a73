"""Synthetic pieces for evaluation tests on tensors: a split of uint8 multi-view videos with some unreadable ones,
a loader sharded like the real one (DistributedSampler, no shuffle, padded), and a tiny deterministic classifier."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class SyntheticViews(Dataset):
    """Video ``i``: uint8 ``[V, T, C, H, W]`` drawn from a generator seeded with ``i``; indices in ``broken`` fail."""

    def __init__(
        self,
        size: int,
        num_views: int,
        num_classes: int,
        broken: tuple[int, ...] = (),
        hw: int = 8,
        fell_back: tuple[int, ...] = (),
    ):
        self.size, self.num_views, self.num_classes, self.broken, self.hw = size, num_views, num_classes, broken, hw
        self.fell_back = fell_back  # read, but through the fallback backend

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i in self.broken:
            return {"index": i, "error": (i, f"videos/{i:03d}.mp4", "cannot decode: moov atom not found")}
        g = torch.Generator().manual_seed(i)
        video = torch.randint(0, 256, (self.num_views, 2, 3, self.hw, self.hw), generator=g, dtype=torch.uint8)
        fallback = "read with pyav: decord cannot decode its av1 video" if i in self.fell_back else ""
        return {"video": video, "label": i % self.num_classes, "index": i, "error": None, "fallback": fallback}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [it for it in items if it["error"] is None]
    return {
        "video": torch.stack([it["video"] for it in ok]) if ok else torch.zeros(0, 1, 2, 3, 8, 8, dtype=torch.uint8),
        "label": torch.tensor([it["label"] for it in ok], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in ok], dtype=torch.long),
        "errors": [it["error"] for it in items if it["error"] is not None],
        "fallbacks": [(it["index"], f"videos/{it['index']:03d}.mp4", it["fallback"]) for it in ok if it["fallback"]],
    }


def synthetic_loader(dataset: SyntheticViews, batch_size: int, rank: int = 0, world_size: int = 1) -> DataLoader:
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False, drop_last=False)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)


class TinyClassifier(torch.nn.Module):
    """float ``[B, T, C, H, W]`` -> logits ``[B, K]``: 2x2 average pool of the frame mean, then a linear layer."""

    def __init__(self, num_classes: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.head = torch.nn.Linear(3 * 4, num_classes)
        self.calls: list[int] = []  # batch size of every forward pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(int(x.shape[0]))
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.mean(dim=1), 2)  # [B, C, 2, 2]
        return self.head(pooled.flatten(1)) * 4.0


# --- real pieces: tiny videos on disk, a tiny AIM checkpoint (needs the data loader and the model) ---

TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4)
BAND_COLOURS = ((230, 30, 30), (30, 230, 30), (30, 30, 230), (230, 230, 30))  # four vertical bands, left to right


def band_video(num_frames: int, height: int = 32, width: int = 64, tint: int = 0) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]``: four flat colour bands across the width; frame t has a grey top strip of level 8 t
    (readable back after lossy coding) and ``tint`` shifts the colours so videos of different classes differ."""
    frames = torch.zeros(num_frames, height, width, 3, dtype=torch.uint8)
    band = width // 4
    for b, colour in enumerate(BAND_COLOURS):
        frames[:, :, b * band : (b + 1) * band] = torch.tensor(colour).clamp(0, 255 - tint) + tint
    for t in range(num_frames):
        frames[t, : height // 4] = 8 * t
    return frames


def write_split(root: str, num_videos: int, num_classes: int, corrupt: tuple[int, ...] = (), num_frames: int = 24):
    """``root/videos/vNN.mp4`` (label i % num_classes; the ``corrupt`` ones are junk bytes) and ``root/val.txt``."""
    import os

    from aim_video.data import encode

    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    lines = []
    for i in range(num_videos):
        path = os.path.join(root, "videos", f"v{i:02d}.mp4")
        if i in corrupt:
            with open(path, "wb") as f:
                f.write(b"\x00\x00\x00\x18ftypmp42 this is not a video" * 4)
        else:
            encode.write_video(path, band_video(num_frames, tint=12 * (i % num_classes)), fps=25.0, gop=8)
        lines.append(f"videos/v{i:02d}.mp4 {i % num_classes}")
    with open(os.path.join(root, "val.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return os.path.join(root, "val.txt")


def tiny_config(root: str, num_classes: int = 3):
    from aim_video.config import Config

    cfg = Config()
    cfg.output_dir = f"{root}/run"
    cfg.data.root, cfg.data.val_list = root, f"{root}/val.txt"
    cfg.data.num_classes = cfg.model.num_classes = num_classes
    cfg.data.num_frames, cfg.data.frame_stride = 4, 2
    cfg.data.input_size = cfg.data.test_short_side = 32
    cfg.data.num_workers, cfg.data.backend, cfg.data.fallback_backend = 0, "pyav", ""
    cfg.model.arch, cfg.model.vit_kwargs = "vit_base_patch16_clip_quickgelu_224", dict(TINY_VIT)
    cfg.model.drop_path_rate = cfg.model.head_dropout = 0.0
    cfg.model.pretrained = f"{root}/backbone.safetensors"
    cfg.train.precision = "fp32"
    cfg.eval.batch_size = 1
    return cfg


def write_tiny_checkpoint(cfg, folder: str, classes: list[str] | None = None) -> str:
    """A frozen backbone file at ``cfg.model.pretrained`` and ``folder/trainable.safetensors`` with perturbed adapters
    (so the adapters change the output) and the config (and `classes`, when given) in its metadata, as the engine
    writes them."""
    import os

    import timm
    from safetensors.torch import save_file

    from aim_video.config import to_yaml
    from aim_video.models.build import build_model
    from aim_video.models.trainable_io import save_trainable

    torch.manual_seed(0)
    vit = timm.create_model(cfg.model.arch, pretrained=False, num_classes=0, **cfg.model.vit_kwargs)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, cfg.model.pretrained)
    model = build_model(cfg.model, cfg.data.num_frames)
    g = torch.Generator().manual_seed(1)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in model.trainable_parameter_names():
            params[name].add_(0.5 * torch.randn(params[name].shape, generator=g))
    meta = {"config": to_yaml(cfg), "step": 7, **({"classes": classes} if classes else {})}
    return save_trainable(model, os.path.join(folder, "trainable.safetensors"), meta)
