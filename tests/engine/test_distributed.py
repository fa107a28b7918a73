"""distributed.py: a Slurm job step forms one world without a launcher."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

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
