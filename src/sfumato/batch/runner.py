"""``sfumato batch``: check every job, skip what an earlier run made, make the rest, keep the manifest.

The run reads top to bottom:

1. the command line's settings, checked once;
2. every job of the file checked (:mod:`.jobfile`): bad ones are reported by
   line and skipped, or stop the run with ``--strict``; an unknown model stops
   it always; nothing has been made yet;
3. the output folder locked, the pictures already there counted done;
4. the rest made by a pool (:mod:`.workers`, :mod:`.cluster`) and written by
   this process as they come back, each with a manifest line;
5. the manifest rewritten, one line per picture, and a summary.

Ctrl-C (or a crash) leaves every finished picture in place; the same command
again makes only the others.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from ..cli import jobs, models
from ..cli.errors import UsageError
from ..metadata import write_png
from . import jobfile
from .store import Store
from .workers import InProcess, ProcessPool, Task, WorkersFailed


def settings(args: Any) -> jobfile.Defaults:
    """The command line's defaults for jobs that set none, checked once (not once per job)."""
    fields = {"model": args.model, "prior": args.prior, "negative_prompt": args.negative, "steps": args.steps,
              "guidance": args.guidance, "prior_steps": args.prior_steps, "prior_guidance": args.prior_guidance,
              "strength": args.strength, "scheduler": args.scheduler, "dtype": args.dtype}
    if args.size is not None:
        fields["width"], fields["height"] = args.size
    if args.scheduler is not None:
        models.scheduler_class_name(args.scheduler)
    if args.model is not None:
        models.parse_model(args.model, "text2image")
    if args.prior is not None:
        models.parse_model(args.prior, "text2image", "--prior")
    if args.ray is None and args.device is not None:
        jobs.resolve_device(args.device)  # a Ray cluster's devices are its nodes' business
    return jobfile.Defaults(fields=fields, seed=args.seed if args.seed is not None else 0, num=args.num,
                            threads=args.threads, device=args.device)


def command(args: Any) -> int:
    quiet = args.quiet

    def say(message: str, always: bool = False) -> None:
        if always or not quiet:
            _write(message, sys.stderr)

    defaults = settings(args)
    if args.ray is not None:
        from .cluster import require_ray

        require_ray()
    store = Store(args.out)

    # every job checked before any work
    found = jobfile.read(args.jobs, defaults)
    fatal = [problem for problem in found.problems if problem.fatal]
    if fatal or (args.strict and found.problems):
        stopping = fatal or found.problems
        for problem in stopping[:-1]:
            say(f"sfumato: error: {problem.message}", always=True)
        why = "" if fatal else " (--strict)"
        raise UsageError(f"{stopping[-1].message}; nothing was made{why}")
    for problem in found.problems:
        say(f"sfumato: error: {problem.message} (skipped)", always=True)
    for warning in found.warnings:
        say(f"sfumato: warning: {warning}")
    if not found.pictures:
        raise UsageError(f"job file {args.jobs!r} has no job that can run")

    store.lock()
    try:
        return _make(args, found, store, defaults, say)
    finally:
        store.close()


