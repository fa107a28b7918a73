"""The loader sweep's bookkeeping, on a stand-in loader (no videos, no processes)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from aim_video.profiling import throughput


def test_loader_sweep_rounds_each_count_up_from_the_requested_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rounded count was written back into `batches`, so each worker count rounded up the previous one's:
    2 workers timed 4 batches, then 3 workers 6 instead of 3. And clips/s is clips, not batches, per second."""
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
    for r in rows:  # two clips per batch: twice the batches per second that batch_ms reads
        assert r["clips_per_s"] > 0 and r["clips_per_s"] == pytest.approx(2 * 1000 / r["batch_ms"], rel=1e-9)


def test_loads_that_fail_in_the_warm_up_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad video met in the warm-up batches was not counted: the quick profile of a list with two broken files
    reported failed_loads 0 while decord printed their errors."""

    def stream(_loader: Any) -> Iterator[dict[str, Any]]:
        yield {"video": torch.zeros(2, 1), "failures": ["bad.mp4: empty file", "worse.mp4: empty file"]}
        while True:
            yield {"video": torch.zeros(2, 1), "failures": []}

    monkeypatch.setattr(throughput, "profiling_loader", lambda cfg, workers, delay: None)
    monkeypatch.setattr(throughput, "endless_batches", stream)
    assert [r["failed_loads"] for r in throughput.loader_sweep(None, [1, 2], batches=2)] == [2, 2]  # type: ignore[arg-type]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16-fp32-accumulation"])
def test_the_measured_step_accumulates_as_training_does(precision: str) -> None:
    """It stepped AdamW on every micro-batch; with train.grad_accum_steps=2 it steps on every second, on the mean
    gradient of the two (the same update as one step on both micro-batches at once). Under bf16 a step that kept
    only the last micro-batch's gradient passed a weight tolerance 20x the whole update."""
    from aim_video.config import load_config
    from aim_video.models.build import build_model
    from tests.models.conftest import TINY_CLIP

    accumulation = "fp32" if precision.endswith("fp32-accumulation") else "model"
    precision = precision.split("-")[0]

    def model_and_cfg(accum: int):
        cfg = load_config(None, [f"train.precision={precision}", f"train.grad_accum_steps={accum}",
                                 f"train.grad_accum_dtype={accumulation}", "model.drop_path_rate=0",
                                 "model.head_dropout=0", "model.num_classes=5"])  # fmt: skip
        cfg.model.arch, cfg.model.vit_kwargs = "vit_base_patch16_clip_quickgelu_224", dict(TINY_CLIP)
        torch.manual_seed(0)
        return build_model(cfg.model, 4), cfg

    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    gen = torch.Generator().manual_seed(1)
    video, label = torch.randn(4, 4, 3, 32, 32, generator=gen).to(dtype), torch.tensor([0, 1, 2, 3])
    model, cfg = model_and_cfg(2)
    _, step = throughput.build_train_step(cfg, model, torch.device("cpu"))
    head = model.head.weight.detach().clone()
    step(video[:2], label[:2])
    assert torch.equal(model.head.weight, head)  # the first micro-batch: no step
    step(video[2:], label[2:])
    once, cfg1 = model_and_cfg(1)
    _, whole = throughput.build_train_step(cfg1, once, torch.device("cpu"))
    whole(video, label)
    assert not torch.equal(model.head.weight, head)
    if dtype == torch.float32:
        assert torch.allclose(model.head.weight, once.head.weight, atol=1e-5)
    # AdamW's first step moves each weight by about lr whatever its gradient's size: one micro-batch's gradient
    # flips ~40 % of the head's update signs (a relative error ~1.3); bf16 rounding can flip only near-zero ones
    change = model.head.weight.detach().float() - head.float()
    reference = once.head.weight.detach().float() - head.float()
    relative_error = ((change - reference).norm() / reference.norm()).item()
    assert relative_error <= 0.25, relative_error


def test_timed_windows_hold_whole_optimizer_steps_and_start_at_a_boundary(monkeypatch: pytest.MonkeyPatch) -> None:
    """With train.grad_accum_steps=4, 10 timed calls held 2 or 3 optimizer steps depending on where the previous
    measurement left the counter (carried over between batch sizes and into the end-to-end steps, and left mid-way
    by an out-of-memory row)."""
    from aim_video.config import load_config
    from aim_video.models.build import build_model
    from tests.models.conftest import TINY_CLIP

    cfg = load_config(None, ["train.grad_accum_steps=4", "model.num_classes=5", "train.precision=fp32"])
    cfg.model.arch, cfg.model.vit_kwargs = "vit_base_patch16_clip_quickgelu_224", dict(TINY_CLIP)
    model = build_model(cfg.model, 4)
    optimizer, step = throughput.build_train_step(cfg, model, torch.device("cpu"))
    stepped: list[int] = []
    monkeypatch.setattr(optimizer, "step", lambda *a, **k: stepped.append(1))
    assert [throughput.whole_steps(n, cfg) for n in (0, 1, 4, 10)] == [0, 4, 4, 12]
    video, label = torch.randn(1, 4, 3, 32, 32), torch.tensor([0])
    step(video, label)  # an out-of-memory row stopped here, one micro-batch into an accumulation
    step.reset()
    for _ in range(4):
        step(video, label)
    assert stepped == [1]  # the four after the reset are one whole step (without it: one after three)
    cfg.data.input_size, cfg.data.num_frames = 32, 4
    rows = throughput.model_sweep(cfg, model, step, [1], torch.device("cpu"), torch.float32, warmup=1, steps=10)
    assert not rows[0]["oom"] and len(stepped) == 1 + (4 + 12) // 4  # warm-up and timed: whole steps
