"""Where a batch's pictures are made: in the command's own process, in local worker processes, or on Ray
(:mod:`sfumato.batch.cluster`).

Every way runs the same :class:`Worker`: it receives a :class:`Task` (the
complete job record, as stored in a PNG), rebuilds the job with the command
line's :func:`~sfumato.cli.jobs.from_record`, and makes the picture with a
long-lived :class:`~sfumato.cli.jobs.Runner`, so each worker loads a model
once, never once per picture. It sends back the picture and its PNG record;
only the driver writes files. Each task carries its torch thread count, so a
picture's pixels do not depend on where or beside what it was made.

A pool has ``run(tasks)``, which yields a :class:`Result` per task as they
end (in any order), and ``close()``, which stops its workers (at once when
the run is interrupted).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from ..cli import jobs, models
from ..cli.errors import UsageError


@dataclass
class Task:
    number: int  # the picture's number in the run
    where: str  # for error messages: "jobs.jsonl line 3"
    record: dict[str, Any]  # the job record (jobs.Job.to_record())
    threads: int  # torch CPU threads
    index: int = 0  # the picture's place among its line's `num`
    count: int = 1


@dataclass
class Result:
    number: int
    ok: bool
    picture: Any = None  # the PIL image
    record: dict[str, Any] | None = None  # what its PNG stores
    seconds: float = 0.0  # making the picture
    load_seconds: float = 0.0  # loading models for it first (once per worker and model)
    error: str | None = None
    worker: str = ""


class WorkersFailed(RuntimeError):
    """The workers keep dying (e.g. out of memory): the run stops; what is done stays done."""


def describe(error: BaseException) -> str:
    """An exception as one line for the manifest."""
    message = " ".join(str(error).split()) or type(error).__name__
    # the command line's and the library's own errors name the problem; others say what they are
    if type(error).__name__ not in message and not isinstance(error, (UsageError, ValueError)):
        message = f"{type(error).__name__}: {message}"
    return message


class Worker:
    """Makes pictures from job records, one after another, on models it loads once."""

    def __init__(self, device: str | None = None):
        self.device = device
        self.runner = jobs.Runner(quiet=True)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        # a worker rebuilds every job from its record: it reads a model's files once, not per picture
        self._remembering = contextlib.ExitStack()
        self._remembering.enter_context(models.remembering_checks())

    def close(self) -> None:
        self._remembering.close()

    def make(self, task: Task) -> Result:
        start = time.perf_counter()
        loaded = start
        try:
            job = jobs.from_record(task.record, task.where, device=self.device)
            self.runner.load(job)
            loaded = time.perf_counter()
            picture, record = self.runner.make(job, "batch", threads=task.threads, index=task.index,
                                               count=task.count)
        except Exception as error:  # one job's failure is reported, and the worker goes on
            return Result(task.number, False, error=describe(error), seconds=time.perf_counter() - loaded,
                          load_seconds=loaded - start, worker=self.name)
        return Result(task.number, True, picture=picture, record=record, seconds=time.perf_counter() - loaded,
                      load_seconds=loaded - start, worker=self.name)


def quiet_libraries() -> None:
    """A worker process has no terminal of its own to talk to: errors come back in its results."""
    logging.getLogger("sfumato").setLevel(logging.ERROR)
    warnings.simplefilter("ignore")
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()


# ---------------------------------------------------------------------------------------------- pools


class InProcess:
    """The command's own process makes the pictures (--workers 1)."""

    def __init__(self, device: str | None = None):
        self.worker = Worker(device)

    def run(self, tasks: Iterable[Task]) -> Iterator[Result]:
        for task in tasks:
            yield self.worker.make(task)

    def close(self, interrupted: bool = False) -> None:
        self.worker.close()


def _process_main(connection, device: str | None, threads: int) -> None:
    """A local worker process: tasks in, results out, until told to stop or the driver is gone."""
    # Ctrl-C reaches the whole process group; the driver handles it and stops the workers
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the driver while starting us
    # before torch loads: its thread pools start this size, so N workers do not ask for N x the cores
    # (Ray does the same for its actors)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    quiet_libraries()
    worker = Worker(device)
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        connection.send(worker.make(task))


@dataclass
class _Slot:
    process: Any
    connection: Any


class ProcessPool:
    """``count`` local worker processes (started fresh with ``spawn``: no state is inherited)."""

    def __init__(self, count: int, device: str | None = None, threads: int = 1):
        self.device = device
        self.threads = threads
        self._context = multiprocessing.get_context("spawn")
        self._slots = [self._start() for _ in range(count)]
        self.deaths = 0
        # a worker that dies is replaced, its picture reported failed; this many deaths stop the run
        self.max_deaths = 2 * count + 2

    def _start(self) -> _Slot:
        ours, theirs = self._context.Pipe()
        process = self._context.Process(target=_process_main, args=(theirs, self.device, self.threads), daemon=True,
                                        name="sfumato-batch-worker")
        # a Ctrl-C while the new process starts up (before it ignores SIGINT) would kill it half-started and
        # break the pipe the driver is writing its start-up data into: it starts with SIGINT blocked (the mask
        # is inherited), and the driver takes a Ctrl-C that came meanwhile once it is started
        before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)
        theirs.close()
        return _Slot(process, ours)

    @property
    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots]

    def run(self, tasks: Iterable[Task]) -> Iterator[Result]:
        pending = deque(tasks)
        busy: dict[int, Task] = {}

        def feed(slot: int) -> None:
            if pending:
                task = pending.popleft()
                busy[slot] = task
                try:
                    self._slots[slot].connection.send(task)
                except OSError:  # it died before it could take it; noticed below through its sentinel
                    pass

        for slot in range(len(self._slots)):
            feed(slot)
        while busy:
            waiting = {}
            for slot in busy:
                waiting[self._slots[slot].connection] = slot
                waiting[self._slots[slot].process.sentinel] = slot
            ready = {waiting[handle] for handle in multiprocessing.connection.wait(list(waiting))}
            for slot in sorted(ready):
                result = self._receive(slot, busy[slot])
                if result is None:
                    continue
                del busy[slot]
                feed(slot)
                yield result

    def _receive(self, slot: int, task: Task) -> Result | None:
        """The slot's result; a failed one if its process died (and a new process in its place)."""
        state = self._slots[slot]
        try:
            if state.connection.poll():
                return state.connection.recv()
        except (EOFError, OSError):
            pass
        if state.process.is_alive():
            return None
        state.process.join()
        code = state.process.exitcode
        self.deaths += 1
        state.connection.close()
        if self.deaths > self.max_deaths:
            raise WorkersFailed(f"worker processes died {self.deaths} times (the last with exit code {code}); "
                                f"stopping. Is the machine out of memory? Fewer --workers need less")
        self._slots[slot] = self._start()
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return Result(task.number, False, error=f"the worker process died ({how}; out of memory?) while making "
                                                f"this picture", worker=f"{socket.gethostname()}:{state.process.pid}")

    def close(self, interrupted: bool = False) -> None:
        """Stop the workers: after their picture, or at once when the run was interrupted."""
        for slot in self._slots:
            if interrupted:
                slot.process.terminate()
            else:
                try:
                    slot.connection.send(None)
                except OSError:
                    pass
        deadline = time.monotonic() + (2 if interrupted else 30)
        for slot in self._slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                slot.process.kill()
                slot.process.join()
            slot.connection.close()
