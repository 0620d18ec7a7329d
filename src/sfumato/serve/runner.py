"""The worker: takes queued jobs one at a time and makes their pictures with the command line's runner.

Each stored picture record becomes a job again with :func:`jobs.from_record`
and is made by :func:`jobs.run` on models loaded once per process (one
:class:`Loader` per dtype and device, kept for every later job), and written
with :func:`metadata.write_png` and the record :func:`jobs.picture_record`
gives: the same PNG the command line writes.

Progress comes from the one denoising loop every pipeline shares: it walks
``pipeline.progress_bar(timesteps)``, which the loader here replaces on the
pipelines it hands out by a walk that reports each step and stops the job
(at the next step) when it is cancelled or the server is stopping.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from ..cli import jobs
from ..cli.commands import cpu_threads, picture_record, pixel_difference
from ..cli.errors import UsageError
from ..cli.models import Loader
from ..metadata import write_png
from .errors import api_message, field_of
from .work import estimated_steps, follow

log = logging.getLogger("sfumato.serve")


class Cancelled(Exception):
    """The job's submitter cancelled it."""


class Stopping(Exception):
    """The server is shutting down; the job is queued again."""


class Tracker:
    """The running job's progress: step i of n of the current stage, and the job's share done."""

    def __init__(self, job_id: str, pictures: int, total_steps: int, cancel: threading.Event,
                 stop: threading.Event, board: dict[str, dict]):
        self.job_id, self.pictures, self.total = job_id, pictures, max(1, total_steps)
        self.cancel, self.stop, self.board = cancel, stop, board
        self.picture, self.done, self.stage_done = 0, 0, 0
        self._publish({"stage": "loading", "step": 0, "steps": 0, "picture": 1, "pictures": pictures,
                       "fraction": 0.0})

    def _publish(self, state: dict[str, Any]) -> None:
        # a new dict each time: readers in other threads see one state or the next, never a mix
        self.state = state
        self.board[self.job_id] = state

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()
        if self.stop.is_set():
            raise Stopping()

    def stage(self, stage: str) -> None:
        self._publish({**self.state, "stage": stage, "step": 0, "steps": 0, "picture": self.picture + 1})

    def step(self, stage: str, i: int, n: int) -> None:
        """Called before step ``i`` (0-based) of ``n`` and once more with ``i == n`` when the stage ends."""
        self.check()
        if i == 0:
            self.stage_done = 0
        self.done += i - self.stage_done
        self.stage_done = i
        self._publish({"stage": stage, "step": i, "steps": n, "picture": self.picture + 1,
                       "pictures": self.pictures, "fraction": round(min(0.99, self.done / self.total), 4)})


class TrackedLoader(Loader):
    """A :class:`Loader` whose pipelines report their denoising steps to the running job's tracker."""

    tracker: Tracker | None = None

    def get(self, task: str, model, prior):
        pipes = super().get(task, model, prior)
        for pipe in pipes if isinstance(pipes, tuple) else (pipes,):
            for part in (pipe, getattr(pipe, "prior_pipe", None), getattr(pipe, "decoder_pipe", None)):
                if part is not None and "progress_bar" not in part.__dict__:
                    # an instance attribute: this pipeline object's loop walks the tracked steps
                    part.progress_bar = _TrackedSteps(self, part, type(part).progress_bar.__get__(part))
        return pipes


class _TrackedSteps:
    def __init__(self, loader: TrackedLoader, pipe: Any, original):
        self.loader, self.original = loader, original
        self.stage = "prior" if "Prior" in type(pipe).__name__ else "denoising"

    def __call__(self, iterable=None, total=None):
        tracker = self.loader.tracker
        if tracker is None or iterable is None:
            return self.original(iterable=iterable, total=total)
        return self._walk(tracker, iterable)

    def _walk(self, tracker: Tracker, iterable):
        count = len(iterable)
        for i, item in enumerate(iterable):
            tracker.step(self.stage, i, count)
            yield item
        tracker.step(self.stage, count, count)


