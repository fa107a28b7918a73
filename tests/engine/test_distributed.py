"""distributed.py: a Slurm job step forms one world without a launcher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from aim_video.engine.distributed import first_slurm_host, world_from_slurm


@pytest.mark.parametrize(
    "nodelist,host",
    [("gpu-[07-09,12],cpu3", "gpu-07"), ("node[1,4]x", "node1x"), ("host1,host2", "host1"), ("a[001-004]", "a001")],
)
def test_first_host_of_a_slurm_hostlist(nodelist: str, host: str) -> None:
    assert first_slurm_host(nodelist) == host


STEP = {"SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
        "SLURM_STEP_NODELIST": "gpu-[07-08]", "SLURM_JOB_NODELIST": "gpu-[07-08]"}  # fmt: skip


def test_a_job_step_sets_the_launcher_variables() -> None:
    env = dict(STEP)
    assert world_from_slurm(env)
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu-07", "MASTER_PORT": "23456"
    }  # fmt: skip
    one_gpu = dict(STEP, CUDA_VISIBLE_DEVICES="5", MASTER_PORT="29500")  # srun --gpus-per-task=1
    assert world_from_slurm(one_gpu) and one_gpu["LOCAL_RANK"] == "0" and one_gpu["MASTER_PORT"] == "29500"


def test_a_launcher_or_a_batch_script_is_left_alone() -> None:
    launched = dict(STEP, WORLD_SIZE="8", RANK="3")  # the deepspeed launcher (or torchrun) inside a Slurm job
    assert not world_from_slurm(launched) and launched["RANK"] == "3"
    batch = {k: v for k, v in STEP.items() if k != "SLURM_STEP_NUM_TASKS"}  # plain python in the sbatch script
    assert not world_from_slurm(batch) and "WORLD_SIZE" not in batch


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("entry", ["train", "eval"])
def test_two_srun_tasks_form_one_world(tmp_path, entry: str) -> None:
    """Two processes started as Slurm would start them (no launcher) join one process group, for training
    (DeepSpeed's init) and for evaluation alike, and an all-reduce sees both."""
    code = (
        "import torch, torch.distributed as dist\n"
        + (
            "from aim_video.engine.distributed import init_distributed\ninfo = init_distributed()\n"
            if entry == "train"
            else "from aim_video.eval.loading import init_process\ninfo = init_process()\n"
        )
        + "t = torch.tensor([float(info.rank + 1)])\ndist.all_reduce(t)\n"
        "print(info.rank, info.world_size, int(t.item()), flush=True)\ndist.destroy_process_group()\n"
    )
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR")}
        env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", MASTER_PORT=port, SLURM_STEP_NUM_TASKS="2",
                   SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_STEP_NODELIST="localhost")  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=240)[0].strip().splitlines()[-1].split() for p in procs]  # after DeepSpeed's lines
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [["0", "2", "3"], ["1", "2", "3"]]


def test_stop_signals_are_remembered_checked_and_restored() -> None:
    import signal

    import torch

    from aim_video.engine.distributed import catch_stop_signals, restore_signals, stop_requested

    before = signal.getsignal(signal.SIGUSR1)
    previous = catch_stop_signals("SIGUSR1, usr2")
    try:
        assert set(previous) == {signal.SIGUSR1, signal.SIGUSR2}
        assert stop_requested(torch.device("cpu")) == 0
        os.kill(os.getpid(), signal.SIGUSR2)  # the process goes on: the handler only takes note
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop_requested(torch.device("cpu")) == signal.SIGUSR2  # the first one received
    finally:
        restore_signals(previous)
    assert signal.getsignal(signal.SIGUSR1) is before
    assert catch_stop_signals("") == {}
    import threading

    elsewhere: dict = {}
    thread = threading.Thread(target=lambda: elsewhere.update(got=catch_stop_signals("SIGUSR1")))
    thread.start()
    thread.join()
    assert elsewhere == {"got": {}} and signal.getsignal(signal.SIGUSR1) is before  # not the main thread: untouched
    for bad in ("SIGKILL", "SIGNOPE"):
        with pytest.raises(ValueError, match="train.stop_signals: .* is not a signal that can be caught"):
            catch_stop_signals(bad)


