"""Process-group set-up, small collectives, RNG state capture and the fault points the crash tests use.

`tools/train.py` runs under the `deepspeed` launcher (env vars RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT set by
it), as one task per GPU of a Slurm job step (`srun`; :func:`world_from_slurm` sets the same variables from Slurm's),
or as a plain single process; :func:`init_distributed` fills in a one-process world in the last case so the same
DeepSpeed code path runs all three. On a CPU machine (`DS_ACCELERATOR=cpu`) the backend is gloo.

A collective waits `train.dist_timeout_min` (60) minutes for the slowest rank before the job fails: long enough for
a rank that evaluates its shard of a val list over slow storage, and the bound on how long the others wait for a rank
that died when nothing else stops them (the `deepspeed` launcher and `srun --kill-on-bad-exit=1` do, at once).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
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


def free_port() -> int:
    """A port no process listens on now (the OS picks it; a world of one, the demo's launcher)."""
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
    """The first host of a Slurm hostlist: "gpu-[07-09,12],cpu3" -> "gpu-07", "rack[1-2]-node[01-04]" ->
    "rack1-node01" (every bracket group of the first entry gives its first value)."""
    depth, first = 0, ""
    for ch in nodelist:  # the first entry: up to a comma outside brackets
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            break
        first += ch
    return re.sub(r"\[([^\]]*)\]", lambda m: m.group(1).split(",")[0].split("-")[0], first).strip()


SLURM_PORTS = (20000, 32768)  # MASTER_PORTs derived from Slurm's ids: below Linux's ephemeral ports (32768-60999)


def slurm_master_port(job_id: int, step_id: int) -> int:
    """The rendezvous port of a job step when MASTER_PORT is not set: the same in every task of the step, another for
    each step of a job (two multi-task steps of one allocation can share a node) and for nearby job ids (101 ports
    apart per job: the first 100 steps of consecutive jobs never meet), and outside the ephemeral range, where a
    port may be taken by any outgoing connection."""
    low, high = SLURM_PORTS
    return low + (101 * job_id + step_id) % (high - low)


def _slurm_int(env: dict[str, str] | os._Environ, key: str) -> int:
    value = env.get(key, "0").strip()
    return int(value) if value.isdigit() else 0


def world_from_slurm(env: dict[str, str] | os._Environ = os.environ) -> bool:
    """Under `srun` (a Slurm job step) and no launcher: set RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/PORT from
    Slurm's variables, so `srun --ntasks-per-node=8 python tools/train.py ...` (one task per GPU) forms one world.

    Without this every task would train alone on GPU 0 of its node, all writing the same output folder. Only a job
    step has SLURM_STEP_NUM_TASKS (a plain `python` in an sbatch script stays a world of one). MASTER_PORT, unless
    set, derives from the job and step ids (`slurm_master_port`), the same in every task of the step. A step of one
    task (a sweep: `srun -n1 train.py A & srun -n1 train.py B &` on one node) is a world of one on this machine: no
    MASTER_PORT (an exported one included), so :func:`init_distributed` picks a free port, as for a plain process.

    A task sees the GPUs Slurm gives it (CUDA_VISIBLE_DEVICES) and uses number SLURM_LOCALID modulo their count:
    device 0 with `--gpus-per-task=1`, its local id with the whole node's GPUs visible. Where a task sees a subset
    shared with others (`--gpu-bind=closest`) that is right only when the tasks sharing it are consecutive local ids
    (`--distribution=block:block`; Slurm's default places tasks on sockets cyclically): NCCL refuses two ranks on one
    GPU ("Duplicate GPU detected"). Returns whether Slurm's variables were used.
    """
    if "WORLD_SIZE" in env or "SLURM_STEP_NUM_TASKS" not in env or "SLURM_PROCID" not in env:
        return False
    if env["SLURM_STEP_NUM_TASKS"].strip() == "1":
        env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        env.pop("MASTER_PORT", None)  # another step on this node may be using it: init_distributed picks a free one
        return True
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    local_id = _slurm_int(env, "SLURM_LOCALID")
    env.update(
        RANK=env["SLURM_PROCID"],
        WORLD_SIZE=env["SLURM_STEP_NUM_TASKS"],
        LOCAL_RANK=str(local_id % len(visible) if visible else local_id),
        MASTER_ADDR=env.get("MASTER_ADDR")
        or first_slurm_host(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or "127.0.0.1"),
    )
    port = slurm_master_port(_slurm_int(env, "SLURM_JOB_ID"), _slurm_int(env, "SLURM_STEP_ID"))
    env.setdefault("MASTER_PORT", str(port))
    return True


def process_group_timeout(minutes: float) -> timedelta:
    """train.dist_timeout_min as the timeout of every collective (and of the rendezvous); refused unless > 0."""
    if not minutes > 0:
        raise ConfigError(f"train.dist_timeout_min must be more than 0 minutes, got {minutes}")
    return timedelta(minutes=minutes)


class _CurrentStderr(logging.StreamHandler):
    """A log handler writing to whatever `sys.stderr` is when it writes (pytest swaps it per test)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def deepspeed_logs_to_stderr() -> None:
    """DeepSpeed logs to stdout, where the tools write their results (infer.py's classes, train.py's and test.py's
    summaries, the demo's JSON line): its "Setting accelerator to CPU" warning came first in infer.py's output. Its
    handler goes to stderr instead, with its format and level (the first import logs already: it runs with stdout
    pointed at stderr)."""
    if "deepspeed" not in sys.modules:
        stdout, sys.stdout = sys.stdout, sys.stderr
        try:
            import deepspeed  # noqa: F401
        finally:
            sys.stdout = stdout
    from deepspeed.utils.logging import logger

    for handler in list(logger.handlers):
        if type(handler) is logging.StreamHandler and handler.stream is not sys.stderr:
            moved = _CurrentStderr()
            moved.setFormatter(handler.formatter)
            moved.setLevel(handler.level)
            logger.removeHandler(handler)
            logger.addHandler(moved)


def device_and_backend(local_rank: int) -> tuple[torch.device, str]:
    """This process's device and process-group backend as DeepSpeed's accelerator gives them: `DS_ACCELERATOR=cpu`
    (or no GPU) is the CPU and gloo whatever GPUs are visible; otherwise device number `local_rank` and its backend
    (nccl on CUDA). Training and evaluation choose alike."""
    deepspeed_logs_to_stderr()
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    if accel.device_name() == "cpu":
        return torch.device("cpu"), "gloo"
    return torch.device(accel.device_name(local_rank)), accel.communication_backend_name()


def init_distributed(timeout_min: float = 60.0) -> DistInfo:
    """Initialise DeepSpeed's process group (gloo on CPU, nccl on CUDA) and return this process's place in it.

    `timeout_min` (train.dist_timeout_min) bounds every collective's wait for the slowest rank; DeepSpeed's own
    default (10 minutes, or DEEPSPEED_TIMEOUT) is not used."""
    timeout = process_group_timeout(timeout_min)
    stable_extension_builds()
    deepspeed_logs_to_stderr()
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    world_from_slurm()
    own_port = "MASTER_PORT" not in os.environ  # a plain process or a one-task job step: any free port will do
    if "WORLD_SIZE" not in os.environ:  # plain `python tools/train.py`: a world of one
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
    if os.environ["WORLD_SIZE"] == "1":
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device, backend = device_and_backend(local_rank)
    for attempt in range(3):
        try:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, verbose=False, timeout=timeout)
            break
        except RuntimeError as err:  # torch's DistNetworkError
            # the free port this process picked was taken before its store could listen (another process on the
            # machine opened a connection from it): pick another; a port the user or a launcher set is theirs
            if "EADDRINUSE" in str(err) and not own_port:  # a traceback was all a relaunch said
                raise ConfigError(
                    f"port {os.environ['MASTER_PORT']} of {os.environ.get('MASTER_ADDR', 'this machine')} is in use: "
                    "another job is running there, e.g. the ranks of an earlier launch that go on after its deepspeed "
                    "runner was killed (`pgrep -af tools/train.py`); stop it, or give this launch another port "
                    "(deepspeed --master_port N, MASTER_PORT)"
                ) from None
            if "EADDRINUSE" not in str(err) or attempt == 2:
                raise
            os.environ["MASTER_PORT"] = str(free_port())
    rank, world = dist.get_rank(), dist.get_world_size()
    if device.type == "cpu":
        release_shm_segment(rank)
    else:
        get_accelerator().set_device(local_rank)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def check_shared_folder(folder: str, info: DistInfo, key: str = "output_dir", wait_s: float = 60.0) -> None:
    """Refuse `folder` unless every rank sees the same folder: rank 0 writes a file named for this run into it and
    every rank looks for that file (for up to `wait_s`: a network file system may show a new file late).

    Every rank writes its checkpoint shards into the folder and rank 0 renames the checkpoint into place: ranks on
    nodes where the path is a local folder would write into their own copy, and rank 0 would publish an incomplete
    checkpoint, found only at a resume. Call it on every rank at the same point (three collectives).
    """
    if info.world_size == 1:
        return
    name = None
    if info.is_main:
        os.makedirs(folder, exist_ok=True)
        name = f".aim_video_shared_check_{uuid.uuid4().hex}"
        with open(os.path.join(folder, name), "w") as f:
            f.write(f"written by rank 0 on {socket.gethostname()}: every rank must see this file\n")
    name = broadcast_object(name)  # sent after rank 0 wrote it
    path = os.path.join(folder, name)
    deadline = time.monotonic() + wait_s
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.5)
    views = all_gather_objects((os.path.exists(path), socket.gethostname()))
    if info.is_main:
        os.unlink(path)
    barrier()  # gone for every rank on return
    blind = [rank for rank, (seen, _) in enumerate(views) if not seen]
    if blind:
        hosts = sorted({views[rank][1] for rank in blind})
        raise ConfigError(
            f"{key}={folder} is not one folder shared by every rank: rank 0 (on {views[0][1]}) wrote a file into it "
            f"that rank{'s' if len(blind) > 1 else ''} {', '.join(map(str, blind))} (on {', '.join(hosts)}) cannot "
            f"see. Every rank writes its checkpoint shards into {key}, so it must be a folder of storage that every "
            "node mounts at the same path (NFS, Lustre, GPFS, a cloud file system)"
        )


def first_failure(failure: tuple[int, str] | None) -> tuple[int, str] | None:
    """(exit status, message) of the first rank that failed, None when none did: the same on every rank, so all exit
    together. A rank that stopped alone before a collective left the others waiting in it for the process-group
    timeout. The message names the rank when there are several. Call it on every rank at the same point."""
    every = all_gather_objects(failure)
    failed = [(rank, f) for rank, f in enumerate(every) if f is not None]
    if not failed:
        return None
    rank, (status, message) = failed[0]
    if len(every) > 1:
        more = f" (and {len(failed) - 1} other rank{'s' if len(failed) > 2 else ''})" if len(failed) > 1 else ""
        message = f"rank {rank}{more}: {message}"
    return status, message


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
