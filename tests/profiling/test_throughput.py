"""The loader sweep's bookkeeping, on a stand-in loader (no videos, no processes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from aim_video.profiling import throughput


def test_loader_sweep_rounds_each_count_up_from_the_requested_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rounded count was written back into `batches`, so each worker count rounded up the previous one's:
    2 workers timed 4 batches, then 3 workers 6 instead of 3."""
    delivered: list[int] = []

    def stream(_loader: Any) -> Iterator[dict[str, Any]]:
        while True:
            delivered.append(1)
            yield {"video": torch.zeros(2, 1), "failures": []}

    monkeypatch.setattr(throughput, "profiling_loader", lambda cfg, workers, delay: None)
    monkeypatch.setattr(throughput, "endless_batches", stream)
    rows = throughput.loader_sweep(None, [2, 3, 1], batches=3)  # type: ignore[arg-type]
    assert [r["batches"] for r in rows] == [4, 3, 3]  # whole rounds of one batch per worker, from 3 each time
    # warm-up (one batch per worker) plus the timed batches
    assert len(delivered) == (2 + 4) + (3 + 3) + (1 + 3)
    assert all(r["clips_per_s"] > 0 for r in rows)
