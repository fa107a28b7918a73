"""The verdict rule and the text table, on given numbers."""

from __future__ import annotations

from aim_video.profiling.report import format_table, verdict

LOADER = [{"workers": 1, "clips_per_s": 10.0}, {"workers": 2, "clips_per_s": 19.0}, {"workers": 4, "clips_per_s": 30.0}]


def test_loader_bound_when_waiting_and_workers_needed_from_per_worker_rate() -> None:
    v = verdict(0.6, 35.0, LOADER, configured_workers=1, cpu_cores_per_rank=8)
    assert v["bound"] == "loader"
    assert v["clips_per_s_per_worker"] == 10.0
    assert v["workers_needed"] == 4  # ceil(35 / 10)
    assert v["measured_sufficient_workers"] is None  # none of the measured counts reaches 35 clips/s
    assert "raise data.num_workers from 1 to 4" in v["text"]


def test_more_workers_are_not_advised_when_the_sweep_measured_them_no_faster() -> None:
    """On 2 shared cores the sweep gave 253 clips/s with 1 worker and 246 with 2, and the verdict still said to
    raise data.num_workers to 2."""
    flat = [{"workers": 1, "clips_per_s": 253.0}, {"workers": 2, "clips_per_s": 246.0}]
    v = verdict(0.4, 300.0, flat, configured_workers=1, cpu_cores_per_rank=2)
    assert v["workers_needed"] == 2 and "raise data.num_workers" not in v["text"]
    assert "2 workers delivered 246.0 clips/s against 253.0 with 1: more workers do not help" in v["text"]


def test_compute_bound_when_hardly_waiting() -> None:
    v = verdict(0.02, 15.0, LOADER, configured_workers=2, cpu_cores_per_rank=8)
    assert v["bound"] == "compute"
    assert v["workers_needed"] == 2
    assert v["measured_sufficient_workers"] == 2
    assert v["text"].startswith("compute-bound")


def test_threshold_is_the_boundary_and_cores_cap_is_named() -> None:
    assert verdict(0.10, 5.0, LOADER, 1, 8)["bound"] == "compute"
    assert verdict(0.11, 5.0, LOADER, 1, 8)["bound"] == "loader"
    v = verdict(0.5, 100.0, LOADER, 2, cpu_cores_per_rank=4)
    assert v["workers_needed"] == 10
    assert "more than the 4 CPU core(s) per rank" in v["text"] and "backend" not in v["text"]
    v = verdict(0.5, 100.0, LOADER, 2, cpu_cores_per_rank=4, faster_backend="torchcodec")
    assert "prepare_kinetics.py reencode; data.backend=torchcodec)" in v["text"]


def test_format_table_aligns_columns() -> None:
    text = format_table(["workers", "clips/s"], [[1, 12.345], [16, None]])
    lines = text.splitlines()
    assert lines[0].split() == ["workers", "clips/s"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].split() == ["1", "12.3"] and lines[3].split() == ["16", "-"]
    assert len({len(line) for line in lines}) == 1
