"""Run a call in a forked child that is killed when it takes too long.

Why: decord can spin forever in native code while holding the GIL (a `get_batch` past the real end of a file whose
container over-reports its length). Nothing inside that process can interrupt it: Python signal handlers and
watchdog threads need the GIL. A separate process can be killed from outside, so a guarded read sends its work to a
child and waits with a time limit; on timeout the child is killed (SIGKILL) and a fresh one is forked for the next
call.

The child is forked with `os.fork` rather than `multiprocessing.Process`: DataLoader workers are daemonic, and
multiprocessing refuses to start children from daemonic processes. It is persistent (one fork per process, ~60 ms
with torch loaded, then a pipe round-trip per call) and private to the process that forked it: a worker looks its
child up by pid, so a fork of that worker never talks to its parent's child.
"""

from __future__ import annotations

import mmap
import os
import signal
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any

import numpy as np
import torch

from aim_video.data import decode


class CallTimeout(TimeoutError):
    """The child did not answer within the time limit and was killed."""


class ChildDied(RuntimeError):
    """The child exited or was killed by a signal (e.g. a segfault in a native decoder) before answering."""

    def __init__(self, message: str, signum: int = 0):
        super().__init__(message)
        self.signum = signum  # the signal that ended it, 0 for an exit

    @property
    def killed_from_outside(self) -> bool:
        """Killed (the out-of-memory killer, a stop of the job), not crashed: nothing to say about the video."""
        return self.signum in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)


def _serve(conn: Connection) -> None:
    """Child loop: receive `(fn, args)`, answer `("ok", result)` or `("err", exception)`, until the pipe closes."""
    while True:
        try:
            fn, args = conn.recv()
        except (EOFError, OSError):  # the parent closed its end or died
            return
        try:
            reply: tuple[str, Any] = ("ok", fn(*args))
        except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent, which re-raises it
            reply = ("err", err)
        try:
            conn.send(reply)
        except Exception as err:  # the result or exception could not be pickled
            conn.send(("err", RuntimeError(f"{type(err).__name__}: {err}")))


