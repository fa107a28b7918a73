"""The verdict rule and the text table, on given numbers."""

from __future__ import annotations

import pytest

from aim_video.profiling.report import format_table, summary_text, verdict

LOADER = [{"workers": 1, "clips_per_s": 10.0}, {"workers": 2, "clips_per_s": 19.0}, {"workers": 4, "clips_per_s": 30.0}]


def test_loader_bound_when_waiting_and_workers_needed_from_the_largest_counts_rate() -> None:
    v = verdict(0.6, 35.0, LOADER, configured_workers=1, cpu_cores_per_rank=8)
    assert v["bound"] == "loader"
    assert v["end_to_end_clips_per_s"] == pytest.approx(14.0)  # 35 clips/s of compute, 40% of the time
    # none of the measured counts reaches 35 clips/s: scaled beyond 4 workers from their 7.5 each, not from the
    # single worker's 10 (per-worker rates fall as workers compete for cores)
    assert v["measured_sufficient_workers"] is None
    assert v["clips_per_s_per_worker"] == 7.5 and v["workers_needed"] == 5  # ceil(35 / 7.5)
    assert "in the loader sweep 4 worker(s) delivered 30.0 clips/s (7.5 per worker)" in v["text"]
    assert "raise data.num_workers from 1 to 5" in v["text"]


def test_more_workers_are_not_advised_when_the_sweep_measured_them_no_faster() -> None:
    """On 2 shared cores the sweep gave 253 clips/s with 1 worker and 246 with 2, and the verdict still said to
    raise data.num_workers to 2."""
    flat = [{"workers": 1, "clips_per_s": 253.0}, {"workers": 2, "clips_per_s": 246.0}]
    v = verdict(0.4, 300.0, flat, configured_workers=1, cpu_cores_per_rank=2)
    assert v["workers_needed"] == 3 and "raise data.num_workers" not in v["text"]
    assert "2 workers delivered 246.0 clips/s against 253.0 with 1: more workers do not help" in v["text"]


def test_loader_bound_run_caps_the_sweeps_rate_by_what_the_workers_delivered_in_training() -> None:
    """docs/gpu/2026-11-27-h200-2/run4_profile.json (H200, eager, batch 32): one worker alone gave 15.2 clips/s and
    the verdict said to raise data.num_workers from 12 to 13, while in training the 12 workers delivered 84.5 clips/s
    (7.0 each) and the loop waited 57% of the time."""
    run4 = [{"workers": 1, "clips_per_s": 15.225177161029809}]
    v = verdict(0.573046207772, 197.83772565315297, run4, configured_workers=12, cpu_cores_per_rank=16)
    assert v["bound"] == "loader"
    assert v["end_to_end_clips_per_s"] == pytest.approx(84.46756721337636)  # the run's own end-to-end clips/s
    assert v["clips_per_s_per_worker"] == pytest.approx(84.46756721337636 / 12)
    assert v["workers_needed"] == 29  # ceil(197.8 / 7.04)
    assert "raise data.num_workers" not in v["text"]
    assert "12 worker(s) delivered 84.5 clips/s (7.0 per worker, 0.46x the sweep's rate)" in v["text"]
    assert "more than the 16 CPU core(s) per rank" in v["text"]


def test_loader_bound_although_the_sweep_says_the_configured_workers_suffice() -> None:
    """12 configured workers, the sweep's 7.5 clips/s per worker would feed 60 clips/s with 8, yet the loop waited
    40%: the verdict said "about 6 worker(s)" and advised nothing."""
    v = verdict(0.40, 60.0, LOADER, configured_workers=12, cpu_cores_per_rank=16)
    assert v["bound"] == "loader" and v["workers_needed"] == 20  # 36 clips/s from 12 workers: 3 each
    assert "loader-bound although at the sweep's rate the 12 configured worker(s) would suffice" in v["text"]
    assert "more than the 16 CPU core(s) per rank" in v["text"]
    v = verdict(0.40, 60.0, LOADER, configured_workers=12, cpu_cores_per_rank=32)
    assert "raise data.num_workers from 12 to 20" in v["text"]


def test_compute_bound_when_hardly_waiting() -> None:
    v = verdict(0.02, 15.0, LOADER, configured_workers=2, cpu_cores_per_rank=8)
    assert v["bound"] == "compute"
    assert v["workers_needed"] == 2
    assert v["measured_sufficient_workers"] == 2
    assert v["text"].startswith("compute-bound")
    assert "in the loader sweep 2 worker(s) delivered 19.0 clips/s, enough" in v["text"]


def test_compute_bound_gives_no_advice_even_when_the_sweep_extrapolates_past_the_cores() -> None:
    v = verdict(0.02, 100.0, LOADER, configured_workers=2, cpu_cores_per_rank=4)
    assert v["bound"] == "compute" and v["workers_needed"] == 2  # the real steps kept up with 2
    assert "CPU core" not in v["text"] and "raise" not in v["text"] and "reencode" not in v["text"]


