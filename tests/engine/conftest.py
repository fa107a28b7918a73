"""Small real modules for the engine's unit tests (the integration tests use the real AIM model)."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyAdapted(nn.Module):
    """A frozen 'backbone' with a trainable adapter, norm, bare embedding and head: the shapes of an AIM model."""

    def __init__(self, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.backbone = nn.Linear(dim, dim)
        self.adapter = nn.Sequential(nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim))
        self.norm = nn.LayerNorm(dim)
        self.temporal_embedding = nn.Parameter(torch.zeros(1, 4, dim))
        self.head = nn.Linear(dim, classes)
        self.backbone.requires_grad_(False)

    def trainable_parameter_names(self) -> list[str]:
        return [n for n, p in self.named_parameters() if not n.startswith("backbone.")]

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 4, dim]
        h = self.backbone(x) + self.temporal_embedding
        h = h + self.adapter(h)
        return self.head(self.norm(h).mean(1))


@pytest.fixture
def tiny() -> TinyAdapted:
    torch.manual_seed(0)
    return TinyAdapted()
