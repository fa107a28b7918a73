"""The loader sweep's bookkeeping, on a stand-in loader (no videos, no processes)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import torch

from aim_video.models.build import build_model
from aim_video.profiling import throughput
from tests.profiling.conftest import tiny_config


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


CPU = torch.device("cpu")


def _tiny(*overrides: str):
    from aim_video.config import load_config
    from aim_video.models.build import build_model
    from tests.models.conftest import TINY_CLIP

    cfg = load_config(None, ["model.num_classes=5", "model.drop_path_rate=0", "model.head_dropout=0", *overrides])
    cfg.model.arch, cfg.model.vit_kwargs = "vit_base_patch16_clip_quickgelu_224", dict(TINY_CLIP)
    cfg.data.input_size, cfg.data.num_frames = 32, 4
    torch.manual_seed(0)
    return build_model(cfg.model, 4), cfg


def test_loads_that_fail_in_any_warm_up_batch_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """One warm-up batch per worker: a bad video met in the second worker's first batch counts too."""

    def stream(_loader: Any) -> Iterator[dict[str, Any]]:
        yield {"video": torch.zeros(2, 1), "failures": []}
        yield {"video": torch.zeros(2, 1), "failures": ["bad.mp4: empty file"]}
        while True:
            yield {"video": torch.zeros(2, 1), "failures": []}

    monkeypatch.setattr(throughput, "profiling_loader", lambda cfg, workers, delay: None)
    monkeypatch.setattr(throughput, "endless_batches", stream)
    assert throughput.loader_sweep(None, [2], batches=2)[0]["failed_loads"] == 1  # type: ignore[arg-type]


def test_cpu_peak_memory_is_the_resident_set_in_mib() -> None:
    """MiB (2**20 bytes) as the report and the JSON say, not MB: 4.9% more would read as a larger footprint."""
    process = psutil.Process()
    before = process.memory_info().rss / 2**20
    with throughput.PeakMemory(CPU) as mem:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written: resident
        time.sleep(0.05)
        held = process.memory_info().rss / 2**20
    assert block.sum() > 0
    assert held > before + 60
    assert held - 1 <= mem.peak_mib <= 1.02 * held + 1


def test_timed_calls_leave_out_the_warm_up_and_read_seconds_per_call() -> None:
    durations = iter([0.3] + [0.02] * 5)  # a slow first call (start-up), then 20 ms each

    def fn() -> None:
        time.sleep(next(durations))

    seconds = throughput._timed(fn, 1, 5, CPU)
    assert 0.02 <= seconds < 0.05  # without the warm-up: 0.076; over steps + 1 calls: 0.017


def test_model_sweep_measures_each_batch_size_once_smallest_first_after_its_warm_up() -> None:
    """Training and inference each run `warmup` untimed calls then `steps` timed ones per batch size; batch sizes
    are measured smallest first (the first out-of-memory stops the sweep) and once each."""
    model, cfg = _tiny("train.precision=fp32")
    _, step = throughput.build_train_step(cfg, model, CPU)
    calls: list[tuple[bool, int]] = []
    model.register_forward_hook(lambda m, args, out: calls.append((m.training, int(args[0].shape[0]))))
    rows = throughput.model_sweep(cfg, model, step, [2, 1, 2], CPU, torch.float32, warmup=1, steps=2)
    assert [r["batch_size"] for r in rows] == [1, 2]
    assert [b for training, b in calls if training] == [1, 1, 1, 2, 2, 2]
    assert [b for training, b in calls if not training] == [1, 1, 1, 2, 2, 2]