class ForkWorker:
    """One forked child that runs module-level functions sent to it, each under a time limit.

    State set by a function in the child (e.g. an open video reader) stays there for the next call, so a read can
    be split into open / get / close steps, each bounded by what is left of one deadline.
    """

    def __init__(self, shared_bytes: int = 0) -> None:
        self.pid: int | None = None
        self.owner: int | None = None  # pid of the process that forked the child
        self._conn: Connection | None = None
        self.shared_bytes = shared_bytes
        self.shared: mmap.mmap | None = None  # anonymous shared memory, mapped in both processes

    def alive(self) -> bool:
        return self.pid is not None and self.owner == os.getpid()

    def start(self) -> None:
        parent_end, child_end = Pipe(duplex=True)
        # pages are only backed once written: a large mapping costs what the largest result used
        self.shared = mmap.mmap(-1, self.shared_bytes) if self.shared_bytes else None
        pid = os.fork()
        if pid == 0:  # child: serve until the parent goes away, never return into the parent's code
            code = 0
            try:
                global _CHILD_SHARED
                _CHILD_SHARED = self.shared
                parent_end.close()
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
                # torch's OpenMP pool does not survive a fork: once the parent has run a parallel op (a torchcodec
                # read does), the child's first one can wait forever. DataLoader workers do the same.
                torch.set_num_threads(1)
                _serve(child_end)
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        child_end.close()
        self.pid, self.owner, self._conn = pid, os.getpid(), parent_end

    def kill(self) -> None:
        """Kill the child (if this process owns one) and reap it."""
        if self.alive():
            assert self.pid is not None
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        if self._conn is not None and self.owner == os.getpid():
            self._conn.close()
            if self.shared is not None:
                self.shared.close()
        self.pid, self.owner, self._conn, self.shared = None, None, None, None

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Send a call without waiting; `fn` must be a module-level function (it is pickled by reference).

        A child that died while idle (killed for memory, say) is reaped and replaced first: sending to it would
        fail with a broken pipe, and every later call of this process with it."""
        if self.alive() and self._exited():
            self.pid = None  # reaped by _exited
            self.kill()  # closes the pipe and the shared memory
        if not self.alive():
            self.start()
        assert self._conn is not None
        try:
            self._conn.send((fn, args))
        except (BrokenPipeError, ConnectionResetError):  # died between the check and the send
            self.kill()
            self.start()
            self._conn.send((fn, args))

    def _exited(self) -> bool:
        """Whether the child has ended since its last call (reaping it if so)."""
        assert self.pid is not None
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return True
        return pid != 0

    def result(self, timeout_s: float) -> Any:
        """Wait for the answer to the last `submit`; kill the child on timeout or death."""
        assert self._conn is not None
        if not self._conn.poll(max(timeout_s, 0.0)):
            self.kill()
            raise CallTimeout(f"no answer after {timeout_s:.1f} s; the child was killed")
        try:
            status, value = self._conn.recv()
        except (EOFError, OSError):
            pid = self.pid
            status_text, signum = "", 0
            if pid is not None:
                try:
                    _, raw = os.waitpid(pid, 0)
                    signum = os.WTERMSIG(raw) if os.WIFSIGNALED(raw) else 0
                    status_text = f" (signal {signum})" if signum else f" (exit {raw >> 8})"
                except ChildProcessError:
                    pass
            self.pid = None  # already reaped
            self.kill()
            raise ChildDied(f"the decoding child process died{status_text}", signum) from None
        if status == "err":
            raise value
        return value

    def call(self, fn: Callable[..., Any], *args: Any, timeout_s: float) -> Any:
        self.submit(fn, *args)
        return self.result(timeout_s)

    def fileno(self) -> int:
        """For `multiprocessing.connection.wait` over several workers."""
        assert self._conn is not None
        return self._conn.fileno()

    @property
    def connection(self) -> Connection:
        assert self._conn is not None
        return self._conn


_PER_PROCESS: dict[int, ForkWorker] = {}
_CHILD_SHARED: mmap.mmap | None = None  # in a child: the shared memory its parent mapped before the fork
SHARED_BYTES = 256 << 20  # frames up to this size come back through shared memory, larger ones through the pipe


def worker_for_this_process() -> ForkWorker:
    """The calling process's own child (forked on first use; a forked process never reuses its parent's)."""
    pid = os.getpid()
    worker = _PER_PROCESS.get(pid)
    if worker is None:
        for other in list(_PER_PROCESS):  # entries inherited from a parent through fork: not ours to use
            del _PER_PROCESS[other]
        worker = _PER_PROCESS[pid] = ForkWorker(SHARED_BYTES)
    return worker


class Deadline:
    """What is left of one time budget shared by several calls (open, read, close)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def run_pool(
    fn: Callable[..., Any], items: list[Any], jobs: int = 1, timeout_s: float = 0.0
) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """Run `fn(item)` for each item on `jobs` forked children, each call under `timeout_s` (0 = no limit).

    Yields `(item, result, error)` as calls finish (completion order): `error` is the exception `fn` raised,
    a `CallTimeout` (the child was killed and replaced) or a `ChildDied`. A hung or crashed item costs its own
    slot only; the others go on.
    """
    todo = list(reversed(items))
    workers = [ForkWorker() for _ in range(max(1, jobs))]
    running: dict[ForkWorker, tuple[Any, float]] = {}
    try:
        while todo or running:
            for worker in workers:
                if worker not in running and todo:
                    item = todo.pop()
                    worker.submit(fn, item)
                    running[worker] = (item, time.monotonic())
            now = time.monotonic()
            waits = [start + timeout_s - now for _, start in running.values()] if timeout_s > 0 else []
            ready = wait([w.connection for w in running], timeout=max(0.0, min(waits)) if waits else None)
            for worker in list(running):
                item, start = running[worker]
                if worker.connection in ready:
                    try:
                        yield item, worker.result(0.0), None
                    except (Exception, CallTimeout, ChildDied) as err:  # noqa: B014 - all three are reported
                        yield item, None, err
                    del running[worker]
                elif timeout_s > 0 and time.monotonic() - start >= timeout_s:
                    worker.kill()
                    del running[worker]
                    yield item, None, CallTimeout(f"no result after {timeout_s:g} s; the child was killed")
    finally:
        for worker in workers:
            worker.kill()