def test_a_world_of_one_picks_another_port_when_its_free_port_was_taken_meanwhile(tmp_path):
    """A plain `python tools/train.py` picks a free port for its one-process store; another process on the machine
    took it in between once (EADDRINUSE in CI while other runs were going on)."""
    import subprocess
    import sys

    code = (
        "import os, socket\n"
        "os.environ.pop('WORLD_SIZE', None); os.environ.pop('MASTER_PORT', None)\n"
        "busy = socket.socket(); busy.bind(('127.0.0.1', 0)); busy.listen(1)\n"
        "from aim_video.engine import distributed\n"
        "ports = iter([busy.getsockname()[1]])\n"
        "real = distributed._free_port\n"
        "distributed._free_port = lambda: next(ports, None) or real()\n"
        "info = distributed.init_distributed()\n"
        "print('WORLD', info.world_size, os.environ['MASTER_PORT'] != str(busy.getsockname()[1]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_PORT", "LOCAL_RANK")}
    env.update(DS_ACCELERATOR="cpu", PYTHONPATH=os.getcwd())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert "WORLD 1 True" in out.stdout, out.stderr[-2000:]


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_the_cuda_rng_state_is_this_devices_and_older_per_device_lists_restore() -> None:
    import torch

    from aim_video.engine.distributed import rng_state, set_rng_state

    torch.cuda.manual_seed(7)
    state = rng_state()
    assert isinstance(state["cuda"], torch.Tensor)  # one device's state, restorable under any number of GPUs
    expected = torch.rand(3, device="cuda")
    set_rng_state(state)
    assert torch.equal(torch.rand(3, device="cuda"), expected)
    set_rng_state({**state, "cuda": [state["cuda"]] * (torch.cuda.current_device() + 1)})  # an older checkpoint
    assert torch.equal(torch.rand(3, device="cuda"), expected)
    set_rng_state({**state, "cuda": []})  # saved on fewer visible devices than this rank's index: left as it is


def test_a_rank_without_saved_rng_states_does_not_replay_its_first_streams():
    """An elastic resume on more ranks: the new ranks have no RNG file. They kept the streams seeded at start, so
    their drop_path and MixUp draws repeated those of step 0; now they draw fresh streams of (seed, rank, step)."""
    import torch

    from aim_video.engine.distributed import restore_rng, rng_state, seed_everything

    seed_everything(7, 3)
    at_start = torch.rand(4)
    assert restore_rng(None, 7, 3, 120) is False
    joined = torch.rand(4)
    restore_rng(None, 7, 3, 120)
    assert torch.equal(torch.rand(4), joined) and not torch.equal(joined, at_start)  # reproducible, not replayed
    restore_rng(None, 7, 4, 120)
    assert not torch.equal(torch.rand(4), joined)  # and per rank
    saved = rng_state()
    expected = torch.rand(4)
    assert restore_rng(saved, 7, 3, 120) is True and torch.equal(torch.rand(4), expected)


def _agree_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from aim_video.engine.distributed import rank_with_non_finite

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        losses = [[0.5, float("nan"), 1.0], [0.7, 2.0, float("inf")]][rank]  # three micro-steps
        seen = [rank_with_non_finite(loss, rank, torch.device("cpu")) for loss in losses]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(seen, f)
    finally:
        dist.destroy_process_group()


def _sizes_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from aim_video.data.annotations import AnnotationError
    from aim_video.engine.fit import same_data_on_every_rank

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        same_data_on_every_rank(12, "train.txt")  # the same on both: nothing to say
        try:
            same_data_on_every_rank([12, 11][rank], "train.txt")  # rank 1 dropped a video the other sees
            said = ""
        except AnnotationError as err:
            said = str(err)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(said, f)
    finally:
        dist.destroy_process_group()


def test_ranks_that_read_different_lists_stop_together_naming_the_sizes(tmp_path):
    """A video dropped as missing, or a verify report found stale, on one node only: the ranks left the epoch at
    different steps and waited in each other's collectives until a timeout."""
    import torch.multiprocessing as mp

    from aim_video.engine.fit import same_data_on_every_rank

    same_data_on_every_rank(5, "train.txt")  # a world of one: no collective, nothing to compare
    mp.start_processes(_sizes_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    said = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert said[0] == said[1] and "train.txt: the ranks see different videos (12, 11 by rank)" in said[0]


def test_every_rank_learns_that_one_rank_has_a_non_finite_loss(tmp_path):
    """A NaN on one rank stopped that rank alone; the others waited in the next gradient all-reduce until the
    launcher (30 s) or, under srun, the collective's timeout killed them. Now all ranks agree at the same micro-step."""
    import torch.multiprocessing as mp

    from aim_video.engine.distributed import rank_with_non_finite

    assert rank_with_non_finite(float("nan"), 0, torch.device("cpu")) == 0  # one process: no collective
    assert rank_with_non_finite(2.0, 0, torch.device("cpu")) == -1
    # spawned (a fork would inherit this pytest process's world of one, made by earlier tests)
    mp.start_processes(_agree_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    seen = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert seen == [[-1, 0, 1], [-1, 0, 1]]  # both ranks name the rank with the NaN, then the one with the inf
