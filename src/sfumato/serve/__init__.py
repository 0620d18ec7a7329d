"""``sfumato serve``: every workflow of the command line over HTTP, with a durable job queue and a web page.

    sfumato serve [--host 127.0.0.1] [--port 7860] [--model builtin] [--token TOKEN] [--data DIR]
                  [--controlnet NAME=FOLDER ...] [--depth-model NAME=FOLDER ...]

The API (``/api/``, described at ``/api/openapi.json``):

    POST   /api/jobs                  a job record (as PNGs and chain steps write it), {"chain": ...}
                                      or {"reproduce": ...}; answers at once with the job's id and
                                      queue position
    GET    /api/jobs                  the caller's queue and history
    GET    /api/jobs/{id}             state: queued, running (step i of n), done, failed (the error),
                                      cancelled; the pictures' URLs and records
    GET    /api/jobs/{id}/events      the same, pushed as Server-Sent Events until the job ends
    DELETE /api/jobs/{id}             cancel (the submitter only); a running job stops at its next step
    GET    /api/jobs/{id}/images/{n}  a picture: the PNG the command line would write
    GET    /api/models                the server's models and the workflows each runs
    POST   /api/uploads, /api/info    keep a picture for later jobs; read a PNG's parameters

and AUTOMATIC1111's ``/sdapi/v1/`` endpoints (:mod:`sfumato.serve.a1111`).

Jobs are checked completely when submitted, with the command line's own checks
(:mod:`sfumato.cli.jobs`), stored as complete records in SQLite under
``--data``, and run one at a time by a worker that keeps its models loaded;
after a crash every queued job runs and a job that was running runs again
from the start (:mod:`sfumato.serve.store`).

FastAPI and uvicorn are the ``serve`` extra: ``pip install 'sfumato[serve]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..cli.errors import UsageError


def default_data_folder() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "sfumato" / "serve"


def config_from_args(args: Any):
    """A :class:`ServeConfig` from the command line's options."""
    from .. import limits as library_limits
    from .config import Limits, ServeConfig, registrations, tokens_from

    limits = Limits(max_steps=args.max_steps, max_queued=args.max_queued)
    if args.max_side:
        limits.max_side = args.max_side
    if args.max_images:
        limits.max_images = args.max_images
    try:
        limits.max_upload = library_limits.parse_bytes(args.max_upload)
    except ValueError:
        raise UsageError(f"--max-upload must be a size such as 20MiB, got {args.max_upload!r}") from None
    return ServeConfig(host=args.host, port=args.port, models=args.model or ["builtin"],
                       tokens=tokens_from(args.token), device=args.device, limits=limits,
                       controlnets=registrations(getattr(args, "controlnet", None), "--controlnet"),
                       depth_models=registrations(getattr(args, "depth_model", None), "--depth-model"),
                       keep_days=getattr(args, "keep_days", None),
                       data=Path(args.data).expanduser() if args.data else default_data_folder()).check()


def command(args: Any) -> int:
    """``sfumato serve``: check the settings, open the queue, serve until interrupted."""
    config = config_from_args(args)  # a bad address or token is refused before anything heavy loads
    try:
        import uvicorn

        from .app import create_app
    except ImportError as error:
        raise UsageError(f"sfumato serve needs FastAPI and uvicorn ({error.name} is missing): "
                         f"pip install 'sfumato[serve]'") from None
    app = create_app(config)
    server = app.state.server
    host = f"[{config.host}]" if ":" in config.host else config.host
    access = f"token required ({len(config.tokens)} token{'s' * (len(config.tokens) > 1)})" if config.tokens \
        else "loopback only, no token"
    registered = "".join(f"; {label}: {', '.join(f'{name}={folder}' for name, folder in folders.items())}"
                         for label, folders in (("controlnets", config.controlnets),
                                                ("depth models", config.depth_models)) if folders)
    kept = "" if config.keep_days is None else f", finished jobs kept {config.keep_days:g} days"
    print(f"sfumato serve: http://{host}:{config.port}/  (models: {', '.join(config.models)}{registered}; device: "
          f"{server.device}; {access}; data: {config.data}{kept})", flush=True)
    if any(server.recovered.values()):
        print(f"sfumato serve: recovered the queue after a stop: {server.recovered}", flush=True)
    uvicorn.run(app, host=config.host, port=config.port, log_level="warning", access_log=False)
    return 0


__all__ = ["command", "config_from_args", "default_data_folder"]