def _make(args: Any, found: jobfile.JobFile, store: Store, defaults: jobfile.Defaults, say) -> int:
    from tqdm.auto import tqdm

    store.remove_partial_files()
    previous, last_run = store.previous()
    run_number = last_run + 1
    pictures = found.pictures
    entries: dict[int, dict[str, Any]] = {}
    todo = []
    for picture in pictures:
        if store.done(picture.name):
            earlier = previous.get(picture.key)
            entry = _entry(picture, "done", None)
            if earlier and earlier.get("status") == "done":  # when and by whom it was made; where it is now
                entry.update({k: earlier.get(k) for k in ("seconds", "worker", "run")})
            entries[picture.number] = entry
        else:
            entries[picture.number] = _entry(picture, "pending", run_number)
            todo.append(picture)
    say(f"{len(pictures)} pictures: {len(pictures) - len(todo)} already in {str(store.folder)!r}, "
        f"{len(todo)} to make")

    made = failed = 0
    interrupted = False
    stopped = None
    pool = None
    loads: dict[str, float] = {}
    bar = tqdm(total=len(pictures), initial=len(pictures) - len(todo), desc="batch", unit="picture",
               disable=args.quiet, file=sys.stderr, dynamic_ncols=True)
    started = time.perf_counter()
    ready = started
    try:
        if todo:
            pool = _pool(args, defaults, len(todo), say)
            ready = time.perf_counter()
            tasks = (Task(number=p.number, where=p.where, record=p.record, threads=p.threads, index=p.index,
                          count=p.count) for p in todo)
            for result in pool.run(tasks):
                picture = pictures[result.number]
                if result.load_seconds > 0.05:
                    loads[result.worker] = loads.get(result.worker, 0.0) + result.load_seconds
                if result.ok:
                    path = write_png(result.picture, store.folder / picture.name, result.record)
                    made += 1
                    entry = _entry(picture, "done", run_number, result.seconds, None, result.worker)
                    _write(str(path), sys.stdout)  # like every sfumato command: written files on stdout
                else:
                    failed += 1
                    entry = _entry(picture, "failed", run_number, result.seconds, result.error, result.worker)
                    _write(f"sfumato: error: {picture.where}: {result.error}", sys.stderr)
                entries[picture.number] = entry
                store.append(entry)
                bar.update(1)
                if failed:
                    bar.set_postfix(failed=failed, refresh=False)
    except KeyboardInterrupt:
        interrupted = True
    except WorkersFailed as error:
        stopped = str(error)
    finally:
        if pool is not None:
            pool.close(interrupted=interrupted or stopped is not None)
        bar.close()
        for picture in pictures:  # a picture written just before Ctrl-C, whose line was not
            if entries[picture.number]["status"] == "pending" and store.done(picture.name):
                entries[picture.number] = _entry(picture, "done", run_number)
        manifest = store.rewrite(_in_file_order(pictures, entries, found.problems, run_number))
    seconds = time.perf_counter() - ready
    pending = sum(1 for entry in entries.values() if entry["status"] == "pending")
    summary = f"made {made}"
    if made:
        summary += f" in {seconds:.1f} s ({60 * made / max(seconds, 1e-9):.1f} per minute"
        if loads:
            summary += f"; each worker loaded its models in {sum(loads.values()) / len(loads):.1f} s"
        summary += ")"
    summary += f", {len(pictures) - len(todo)} were already done"
    if failed:
        summary += f", {failed} failed"
    if pending:
        summary += f", {pending} not made yet"
    if found.problems:
        summary += f", {len(found.problems)} invalid jobs skipped"
    say(f"{summary}; manifest: {manifest}")
    if stopped:
        say(f"sfumato: error: {stopped}", always=True)
    if interrupted or stopped or failed:
        say("run the same command again to make the missing pictures", always=True)
    if interrupted:
        raise KeyboardInterrupt
    return 0 if not (failed or pending or found.problems) else 1


def _pool(args: Any, defaults: jobfile.Defaults, todo: int, say):
    if args.ray is not None:
        from .cluster import RayPool

        pool = RayPool(args.ray, args.workers, defaults.threads, defaults.device,
                       say=lambda message: say(message))
        say(f"on Ray: {pool.count} workers")
        return pool
    workers = min(args.workers or 1, todo)
    if workers > 1:
        return ProcessPool(workers, defaults.device, defaults.threads)
    return InProcess(defaults.device)


def _entry(picture: jobfile.Picture, status: str, run: int | None, seconds: float | None = None,
           error: str | None = None, worker: str | None = None) -> dict[str, Any]:
    return {"where": picture.where, "line": picture.line, "output": picture.name, "status": status,
            "seconds": round(seconds, 3) if seconds is not None else None, "error": error, "worker": worker,
            "run": run, "key": picture.key}


def _in_file_order(pictures, entries, problems, run: int) -> list[dict[str, Any]]:
    rows = [(picture.line, entries[picture.number]) for picture in pictures]
    rows += [(problem.line, {"where": problem.where, "line": problem.line, "output": None, "status": "invalid",
                             "seconds": None, "error": problem.message, "worker": None, "run": run, "key": None})
             for problem in problems]
    last = float("inf")
    return [entry for _, entry in sorted(rows, key=lambda row: last if row[0] is None else row[0])]


def _write(message: str, stream) -> None:
    """A line that does not tear the progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(message, file=stream)
    stream.flush()
