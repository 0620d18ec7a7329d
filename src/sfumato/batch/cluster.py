"""Making a batch's pictures on a Ray cluster: one long-lived actor per worker, each with its own
:class:`~sfumato.batch.workers.Worker` (so a model loads once per actor).

``--ray auto`` connects to the cluster this machine belongs to (``RAY_ADDRESS``,
or one started here with ``ray start``) or, when there is none, starts a
local Ray instance for the run; ``--ray ADDRESS`` connects to that cluster.
Each actor takes ``--threads`` CPUs (or one GPU with ``--device cuda``); the
pictures come back to the driver, which writes them, so the nodes need no
shared disk. Every node needs the same sfumato, torch and Ray versions as
the driver, and the model folders and input pictures at the same paths (the
built-in model ships with sfumato).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any, Iterable, Iterator

from ..cli.errors import UsageError
from ..cli.models import BUILTIN_ENV
from .workers import Result, Task, Worker, WorkersFailed, describe, quiet_libraries

#: Seconds to wait for the actors to start (import torch, join the cluster) before giving up.
START_TIMEOUT = float(os.environ.get("SFUMATO_RAY_START_TIMEOUT", "300"))
#: Tasks queued per actor: the next one is waiting while a picture travels back.
IN_FLIGHT = 2


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray, an optional extra: pip install 'sfumato[ray]' (on every node)") from None
    return ray


class _RayWorker:
    """The actor: a :class:`Worker` in a Ray worker process (``ray.remote`` is applied when Ray is used)."""

    def __init__(self, device: str | None):
        quiet_libraries()
        self.worker = Worker(device)

    def ready(self) -> dict[str, str]:
        import torch

        from .. import __version__

        return {"worker": self.worker.name, "sfumato": __version__, "torch": torch.__version__}

    def make(self, task: Task) -> Result:
        return self.worker.make(task)


class RayPool:
    """``count`` actors on the cluster at ``address`` (``auto``: the local one, started if need be)."""

    def __init__(self, address: str, count: int | None, threads: int, device: str | None,
                 say=lambda message: None):
        ray = self._ray = require_ray()
        self._started = False
        if not ray.is_initialized():
            try:
                ray.init(address=None if address == "auto" else address, include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR)
            except (ConnectionError, RuntimeError, ValueError) as error:
                raise UsageError(f"--ray {address}: cannot connect to a Ray cluster: {describe(error)}") from None
            self._started = True  # shut down at the end: stops a local instance, leaves a cluster running
        gpus = bool(device) and device.startswith("cuda")
        resources = ray.cluster_resources()
        capacity = int(resources.get("GPU", 0)) if gpus else int(resources.get("CPU", 0) // threads)
        if capacity < 1:
            raise UsageError(f"--ray {address}: the cluster has no {'GPU' if gpus else f'{threads} free CPUs'} "
                             f"for a worker ({resources})")
        if count is not None and count > capacity:
            say(f"sfumato: warning: the Ray cluster has room for {capacity} workers "
                f"({'one GPU' if gpus else f'{threads} CPU'} each); running {capacity}, not {count}")
        self.count = min(count or capacity, capacity)
        options: dict[str, Any] = {"num_cpus": 1 if gpus else threads, "num_gpus": 1 if gpus else 0,
                                   "max_restarts": 0}
        if os.environ.get(BUILTIN_ENV):  # the built-in model's folder, as the driver sees it
            options["runtime_env"] = {"env_vars": {BUILTIN_ENV: os.environ[BUILTIN_ENV]}}
        self._actor_class = ray.remote(_RayWorker).options(**options)
        self._device = device
        self._actors = [self._actor_class.remote(device) for _ in range(self.count)]
        self.deaths = 0
        self.max_deaths = 2 * self.count + 2
        try:
            self.workers = ray.get([actor.ready.remote() for actor in self._actors], timeout=START_TIMEOUT)
        except Exception as error:  # GetTimeoutError, an actor that could not import sfumato, ...
            self.close(interrupted=True)
            raise UsageError(f"--ray {address}: the Ray workers did not start: {describe(error)}") from None
        from .. import __version__

        versions = sorted({info["sfumato"] for info in self.workers} - {__version__})
        if versions:
            say(f"sfumato: warning: Ray workers run sfumato {', '.join(versions)}, this command {__version__}; "
                f"pictures may differ from local runs")

    def run(self, tasks: Iterable[Task]) -> Iterator[Result]:
        ray = self._ray
        pending = deque(tasks)
        in_flight: dict[Any, tuple[int, Task]] = {}
        queued = [0] * len(self._actors)

        def feed(slot: int) -> None:
            while pending and queued[slot] < IN_FLIGHT:
                task = pending.popleft()
                in_flight[self._actors[slot].make.remote(task)] = (slot, task)
                queued[slot] += 1

        for slot in range(len(self._actors)):
            feed(slot)
        while in_flight:
            [reference], _ = ray.wait(list(in_flight), num_returns=1)
            slot, task = in_flight.pop(reference)
            queued[slot] -= 1
            try:
                result = ray.get(reference)
            except ray.exceptions.RayActorError as error:
                result = Result(task.number, False, error=f"the Ray worker died while making this picture: "
                                                          f"{describe(error)[:300]}")
                self._replace(slot)
            except ray.exceptions.RayError as error:
                result = Result(task.number, False, error=f"Ray: {describe(error)[:300]}")
            feed(slot)
            yield result

    def _replace(self, slot: int) -> None:
        self.deaths += 1
        if self.deaths > self.max_deaths:
            raise WorkersFailed(f"Ray workers died {self.deaths} times; stopping")
        dead = self._actors[slot]
        self._actors[slot] = self._actor_class.remote(self._device)
        try:
            self._ray.kill(dead)
        except Exception:  # already gone
            pass

    def close(self, interrupted: bool = False) -> None:
        for actor in self._actors:
            try:
                self._ray.kill(actor)
            except Exception:  # already gone
                pass
        self._actors = []
        if self._started:
            self._ray.shutdown()