# --- guarded video reads: the reader lives in this process's child, each step bounded by one deadline -----------
_CHILD_READER: list[Any] = []  # the reader open in the child (at most one)


def _current_folder() -> str | None:
    """This process's current folder (None when it was deleted: a relative path then names nothing anyway)."""
    try:
        return os.getcwd()
    except FileNotFoundError:
        return None


def _child_open(reader_cls: type, path: str, num_threads: int, opts: dict[str, Any], cwd: str | None) -> int:
    _child_close()
    if cwd is not None:  # forked once per process: a relative path is the parent's, wherever it went since
        try:
            os.chdir(cwd)
        except OSError:  # gone meanwhile: the open below names the video it cannot find
            pass
    reader = decode.open_with(reader_cls, path, num_threads, **opts)  # its errors say why in plain words
    _CHILD_READER.append(reader)
    return reader.num_frames


def _child_get(indices: list[int]) -> tuple[tuple[int, ...], str] | np.ndarray:
    """The frames, or (shape, dtype) once written to the shared memory (a pipe moves 22 MB of 720p clip slowly)."""
    frames = np.ascontiguousarray(_CHILD_READER[0].get(indices))
    if _CHILD_SHARED is None or frames.nbytes > len(_CHILD_SHARED):
        return frames
    np.frombuffer(_CHILD_SHARED, np.uint8, frames.nbytes)[:] = frames.reshape(-1).view(np.uint8)
    return frames.shape, frames.dtype.str


def _child_close() -> None:
    while _CHILD_READER:
        _CHILD_READER.pop().close()


class GuardedReader:
    """A video reader (decode.open_reader's interface) that lives in this process's child.

    Every call (open, get, count, close) is bounded by what is left of one `deadline`.
    """

    def __init__(self, path: str, backend: str, num_threads: int, opts: dict[str, Any], deadline: Deadline):
        if str(opts.get("device", "cpu")).startswith("cuda"):
            raise ValueError(
                "a read timeout runs decoding in a forked child, where CUDA cannot be used; "
                "set data.read_timeout_s=0 for CUDA decoding"
            )
        if backend not in decode._READERS:
            raise ValueError(f"unknown decoding backend '{backend}'; choose one of {', '.join(decode._READERS)}")
        self.path, self._deadline = path, deadline  # the child's open_with checks the file (one stat, not three)
        self._worker = worker_for_this_process()
        cwd = None if os.path.isabs(path) else _current_folder()  # where a relative path starts, for the child
        self.num_frames = self._call(_child_open, decode._READERS[backend], path, num_threads, opts, cwd)

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return self._worker.call(fn, *args, timeout_s=self._deadline.left())
        except CallTimeout:
            limit = self._deadline.seconds
            raise decode.ReadTimeout(self.path, f"read took longer than {limit:g} s (decoder killed)") from None
        except ChildDied as err:  # a child killed from outside says nothing of the video: tried again later
            raise (decode.DecoderKilled if err.killed_from_outside else decode.VideoReadError)(
                self.path, str(err)
            ) from None

    def get(self, indices: list[int]) -> np.ndarray:
        result = self._call(_child_get, indices)
        if isinstance(result, np.ndarray):
            return result
        shape, dtype = result
        assert self._worker.shared is not None
        count = int(np.prod(shape))
        return np.frombuffer(self._worker.shared, np.dtype(dtype), count).reshape(shape).copy()

    def count_decodable(self) -> int:
        return self._call(decode.count_decodable, self.path)

    def close(self) -> None:
        if self._worker.alive() and self._deadline.left() > 0:
            try:
                self._call(_child_close)
            except decode.VideoReadError:
                pass
