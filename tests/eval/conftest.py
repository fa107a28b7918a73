"""Synthetic pieces for evaluation tests on tensors: a split of uint8 multi-view videos with some unreadable ones,
a loader sharded like the real one (DistributedSampler, no shuffle, padded), and a tiny deterministic classifier."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class SyntheticViews(Dataset):
    """Video ``i``: uint8 ``[V, T, C, H, W]`` drawn from a generator seeded with ``i``; indices in ``broken`` fail."""

    def __init__(self, size: int, num_views: int, num_classes: int, broken: tuple[int, ...] = (), hw: int = 8):
        self.size, self.num_views, self.num_classes, self.broken, self.hw = size, num_views, num_classes, broken, hw

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i in self.broken:
            return {"index": i, "error": (i, f"videos/{i:03d}.mp4", "cannot decode: moov atom not found")}
        g = torch.Generator().manual_seed(i)
        video = torch.randint(0, 256, (self.num_views, 2, 3, self.hw, self.hw), generator=g, dtype=torch.uint8)
        return {"video": video, "label": i % self.num_classes, "index": i, "error": None}


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [it for it in items if it["error"] is None]
    return {
        "video": torch.stack([it["video"] for it in ok]) if ok else torch.zeros(0, 1, 2, 3, 8, 8, dtype=torch.uint8),
        "label": torch.tensor([it["label"] for it in ok], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in ok], dtype=torch.long),
        "errors": [it["error"] for it in items if it["error"] is not None],
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