class Worker:
    """One thread that runs queued jobs in order, one at a time, on models it keeps loaded."""

    def __init__(self, store, results: Path, device: str, max_attempts: int = 3):
        self.store, self.results, self.device = store, results, device
        self.max_attempts = max_attempts
        self.progress: dict[str, dict] = {}  # running job id -> its tracker's state
        self._loaders: dict[tuple[str, str], TrackedLoader] = {}
        self._loaded: set[tuple] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._cancel = threading.Event()
        self._current: str | None = None
        self._thread: threading.Thread | None = None
        self.finished = threading.Condition()  # notified whenever a job ends (for callers that wait)

    # ------------------------------------------------------------------------ control

    def start(self) -> None:
        _quiet_libraries()
        self._thread = threading.Thread(target=self._loop, name="sfumato-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Stop after the running job's current step; that job is queued again."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def notify(self) -> None:
        self._wake.set()

    def cancel(self, job_id: str) -> None:
        if self._current == job_id:
            self._cancel.set()

    # ------------------------------------------------------------------------ the loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                row = self.store.claim()
            except Exception:  # the database is gone (shutting down) or locked: try again shortly
                log.exception("cannot read the queue")
                row = None
            if row is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            self._current = row["id"]
            self._cancel.clear()
            if row["cancel_requested"]:
                self._cancel.set()
            try:
                self.execute(row)
            except Exception as error:  # e.g. the results folder cannot be made: the job fails, the worker goes on
                log.exception("job %s could not run", row["id"])
                self.store.fail(row["id"], f"{type(error).__name__}: {error}")
            finally:
                self._current = None
                self.progress.pop(row["id"], None)
                with self.finished:
                    self.finished.notify_all()

    def execute(self, row: dict) -> None:
        job_id, request = row["id"], row["request"]
        entries = request["entries"]
        folder = self.results / job_id
        shutil.rmtree(folder, ignore_errors=True)  # what an attempt the server died in left
        folder.mkdir(parents=True, exist_ok=True)
        tracker = Tracker(job_id, len(entries), sum(estimated_steps(e["record"]) for e in entries),
                          self._cancel, self._stop, self.progress)
        started = time.perf_counter()
        loader = None
        try:
            images: list[tuple[int, dict]] = []
            last = None
            for number, entry in enumerate(entries):
                tracker.picture = number
                tracker.check()
                job = jobs.from_record(entry["record"], f"picture {number + 1}", device=self.device)
                tracker.stage("loading")
                loader = self._load(job)
                loader.tracker = tracker
                with cpu_threads(entry.get("threads") if job.device == "cpu" else None):
                    picture = jobs.run(job, loader, quiet=True)
                    for path in entry.get("also", ()):  # a chain's earlier steps that are shown too
                        source = follow(job, path)
                        if source is not None and source.picture is not None:
                            record = picture_record(source.job, entry["command"], entry["index"], entry["count"])
                            write_png(source.picture, folder / f"{len(images)}.png", record)
                            images.append((len(images), record))
                    record = picture_record(job, entry["command"], entry["index"], entry["count"])
                write_png(picture, folder / f"{len(images)}.png", record)
                images.append((len(images), record))
                last = picture
            result = {"seconds": round(time.perf_counter() - started, 3)}
            if request.get("original") and last is not None:
                detail = pixel_difference(request["original"], last)
                result["reproduced"] = {"identical": detail is None, "difference": detail}
            self.store.finish(job_id, images, result)
        except Cancelled:
            self.store.mark_cancelled(job_id)
            shutil.rmtree(folder, ignore_errors=True)
        except Stopping:
            self.store.requeue(job_id)
        except UsageError as error:  # e.g. an uploaded picture removed since the job was checked
            self.store.fail(job_id, api_message(str(error)), field_of(str(error)))
        except Exception as error:  # the library's errors name the problem; keep the server running
            log.exception("job %s failed", job_id)
            message = str(error) or type(error).__name__
            if type(error).__name__ not in message and not isinstance(error, ValueError):
                message = f"{type(error).__name__}: {message}"
            self.store.fail(job_id, api_message(message), field_of(message))
        finally:
            if loader is not None:
                loader.tracker = None

    def _load(self, job: jobs.Job) -> TrackedLoader:
        key = (job.dtype, job.device)
        loader = self._loaders.get(key)
        if loader is None:
            loader = self._loaders[key] = TrackedLoader(job.dtype, job.device, quiet=True)
        needed = [step for step in jobs.plan(job)
                  if (key, step[0], step[1].spec, step[2] and step[2].spec) not in self._loaded]
        if needed:
            loader.preload(needed)
            self._loaded.update((key, task, model.spec, prior and prior.spec) for task, model, prior in needed)
        return loader


def _quiet_libraries() -> None:
    """transformers' per-model loading bars and advice mean nothing in a server log."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