def test_fp32_accumulation_buffers_hold_only_the_current_optimizer_steps_gradient() -> None:
    """train.grad_accum_dtype=fp32 (DeepSpeed's BF16_Optimizer): each micro-batch's bf16 gradient moves into the
    fp32 buffer and is freed; the buffer starts over at every optimizer step (lr 0: the weights stay, so the same
    two micro-batches give the same gradient at the second step as at the first)."""
    model, cfg = _tiny("train.precision=bf16", "train.grad_accum_steps=2", "train.grad_accum_dtype=fp32",
                       "train.lr=0", "train.min_lr=0")  # fmt: skip
    optimizer, step = throughput.build_train_step(cfg, model, CPU)
    masters = [p for g in optimizer.param_groups for p in g["params"]]
    gen = torch.Generator().manual_seed(1)
    video, label = torch.randn(4, 4, 3, 32, 32, generator=gen).to(torch.bfloat16), torch.tensor([0, 1, 2, 3])
    step(video[:2], label[:2])
    assert all(p.grad is None for p in model.parameters())  # moved into the fp32 buffers
    assert {m.grad.dtype for m in masters} == {torch.float32} and any(m.grad.abs().sum() > 0 for m in masters)
    step(video[2:], label[2:])
    first = [m.grad.clone() for m in masters]
    step(video[:2], label[:2])
    step(video[2:], label[2:])
    for a, m in zip(first, masters, strict=True):
        assert torch.allclose(m.grad, a, rtol=1e-5, atol=1e-8)  # not the two steps' sum


def test_a_loader_without_workers_times_the_batches_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """data.decode_device=cuda profiles the loader in the training process only (workers [0])."""

    def stream(_loader: Any) -> Iterator[dict[str, Any]]:
        while True:
            yield {"video": torch.zeros(2, 1), "failures": []}

    monkeypatch.setattr(throughput, "profiling_loader", lambda cfg, workers, delay: None)
    monkeypatch.setattr(throughput, "endless_batches", stream)
    (row,) = throughput.loader_sweep(None, [0], batches=3)  # type: ignore[arg-type]
    assert row["workers"] == 0 and row["batches"] == 3 and row["clips_per_s"] > 0


def _run(cfg, steps: int) -> dict:
    model = build_model(cfg.model, cfg.data.num_frames, cfg.data.input_size)
    _, step = throughput.build_train_step(cfg, model, CPU)
    return throughput.end_to_end(cfg, model, step, CPU, torch.float32, steps=steps)


def test_real_steps_are_whole_optimizer_steps_and_the_wait_share_is_of_the_whole_step(demo_root) -> None:
    cfg = tiny_config(demo_root, "train.grad_accum_steps=2", "data.num_workers=0", "data.batch_size=2")
    r = _run(cfg, steps=3)
    assert r["steps"] == 4 and r["warmup_steps"] == 2  # both rounded up to whole optimizer steps of 2
    step_ms = r["wait_ms_per_step"] + r["compute_ms_per_step"]
    assert r["data_wait_share"] == pytest.approx(r["wait_ms_per_step"] / step_ms)
    assert r["clips_per_s"] == pytest.approx(2 * 1000 / step_ms)


def test_loads_that_fail_during_the_warm_up_steps_are_counted(demo_root, tmp_path) -> None:
    """Every batch holds the one broken video of the list (4 videos, batches of 4): the 2 warm-up steps meet it as
    the 2 timed ones do, and every failure of the 4 batches (the same seeded batches as the loader gives) counts."""
    with open(os.path.join(demo_root, "train.txt")) as f:
        good = [line for line in f.read().splitlines() if line.strip()][:3]
    (tmp_path / "broken.mp4").write_text("not a video")
    listed = tmp_path / "list.txt"
    listed.write_text("\n".join([*good, f"{tmp_path / 'broken.mp4'} 0"]) + "\n")
    cfg = tiny_config(demo_root, f"data.train_list={listed}", "data.num_workers=0", "train.grad_accum_steps=2")
    r = _run(cfg, steps=2)
    assert r["warmup_steps"] == 2 and r["steps"] == 2
    stream = throughput.endless_batches(throughput.profiling_loader(cfg))
    expected = sum(len(next(stream)["failures"]) for _ in range(4))
    stream.close()
    assert expected >= 4 and r["failed_loads"] == expected
