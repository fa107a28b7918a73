"""Process-group set-up, small collectives, RNG state capture and the fault points the crash tests use.

`tools/train.py` runs under the `deepspeed` launcher (env vars RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT set by
it), as one task per GPU of a Slurm job step (`srun`; :func:`world_from_slurm` sets the same variables from Slurm's),
or as a plain single process; :func:`init_distributed` fills in a one-process world in the last case so the same
DeepSpeed code path runs all three. On a CPU machine (`DS_ACCELERATOR=cpu`) the backend is gloo.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from aim_video.config import ConfigError

FAULT_ENV = "AIM_VIDEO_FAULT"


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stable_extension_builds() -> str:
    """Make DeepSpeed's JIT-built C++ ops (the CPU shared-memory comm op) build once per Python environment.

    torch runs whichever `ninja` is first on PATH; two ninja versions (a venv's pip `ninja` and the system one)
    hash build commands differently, so processes with different PATHs sharing ~/.cache/torch_extensions rebuild
    the op for each other on every start (minutes each on a small machine). This puts the running environment's own
    ninja first and, unless TORCH_EXTENSIONS_DIR is set, uses a cache folder of this environment's own.
    """
    bin_dir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if os.path.isfile(os.path.join(bin_dir, "ninja")) and path.split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + path
    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        tag = hashlib.sha1(sys.prefix.encode()).hexdigest()[:8]
        os.environ["TORCH_EXTENSIONS_DIR"] = os.path.expanduser(f"~/.cache/torch_extensions/aim_video_{tag}")
    return os.environ["TORCH_EXTENSIONS_DIR"]


def first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: "gpu-[07-09,12],cpu3" -> "gpu-07", "node[1,4]x" -> "node1x"."""
    depth, first = 0, ""
    for ch in nodelist:  # the first entry: up to a comma outside brackets
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            break
        first += ch
    if "[" not in first:
        return first.strip()
    head, rest = first.split("[", 1)
    inside, tail = rest.split("]", 1)
    return f"{head}{inside.split(',')[0].split('-')[0]}{tail}".strip()


def world_from_slurm(env: dict[str, str] | os._Environ = os.environ) -> bool:
    """Under `srun` (a Slurm job step) and no launcher: set RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT from
    Slurm's variables, so `srun --ntasks-per-node=8 python tools/train.py ...` (one task per GPU) forms one world.

    Without this every task would train alone on GPU 0 of its node, all writing the same output folder. Only a job
    step has SLURM_STEP_NUM_TASKS (a plain `python` in an sbatch script stays a world of one). MASTER_PORT, unless
    set, derives from the job id, the same in every task. Returns whether Slurm's variables were used.
    """
    if "WORLD_SIZE" in env or "SLURM_STEP_NUM_TASKS" not in env or "SLURM_PROCID" not in env:
        return False
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    env.update(
        RANK=env["SLURM_PROCID"],
        WORLD_SIZE=env["SLURM_STEP_NUM_TASKS"],
        # --gpus-per-task=1 leaves each task one visible GPU: device 0, whatever its place on the node
        LOCAL_RANK="0" if len(visible) == 1 else env.get("SLURM_LOCALID", "0"),
        MASTER_ADDR=env.get("MASTER_ADDR")
        or first_slurm_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"),
    )
    env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0") or 0) % 20000))
    return True


def init_distributed() -> DistInfo:
    """Initialise DeepSpeed's process group (gloo on CPU, nccl on CUDA) and return this process's place in it."""
    stable_extension_builds()
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    world_from_slurm()
    own_port = "WORLD_SIZE" not in os.environ and "MASTER_PORT" not in os.environ
    if "WORLD_SIZE" not in os.environ:  # plain `python tools/train.py`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    accel = get_accelerator()
    backend = accel.communication_backend_name()
    if accel.device_name() == "cpu":
        backend = "gloo"
    for attempt in range(3):
        try:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False)
            break
        except RuntimeError as err:  # torch's DistNetworkError
            # the free port this process picked was taken before its store could listen (another process on the
            # machine opened a connection from it): pick another; a port the user or a launcher set is theirs
            if not own_port or "EADDRINUSE" not in str(err) or attempt == 2:
                raise
            os.environ["MASTER_PORT"] = str(_free_port())
    rank, world = dist.get_rank(), dist.get_world_size()
    if accel.device_name() == "cpu":
        release_shm_segment(rank)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if accel.device_name() == "cpu":
        device = torch.device("cpu")
    else:
        accel.set_device(local_rank)
        device = torch.device(accel.device_name(local_rank))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shm_segment_path(rank: int) -> str:
    """The /dev/shm file DeepSpeed's CPU shared-memory all-reduce op maps for `rank` of this launch.

    DeepSpeed 0.19 (`ops/csrc/cpu/comm/shm.cpp`) creates it at init when every rank is local (the launcher sets
    LOCAL_SIZE), named after the user, MASTER_ADDR, MASTER_PORT and the rank, about 66 MB each.
    """
    addr, port = os.environ.get("MASTER_ADDR", ""), os.environ.get("MASTER_PORT", "")
    return f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank}"