def test_compute_bound_with_clips_read_in_the_training_process_needs_no_worker() -> None:
    """data.num_workers=0, hardly waiting: the verdict asked for 3 workers ("so about 3 at that rate")."""
    v = verdict(0.02, 100.0, LOADER, configured_workers=0, cpu_cores_per_rank=4)
    assert v["bound"] == "compute" and v["workers_needed"] == 0
    assert v["text"].endswith("the clips read in the training process: that suffices.")


def test_threshold_is_the_boundary_and_cores_cap_is_named() -> None:
    assert verdict(0.10, 5.0, LOADER, 1, 8)["bound"] == "compute"
    assert verdict(0.11, 5.0, LOADER, 1, 8)["bound"] == "loader"
    v = verdict(0.5, 100.0, LOADER, 2, cpu_cores_per_rank=4)
    assert v["workers_needed"] == 14  # ceil(100 / 7.5)
    assert "more than the 4 CPU core(s) per rank" in v["text"] and "backend" not in v["text"]
    v = verdict(0.5, 100.0, LOADER, 2, cpu_cores_per_rank=4, faster_backend="torchcodec")
    assert "prepare_kinetics.py reencode; data.backend=torchcodec)" in v["text"]


def test_summary_prints_mfu_as_percent_and_flops_with_macs() -> None:
    row = dict(
        batch_size=32, oom=False, train_clips_per_s=200.0, train_step_ms=160.0, train_peak_mib=22309.0,
        train_tflops=171.6, train_mfu=0.1734, infer_clips_per_s=583.8, infer_peak_mib=1555.0,
    )  # fmt: skip
    e2e = dict(
        steps=10, batch_size=32, workers=12, clips_per_s=84.5, data_wait_share=0.573, wait_ms_per_step=217.1,
        compute_ms_per_step=161.7, mfu=0.0732,
    )  # fmt: skip
    result = {
        "device": {"name": "NVIDIA H200", "type": "cuda", "cpu_cores": 16, "torch_threads": 16, "torch": "2.14.1"},
        "config": {
            "dtype": "bfloat16",
            "arch": "vit_b16",
            "num_frames": 8,
            "input_size": 224,
            "train_list": "t.txt",
            "batch_size": 32,
            "loader_delay_s": 0.0,
        },  # fmt: skip
        "params": {"total": 97_000_000, "trainable": 11_000_000},
        "flops": {"forward_per_clip": 404_176_625_664, "train_per_clip": 857_833_463_808},
        "peak": {"peak_tflops": 989.4, "source": "table"},
        "memory_kind": "cuda_max_allocated",
        "loader": [{"workers": 1, "clips_per_s": 15.2, "batch_ms": 2100.0, "startup_s": 1.0}],
        "model": [row],
        "end_to_end": e2e,
        "verdict": {"text": "loader-bound."},
    }
    text = summary_text(result)
    assert "forward 404.177 GFLOP" in text and "202.088 and 428.917 GMACs" in text
    header, _, values = text.split("model (synthetic")[1].splitlines()[1:4]
    assert "MFU %" in header
    assert "17.3" in values.split() and "0.173" not in values  # the same unit as the end-to-end line
    assert "MFU 7.3%" in text and "loads failed" not in text
    result["loader"][0]["failed_loads"], e2e["failed_loads"] = 2, 1  # bad videos replaced: their cost is in the rates
    assert "note: 3 loads failed and were replaced by other videos" in summary_text(result)


def test_format_table_aligns_columns() -> None:
    text = format_table(["workers", "clips/s"], [[1, 12.345], [16, None]])
    lines = text.splitlines()
    assert lines[0].split() == ["workers", "clips/s"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["1", "12.3"] and lines[3].split() == ["16", "-"]
    assert len({len(line) for line in lines}) == 1


def test_as_many_workers_as_cores_is_advised_not_called_too_many() -> None:
    """4 workers needed on 4 cores per rank: raise the workers (the cores suffice), not 'more than the cores'."""
    v = verdict(0.5, 30.0, LOADER, configured_workers=2, cpu_cores_per_rank=4)
    assert v["workers_needed"] == 4
    assert "raise data.num_workers from 2 to 4" in v["text"] and "CPU core" not in v["text"]


def test_more_workers_within_five_percent_of_the_configured_count_do_not_help() -> None:
    flat = [{"workers": 1, "clips_per_s": 100.0}, {"workers": 2, "clips_per_s": 103.0}]
    v = verdict(0.4, 300.0, flat, configured_workers=1, cpu_cores_per_rank=2)
    assert "2 workers delivered 103.0 clips/s against 100.0 with 1: more workers do not help" in v["text"]


def test_the_sweep_rows_may_come_in_any_order() -> None:
    assert verdict(0.6, 35.0, LOADER[::-1], 1, 8) == verdict(0.6, 35.0, LOADER, 1, 8)
