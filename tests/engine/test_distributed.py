"""distributed.py: a Slurm job step forms one world without a launcher."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from aim_video.engine.distributed import first_slurm_host, slurm_master_port, world_from_slurm
from tests.tools.conftest import PYTHONPATH


@pytest.mark.parametrize(
    "nodelist,host",
    [
        ("gpu-[07-09,12],cpu3", "gpu-07"),
        ("node[1,4]x", "node1x"),
        ("host1,host2", "host1"),
        ("a[001-004]", "a001"),
        ("rack[1-2]-node[01-04]", "rack1-node01"),  # every bracket group of the first host (was "rack1-node[01-04]")
        ("r[3,5]n[7-8],x", "r3n7"),
    ],
)
def test_first_host_of_a_slurm_hostlist(nodelist: str, host: str) -> None:
    assert first_slurm_host(nodelist) == host


STEP = {"SLURM_STEP_NUM_TASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
        "SLURM_STEP_NODELIST": "gpu-[07-08]", "SLURM_JOB_NODELIST": "gpu-[07-08]"}  # fmt: skip


def test_a_job_step_sets_the_launcher_variables() -> None:
    env = dict(STEP)
    assert world_from_slurm(env)
    assert {k: env[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")} == {
        "RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu-07",
        "MASTER_PORT": str(slurm_master_port(123456, 0)),
    }  # fmt: skip
    one_gpu = dict(STEP, CUDA_VISIBLE_DEVICES="5", MASTER_PORT="29500")  # srun --gpus-per-task=1
    assert world_from_slurm(one_gpu) and one_gpu["LOCAL_RANK"] == "0" and one_gpu["MASTER_PORT"] == "29500"


def test_the_steps_of_one_job_get_their_own_ports_below_the_ephemeral_range() -> None:
    """Two job steps of one allocation on one node got the same port (20000 + job id % 20000): the second failed
    with EADDRINUSE. The range also reached into 32768-60999, where any outgoing connection may hold a port."""
    ports = []
    for step in range(3):
        env = dict(STEP, SLURM_STEP_ID=str(step))
        world_from_slurm(env)
        ports.append(int(env["MASTER_PORT"]))
    assert len(set(ports)) == 3
    jobs = [slurm_master_port(job, step) for job in range(123400, 123500) for step in range(8)]
    assert len(set(jobs)) == len(jobs)  # nearby jobs' first steps never meet
    assert all(20000 <= p < 32768 for p in jobs + [slurm_master_port(19999 + 40000 * k, 4294967294) for k in range(99)])


def test_a_step_of_one_task_is_a_world_of_one_with_a_port_of_its_own() -> None:
    """A sweep (`srun -n1 train A & srun -n1 train B &` on one node): each step picks a free port, an exported
    MASTER_PORT included, and uses its first visible GPU."""
    env = dict(STEP, SLURM_STEP_NUM_TASKS="1", SLURM_PROCID="0", SLURM_LOCALID="3", MASTER_PORT="29500",
               CUDA_VISIBLE_DEVICES="0,1,2,3")  # fmt: skip
    assert world_from_slurm(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("0", "1", "0", "127.0.0.1")
    assert "MASTER_PORT" not in env  # init_distributed picks a free one (and another on EADDRINUSE)


@pytest.mark.parametrize(
    "visible,local_id,local_rank",
    [("", "5", "5"), ("0,1,2,3,4,5,6,7", "5", "5"), ("3", "5", "0"), ("2,3", "3", "1"), ("4,5,6,7", "6", "2")],
)
def test_the_local_rank_is_the_local_id_modulo_the_visible_gpus(visible: str, local_id: str, local_rank: str) -> None:
    """--gpus-per-task=2 or --gpu-bind=closest show a task fewer GPUs than its local id: it asked for a device
    that does not exist (invalid device ordinal)."""
    env = dict(STEP, SLURM_LOCALID=local_id, CUDA_VISIBLE_DEVICES=visible)
    assert world_from_slurm(env) and env["LOCAL_RANK"] == local_rank


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
            "from aim_video.engine.distributed import init_distributed\ninfo = init_distributed(0.5)\n"
            if entry == "train"
            else "from aim_video.eval.loading import init_process\ninfo = init_process(0.5)\n"
        )
        + "t = torch.tensor([float(info.rank + 1)])\ndist.all_reduce(t)\n"
        # the collectives' timeout is train.dist_timeout_min (here 0.5 min), not DeepSpeed's or torch's 10 minutes
        "timeout = dist.distributed_c10d._get_default_group()._get_backend(torch.device('cpu')).options._timeout\n"
        "print(info.rank, info.world_size, int(t.item()), int(timeout.total_seconds()), flush=True)\n"
        "dist.destroy_process_group()\n"
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
    assert outs == [["0", "2", "3", "30"], ["1", "2", "3", "30"]]


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
        "real = distributed.free_port\n"
        "distributed.free_port = lambda: next(ports, None) or real()\n"
        "info = distributed.init_distributed()\n"
        "print('WORLD', info.world_size, os.environ['MASTER_PORT'] != str(busy.getsockname()[1]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "MASTER_PORT", "LOCAL_RANK")}
    env.update(DS_ACCELERATOR="cpu", PYTHONPATH=PYTHONPATH)
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
        said = []
        for size, fingerprint in (([12, 11][rank], ""), (12, ["a1", "b2"][rank])):  # rank 1 dropped a video the
            try:  # other sees; then each rank lacks another one: as many, other videos (evaluation joins by index)
                same_data_on_every_rank(size, "train.txt", fingerprint)
                said.append("")
            except AnnotationError as err:
                said.append(str(err))
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
    assert said[0] == said[1] and "train.txt: the ranks see different videos (12, 11 by rank)" in said[0][0]
    assert "the ranks see different videos (as many (12, 12), but not the same ones)" in said[0][1]


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


def _agreement_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from aim_video.config import ConfigError
    from aim_video.engine.distributed import DistInfo, check_shared_folder, first_failure

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    info = DistInfo(rank=rank, world_size=2, local_rank=rank, device=torch.device("cpu"))
    seen: dict = {}
    try:
        shared = os.path.join(out_dir, "shared_run")
        check_shared_folder(shared, info, wait_s=1)  # one folder: nothing to say, nothing left behind
        seen["shared_left"] = os.listdir(shared)
        try:  # each rank's own folder, as on nodes where the path is not the shared file system
            check_shared_folder(os.path.join(out_dir, f"node{rank}", "run"), info, wait_s=1)
        except ConfigError as err:
            seen["unshared"] = str(err)
        seen["none"] = first_failure(None)
        seen["one"] = first_failure((3, "videos/v07.mp4: not found") if rank == 1 else None)
        seen["both"] = first_failure((2, f"bad on {rank}"))
        with open(os.path.join(out_dir, f"agree{rank}.json"), "w") as f:
            json.dump(seen, f)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def agreement(tmp_path_factory) -> list[dict]:
    """Two gloo ranks (spawned: a fork would inherit this process's world of one) run the agreement helpers."""
    import torch.multiprocessing as mp

    tmp = tmp_path_factory.mktemp("agree")
    mp.start_processes(_agreement_worker, args=(str(tmp / "init"), str(tmp)), nprocs=2, start_method="spawn")
    return [json.load(open(tmp / f"agree{r}.json")) for r in range(2)]


def test_an_output_dir_that_is_not_shared_by_every_rank_is_refused_on_every_rank(agreement, tmp_path):
    """Ranks on nodes where output_dir is a local folder wrote their checkpoint shards there, and rank 0 renamed
    an incomplete checkpoint into place: found only at the resume."""
    from aim_video.engine.distributed import DistInfo, check_shared_folder

    assert [a["shared_left"] for a in agreement] == [[], []]
    for rank, seen in enumerate(agreement):  # both ranks stop, with the same words (here each names its own path)
        said = seen.get("unshared", "")
        assert f"node{rank}/run is not one folder shared by every rank" in said and "that rank 1 (on " in said
    one = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    check_shared_folder(str(tmp_path / "solo"), one)  # a world of one: nothing to check, nothing written
    assert not (tmp_path / "solo").exists()


def test_every_rank_learns_the_first_failure_of_any_rank(agreement):
    """tools/test.py: a rank that failed alone (a video missing on its node under --strict, a load error) returned
    while the others waited in the gather of results until the timeout."""
    from aim_video.engine.distributed import first_failure

    assert [a["none"] for a in agreement] == [None, None]
    assert [a["one"] for a in agreement] == [[3, "rank 1: videos/v07.mp4: not found"]] * 2
    assert [a["both"] for a in agreement] == [[2, "rank 0 (and 1 other rank): bad on 0"]] * 2
    assert first_failure((2, "alone")) == (2, "alone")  # a world of one: the message as it is


def test_deepspeed_logs_go_to_stderr_where_they_do_not_mix_with_the_tools_results(capsys):
    """DeepSpeed logs to stdout: infer.py's first output line was its 'Setting accelerator to CPU' warning."""
    from deepspeed.utils.logging import logger

    from aim_video.engine.distributed import deepspeed_logs_to_stderr

    deepspeed_logs_to_stderr()
    logger.warning("a DeepSpeed warning")
    out, err = capsys.readouterr()
    assert "a DeepSpeed warning" in err and "a DeepSpeed warning" not in out
    deepspeed_logs_to_stderr()  # once is enough: a second call adds no handler
    logger.warning("once")
    assert capsys.readouterr().err.count("once") == 1


def _ds_sections_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1")
    os.environ.update(MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    from aim_video.config import load_config
    from aim_video.engine.deepspeed_setup import derive_ds_config
    from aim_video.engine.distributed import init_distributed

    info = init_distributed()
    said = []
    for override in ("train.deepspeed.zero_optimisation.stage=1", "train.deepspeed.comms_logger.enabled=false"):
        try:
            derive_ds_config(load_config(None, [override]), info.world_size)
            said.append("")
        except ValueError as err:
            said.append(str(err))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(said, f)
    import torch.distributed as dist

    dist.destroy_process_group()


def test_a_misspelt_deepspeed_section_is_refused_on_two_ranks_too(tmp_path):
    """The check parsed DeepSpeed's config with the global batch of one rank: under a process group of 2 DeepSpeed's
    own batch check failed first, and the check let every section through."""
    import torch.multiprocessing as mp

    from aim_video.engine.distributed import free_port

    mp.start_processes(_ds_sections_worker, args=(free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    for rank in range(2):
        refused, accepted = json.load(open(tmp_path / f"rank{rank}.json"))
        assert "Did you mean 'zero_optimization'?" in refused and accepted == ""


def test_a_launchers_port_held_by_another_job_is_named_not_a_traceback(tmp_path):
    """Relaunching while the ranks of a killed launch still ran gave torch's DistNetworkError traceback."""
    from tests.tools.conftest import PYTHONPATH

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": PYTHONPATH, "DS_ACCELERATOR": "cpu", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}  # fmt: skip
        code = "from aim_video.engine.distributed import init_distributed; init_distributed(0.2)"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert f"ConfigError: port {port} of 127.0.0.1 is in use: another job is running there" in proc.stderr


def _signalled_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from aim_video.engine.distributed import catch_stop_signals, restore_signals, stop_requested

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    previous = catch_stop_signals("SIGTERM,SIGUSR1")
    try:
        seen = [stop_requested(torch.device("cpu"))]
        if rank == 1:
            os.kill(os.getpid(), signal.SIGUSR1)  # one rank only: every rank learns it
        seen.append(stop_requested(torch.device("cpu")))
        if rank == 0:
            os.kill(os.getpid(), signal.SIGUSR1)  # now both (Slurm signals every task of the job)
        seen.append(stop_requested(torch.device("cpu")))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(seen, f)
    finally:
        restore_signals(previous)
        dist.destroy_process_group()


def test_a_signal_that_every_rank_received_is_that_signal_on_every_rank(tmp_path):
    """A scheduler signals every process of the job: the ranks agree on the signal (an all-reduce), which must stay
    a signal's number (a sum of two SIGUSR1s is SIGTSTP's, of more ranks no signal at all)."""
    import torch.multiprocessing as mp

    mp.start_processes(_signalled_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="spawn")
    seen = [json.load(open(tmp_path / f"rank{r}.json")) for r in range(2)]
    assert seen == [[0, signal.SIGUSR1, signal.SIGUSR1]] * 2


def test_seed_everything_seeds_python_and_numpy_too():
    """Augmentations and samplers draw from Python's and NumPy's streams: a rank's streams are reproducible."""
    from aim_video.engine.distributed import seed_everything

    seed_everything(7, 3)
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(7, 3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first
    seed_everything(7, 4)
    other = (random.random(), np.random.rand(), torch.rand(1).item())
    assert all(a != b for a, b in zip(first, other, strict=True))


def test_a_stop_signal_of_an_earlier_run_does_not_stop_the_next_one():
    """fit() in a notebook or a sweep in one process: a stop received by the first run is forgotten when the next
    one starts catching signals."""
    from aim_video.engine.distributed import catch_stop_signals, restore_signals, stop_requested

    previous = catch_stop_signals("SIGUSR1")
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop_requested(torch.device("cpu")) == signal.SIGUSR1
    finally:
        restore_signals(previous)
    previous = catch_stop_signals("SIGUSR1")
    try:
        assert stop_requested(torch.device("cpu")) == 0
    finally:
        restore_signals(previous)


def test_sigstop_cannot_be_a_stop_signal():
    from aim_video.engine.distributed import catch_stop_signals

    with pytest.raises(ValueError, match="'SIGSTOP' is not a signal that can be caught"):
        catch_stop_signals("SIGSTOP")