def release_shm_segment(rank: int) -> None:
    """Unlink this rank's DeepSpeed shared-memory segment once every rank has mapped every segment.

    DeepSpeed never unlinks them, so each CPU launch left world_size x 66 MB in /dev/shm (RAM) until the machine
    filled up and the kernel killed processes. All ranks open all segments inside `deepspeed.init_distributed`, so
    after a barrier the names are no longer needed; the mappings stay valid until the processes exit, and a killed
    run leaves nothing behind either.
    """
    barrier()
    try:
        os.unlink(shm_segment_path(rank))
    except FileNotFoundError:  # not created: a single process, or ranks on several machines
        pass


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few Python floats over ranks (float64 on CPU: gloo handles CPU tensors)."""
    tensor = torch.tensor(values, dtype=torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() != "gloo":
            tensor = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (small picklable objects: failure lists, counters)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def seed_everything(seed: int, rank: int, step: int = 0) -> None:
    """Different but reproducible streams per rank (dropout, drop_path and MixUp differ across ranks); `step` > 0
    gives the streams of a rank that joins a resumed run there (see `restore_rng`)."""
    value = seed + 1000 * rank + 1_000_003 * step
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def rng_state() -> dict[str, Any]:
    """This process's RNG states (Python, NumPy, torch CPU and CUDA) for an exact resume."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this rank's device only: the launcher shows each rank every GPU of the node, and a resume on fewer GPUs
        # could not restore 8 devices' states (and each rank's own stream is the one that matters)
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, Any] | None, seed: int, rank: int, step: int) -> bool:
    """This rank's RNG states from a checkpoint; a rank the saving world did not have (an elastic resume on more
    ranks) gets fresh streams of (seed, rank, step) instead of replaying the ones it started the run with. Returns
    whether saved states were restored."""
    if state is None:
        seed_everything(seed, rank, step)
        return False
    set_rng_state(state)
    return True


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible device's state; this rank's device's
            index = torch.cuda.current_device()
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)


_STOP_SIGNAL = 0  # the first stop signal this process received (0: none)


class TrainingStopped(Exception):
    """Training stopped on a signal after saving a checkpoint at `step`: rerun with `--resume auto` to go on."""

    def __init__(self, signum: int, step: int):
        super().__init__(
            f"stopped by {signal.Signals(signum).name} at step {step}: a checkpoint was saved there; "
            "continue with --resume auto"
        )
        self.signum, self.step = signum, step


def parse_stop_signals(names: str) -> list[signal.Signals]:
    """The signals of train.stop_signals ("SIGTERM,SIGUSR1", "TERM", "" = none); fails naming the key on a bad one."""
    wanted = []
    for name in filter(None, (n.strip().upper() for n in names.split(","))):
        signum = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
        if not isinstance(signum, signal.Signals) or signum in (signal.SIGKILL, signal.SIGSTOP):
            raise ConfigError(f"train.stop_signals: {name!r} is not a signal that can be caught (e.g. SIGTERM,SIGUSR1)")
        wanted.append(signum)
    return wanted


def catch_stop_signals(names: str) -> dict[signal.Signals, Any]:
    """Remember (nothing more) the first of the signals `names` ("SIGTERM,SIGUSR1") this process receives.

    Schedulers announce preemption and time limits with a signal (Slurm: SIGTERM, then SIGKILL after KillWait, or
    `--signal=USR1@120` ahead of time; Kubernetes: SIGTERM): training then saves at the next optimizer step and
    stops (`stop_requested`) instead of dying mid-epoch. A scheduler signals every process of the job, DataLoader
    workers included: those ignore the same signals (`data.loader.ignore_signals_in_worker`, their init function;
    torch's own SIGTERM handler in a worker would otherwise kill it and the main process with it), and the main
    process shuts them down itself. Call from the main thread. Returns {signal: previous handler} for
    `restore_signals`.
    """
    global _STOP_SIGNAL
    wanted = parse_stop_signals(names)
    _STOP_SIGNAL = 0
    if wanted and threading.current_thread() is not threading.main_thread():  # Python allows handlers there only
        print("warning: train.stop_signals ignored: training runs outside the main thread", file=sys.stderr)
        return {}
    return {signum: signal.signal(signum, _remember_stop) for signum in wanted}


def restore_signals(previous: dict[signal.Signals, Any]) -> None:
    """Put back the handlers `catch_stop_signals` replaced."""
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _remember_stop(signum: int, frame: Any) -> None:
    global _STOP_SIGNAL
    _STOP_SIGNAL = _STOP_SIGNAL or signum


def stop_requested(device: torch.device) -> int:
    """The stop signal any rank has received (0: none), agreed by every rank: call it at the same step on all."""
    flag = torch.tensor([_STOP_SIGNAL], dtype=torch.int64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def rank_with_non_finite(value: float, rank: int, device: torch.device) -> int:
    """A rank whose `value` (its loss) is NaN or infinite, agreed by every rank (-1: none). Call it at the same
    micro-step on all: a rank that stopped alone left the others waiting in the next gradient all-reduce until the
    launcher (30 s) or, under srun, the collective's timeout killed them. One scalar all-reduce; the loss's `.item()`
    has already synchronised the device."""
    bad = not math.isfinite(value)
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return rank if bad else -1
    flag = torch.tensor([rank + 1 if bad else 0], dtype=torch.int64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) - 1


def fault_point(name: str, step: int, rank: int) -> None:
    """Crash-test hook: SIGKILL (or exit 1) this process where `AIM_VIDEO_FAULT` says; a no-op otherwise.

    `AIM_VIDEO_FAULT=<name>@<step>[:rank<r>][:exit|:raise|:signal=<NAME>]`, e.g. `after_step@3`,
    `during_save@4:rank0`, `after_step@2:rank1:exit`, `after_step@2:rank0:raise` (a RuntimeError),
    `after_step@2:rank0:signal=SIGUSR1` (the process sends itself that signal and goes on). The tests use it to
    kill a real process at an exact point (between steps, between the checkpoint shards and the rename, one rank
    only); it is never set in normal use.
    """
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return
    where, *opts = spec.split(":")
    fault_name, _, fault_step = where.partition("@")
    if fault_name != name or int(fault_step or -1) != step:
        return
    ranks = [int(o[4:]) for o in opts if o.startswith("rank")]
    if ranks and rank not in ranks:
        return
    sent = [o.split("=", 1)[1] for o in opts if o.startswith("signal=")]
    if sent:
        print(f"[fault injection] {FAULT_ENV}={spec}: rank {rank} gets {sent[0]} at {name} step {step}", flush=True)
        os.kill(os.getpid(), getattr(signal, sent[0]))
        return
    if "raise" in opts:  # an error nothing expects (CUDA out of memory, a bug): the tools must still exit
        raise RuntimeError(f"[fault injection] {FAULT_ENV}={spec}: rank {rank} raises at {name} step {step}")
    print(f"[fault injection] {FAULT_ENV}={spec}: rank {rank} dies at {name} step {step}", flush=True)
    if "exit" in opts:
        os._exit(1)
    os.kill(os.getpid(), signal.SIGKILL)
