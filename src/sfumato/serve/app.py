"""The HTTP API under ``/api/``, the AUTOMATIC1111 endpoints under ``/sdapi/v1/`` and the web page at ``/``.

:func:`create_app` builds the FastAPI application for a :class:`ServeConfig`;
``sfumato serve`` runs it with uvicorn. Every request passes :class:`Guard`
first (Host and Origin on loopback, the token where one is set, the body size
limit), which also names the caller; handlers answer errors as
``{"detail": message, "field": name}`` with a 4xx status.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..cli.jobs import resolve_device
from ..cli.models import SCHEDULERS
from .auth import caller, check_origin
from .config import ServeConfig
from .errors import ApiError
from .pictures import Uploads, decode, file_bytes, open_picture, record_of
from .runner import Worker
from .store import FINAL, Store
from .work import WORKFLOWS, Requests

log = logging.getLogger("sfumato.serve")
SWEEP_EVERY = 3600  # seconds between deletions of old jobs (with keep_days)
# an upload file older than this without its record is a leftover (a file being stored gets its record just after)
LEFTOVER_AFTER = 3600
MAX_KEY_LENGTH = 200  # characters of an Idempotency-Key
STATIC = Path(__file__).parent / "static"
_JOB_ID_LENGTH = 32


@dataclass
class Server:
    """What the handlers share: settings, the queue, the checks, the worker."""

    config: ServeConfig
    store: Store
    uploads: Uploads
    requests: Requests
    worker: Worker
    device: str
    recovered: dict

    # ------------------------------------------------------------------------ jobs

    def submit(self, payload: Any, owner: str, key: str | None = None) -> dict:
        """Check and queue a job; with an idempotency ``key`` (the Idempotency-Key header), a request sent again
        with the same key gets the job the first one made (``replayed``) instead of a second job."""
        if key is not None:
            if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
                raise ApiError(422, f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters, got "
                                    f"{key[:40]!r}{'...' if len(key) > 40 else ''}", "Idempotency-Key")
            fingerprint = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
            earlier = self.store.keyed(owner, key)
            if earlier is not None:
                return self._replay(earlier, fingerprint, key)
        if self.store.unfinished(owner) >= self.config.limits.max_queued:
            raise ApiError(429, f"you have {self.config.limits.max_queued} unfinished jobs, the limit; wait for some "
                                f"to finish or cancel them", None)
        submission = self.requests.submission(payload, owner)
        job = self.store.add(owner, submission.kind, submission.stored(), submission.summary, submission.pictures,
                             key=None if key is None else (key, fingerprint))
        if job.get("replayed"):  # the same key sent twice at once: the other request made the job
            return self._replay(self.store.keyed(owner, key), fingerprint, key)
        self.worker.notify()
        view = self.view(job)
        view["warnings"] = submission.warnings
        return view

    def _replay(self, earlier: tuple[str, str], fingerprint: str, key: str) -> dict:
        job_id, sent = earlier
        if sent != fingerprint:
            raise ApiError(422, f"Idempotency-Key {key[:40]!r} was sent before with another request (job {job_id}); "
                                f"use a new key for a new job", "Idempotency-Key")
        view = self.view(self.store.get(job_id))
        view["replayed"] = True
        return view

    def owned(self, job_id: str, owner: str, action: str = "see") -> dict:
        job = self.store.get(job_id) if len(job_id) == _JOB_ID_LENGTH and job_id.isalnum() else None
        if job is None:
            raise ApiError(404, f"id: no job {job_id[:80]!r} on this server", "id")
        if job["owner"] != owner:
            raise ApiError(403, f"id: job {job_id} was submitted by another client; only its submitter can "
                                f"{action} it", "id")
        return job

    def cancel(self, job_id: str, owner: str) -> dict:
        job = self.owned(job_id, owner, "cancel")
        if job["state"] in FINAL:
            raise ApiError(409, f"id: job {job_id} is already {job['state']}; there is nothing to cancel", "id")
        state = self.store.cancel(job_id)
        if state == "running":
            self.worker.cancel(job_id)  # it stops at its next step
        return self.view(self.store.get(job_id))

    def remove(self, job_id: str, owner: str) -> dict:
        """Delete a finished job of ``owner``: its record and its pictures."""
        job = self.owned(job_id, owner, "remove")
        if job["state"] not in FINAL:
            raise ApiError(409, f"id: job {job_id} is {job['state']}; cancel it first (DELETE without remove), and "
                                f"remove it once it has ended", "id")
        self._delete(self.store.remove([job_id]), [])
        return {"id": job_id, "state": "removed"}

    def sweep(self) -> dict[str, int]:
        """With ``keep_days``: delete the jobs that ended longer ago, with their pictures, and the uploaded
        pictures no remaining job names; always: files whose records are gone (a stop between the two)."""
        jobs: list[str] = []
        uploads: list[str] = []
        if self.config.keep_days is not None:
            before = time.time() - self.config.keep_days * 86400
            jobs = self.store.remove(self.store.expired(before))
            uploads = self.store.remove_unused_uploads(before)
        self._delete(jobs, uploads)
        # leftovers: result folders of jobs no longer in the store; upload files without a record
        known = self.store.job_ids()
        folders = [p.name for p in self.requests.results.iterdir() if p.is_dir() and p.name not in known] \
            if self.requests.results.is_dir() else []
        settled = time.time() - LEFTOVER_AFTER
        files = [p.name for p in self.uploads.folder.iterdir() if p.is_file() and p.stat().st_mtime < settled
                 and (p.name.endswith(".partial") or self.store.find_upload(p.name[:-len(".png")]) is None)]
        self._delete(folders, files)
        return {"jobs": len(jobs), "uploads": len(uploads), "leftovers": len(folders) + len(files)}

    def _delete(self, job_ids: list[str], upload_files: list[str]) -> None:
        for job_id in job_ids:
            shutil.rmtree(self.requests.results / job_id, ignore_errors=True)
        for name in upload_files:
            (self.uploads.folder / name).unlink(missing_ok=True)

    def view(self, job: dict, brief: bool = False) -> dict:
        job_id = job["id"]
        view = {"id": job_id, "state": job["state"], "kind": job["kind"], "summary": job["summary"],
                "position": self.store.position(job), "created": job["created"], "started": job["started"],
                "finished": job["finished"], "attempts": job["attempts"],
                "cancel_requested": job["cancel_requested"], "url": f"/api/jobs/{job_id}",
                "events": f"/api/jobs/{job_id}/events"}
        if job["state"] == "running":
            view["progress"] = self.worker.progress.get(job_id) or {"stage": "starting", "step": 0, "steps": 0,
                                                                    "fraction": 0.0}
        elif job["state"] == "done":
            view["progress"] = {"stage": "done", "fraction": 1.0}
        if job["state"] == "failed":
            view["error"] = {"message": job["error"], "field": job["error_field"]}
        if job["state"] == "done":
            images = self.store.images(job_id)
            view["images"] = [{"n": image["n"], "url": f"/api/jobs/{job_id}/images/{image['n']}",
                               "ref": f"result:{job_id}/{image['n']}",
                               **({} if brief else {"record": image["record"]})} for image in images]
            view["result"] = job["result"]
        if not brief:
            view["request"] = job["request"]["payload"]
        return view

    def image_path(self, job_id: str, n: str, owner: str) -> Path:
        job = self.owned(job_id, owner)
        if not n.isdigit():
            raise ApiError(422, f"n must be a picture number (0, 1, ...), got {n[:40]!r}", "n")
        if job["state"] != "done":
            raise ApiError(409, f"id: job {job_id} is {job['state']}; its pictures are there once it is done", "id")
        if int(n) >= len(self.store.images(job_id)):
            raise ApiError(404, f"n: job {job_id} has no picture {n}", "n")
        return self.requests.results / job_id / f"{int(n)}.png"

    async def wait(self, job_id: str, timeout: float | None = None) -> dict:
        """The job once it has ended (for the synchronous AUTOMATIC1111 endpoints)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.store.get(job_id)
            if job["state"] in FINAL or (deadline is not None and time.monotonic() > deadline):
                return job
            await asyncio.sleep(0.05)


class Guard:
    """ASGI middleware: Host / Origin checks, the token, the caller's identity and the body size limit."""

    def __init__(self, app, config: ServeConfig):
        self.app, self.config = app, config

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        from starlette.datastructures import Headers, QueryParams

        headers, query = Headers(scope=scope), QueryParams(scope.get("query_string", b""))
        try:
            check_origin(self.config, headers, scope["method"])
            owner = caller(self.config, headers, query)
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.config.limits.max_body):
                raise ApiError(413, f"the request body is {length} bytes, more than the limit of "
                                    f"{self.config.limits.max_body} bytes", None)
        except ApiError as error:
            extra = {"WWW-Authenticate": 'Basic realm="sfumato", charset="UTF-8"'} if error.status == 401 else {}
            return await JSONResponse(error.body(), status_code=error.status, headers=extra)(scope, receive, send)
        scope.setdefault("state", {})["owner"] = owner
        limit, seen = self.config.limits.max_body, 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge()
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _BodyTooLarge:
            error = ApiError(413, f"the request body is more than the limit of {limit} bytes", None)
            await JSONResponse(error.body(), status_code=413)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


async def read_json(request: Request) -> Any:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {kind or 'none'!r}", "Content-Type")
    body = await request.body()
    try:
        return json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the request body is not valid JSON: {error}", None) from None


def create_app(config: ServeConfig) -> FastAPI:
    """The application for ``config``: opens (or creates) the queue under ``config.data`` and recovers it."""
    config.check()
    data = config.data.expanduser().resolve()
    config.data = data
    data.mkdir(parents=True, exist_ok=True)
    store = Store(data / "sfumato.sqlite3")
    recovered = store.recover(config.max_attempts)
    if any(recovered.values()):
        log.warning("recovered the queue: %s", recovered)
    uploads = Uploads(data / "uploads", store)
    from ..cli.errors import UsageError

    try:
        device = resolve_device(config.device)
    except UsageError as error:
        store.close()
        raise error
    requests = Requests(config, store, uploads, device)
    worker = Worker(store, requests.results, device, config.max_attempts)
    server = Server(config, store, uploads, requests, worker, device, recovered)

    swept = server.sweep()
    if any(swept.values()):
        log.warning("deleted old jobs and files: %s", swept)

    async def sweep_hourly():
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                await run_in_threadpool(server.sweep)
            except Exception:  # a full disk, a file in use: try again next time
                log.exception("cannot delete old jobs")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if config.start_worker:
            worker.start()
        sweeper = asyncio.create_task(sweep_hourly()) if config.keep_days is not None else None
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
            await run_in_threadpool(worker.stop)
            store.close()

    # no /docs page: FastAPI's would fetch its scripts from a CDN, and nothing here is fetched from elsewhere
    app = FastAPI(title="sfumato", version=__version__, lifespan=lifespan, docs_url=None,
                  openapi_url="/api/openapi.json", redoc_url=None,
                  description="Kandinsky, Stable Diffusion and SDXL image generation: a durable job queue, the "
                              "AUTOMATIC1111 API and a web page.")
    app.state.server = server
    app.add_middleware(Guard, config=config)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError):
        return JSONResponse(error.body(), status_code=error.status)

    def owner(request: Request) -> str:
        return request.state.owner

    # ------------------------------------------------------------------------ jobs

    @app.post("/api/jobs", status_code=202, tags=["jobs"],
              summary="Submit a job: a job record, {chain: ...} or {reproduce: ...}; returns its id at once (an "
                      "Idempotency-Key header makes a retry return the same job, with 200)")
    async def submit(request: Request):
        payload = await read_json(request)
        view = await run_in_threadpool(server.submit, payload, owner(request), request.headers.get("idempotency-key"))
        return JSONResponse(view, status_code=200 if view.get("replayed") else 202, headers={"Location": view["url"]})

    @app.get("/api/jobs", tags=["jobs"], summary="The caller's queue and history, newest first")
    async def list_jobs(request: Request):
        limit = request.query_params.get("limit", "50")
        if not limit.isdigit() or not 1 <= int(limit) <= 500:
            raise ApiError(422, f"limit must be a whole number from 1 to 500, got {limit[:40]!r}", "limit")
        states = tuple(s for s in request.query_params.get("state", "").split(",") if s)
        for state in states:
            if state not in ("queued", "running", *FINAL):
                raise ApiError(422, f"state must be queued, running, done, failed or cancelled (comma-separated), "
                                    f"got {state[:40]!r}", "state")
        jobs = server.store.list(owner(request), int(limit), states or None)
        return {"jobs": [server.view(job, brief=True) for job in jobs], "queue": server.store.counts()}

    @app.get("/api/jobs/{job_id}", tags=["jobs"], summary="A job: state, queue position, progress, pictures, error")
    async def get_job(job_id: str, request: Request):
        return server.view(server.owned(job_id, owner(request)))

    @app.delete("/api/jobs/{job_id}", tags=["jobs"],
                summary="Cancel a job (its submitter only; a running job stops at its next step); with ?remove=true "
                        "delete a finished job and its pictures")
    async def cancel_job(job_id: str, request: Request):
        remove = request.query_params.get("remove", "false").lower()
        if remove not in ("true", "false", "1", "0"):
            raise ApiError(422, f"remove must be true or false, got {remove[:40]!r}", "remove")
        if remove in ("true", "1"):
            return await run_in_threadpool(server.remove, job_id, owner(request))
        return await run_in_threadpool(server.cancel, job_id, owner(request))

    @app.get("/api/jobs/{job_id}/events", tags=["jobs"], summary="Server-Sent Events: the job's state as it changes")
    async def job_events(job_id: str, request: Request):
        who = owner(request)
        server.owned(job_id, who)

        async def stream():
            last, quiet_since = None, time.monotonic()
            yield "retry: 1000\n\n"
            while True:
                job = server.store.get(job_id)
                view = server.view(job, brief=True)
                text = json.dumps(view)
                if text != last:
                    yield f"event: {view['state'] if job['state'] in FINAL else 'progress'}\ndata: {text}\n\n"
                    last, quiet_since = text, time.monotonic()
                if job["state"] in FINAL:
                    return
                if time.monotonic() - quiet_since > 15:
                    yield ": still here\n\n"
                    quiet_since = time.monotonic()
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.1)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/api/jobs/{job_id}/images/{n}", tags=["jobs"], response_class=FileResponse,
             summary="A finished job's picture n: the PNG with its parameters, as the command line writes it")
    async def job_image(job_id: str, n: str, request: Request):
        path = server.image_path(job_id, n, owner(request))
        return FileResponse(path, media_type="image/png", filename=f"sfumato-{job_id[:8]}-{n}.png",
                            content_disposition_type="inline", headers={"Cache-Control": "private, max-age=86400"})

    # ------------------------------------------------------------------------ the rest of the API

    @app.get("/api/models", tags=["server"],
             summary="The server's models (the workflows each runs, their defaults), its ControlNets and depth models")
    async def models():
        listed = await run_in_threadpool(server.requests.models)
        return {"models": listed, "workflows": list(WORKFLOWS), "schedulers": list(SCHEDULERS),
                **server.requests.registered_listing()}

    @app.get("/api/server", tags=["server"], summary="Version, device, limits, whether a token is needed, the queue")
    async def about():
        return {"sfumato": __version__, "device": server.device, "token_required": bool(config.tokens),
                "limits": config.limits.public(), "queue": server.store.counts(), "recovered": server.recovered,
                "workflows": list(WORKFLOWS)}

    @app.post("/api/uploads", status_code=201, tags=["pictures"],
              summary="Keep a picture for later jobs: JSON {image: data URL}, or the file itself as image/*")
    async def upload(request: Request):
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind.startswith("image/") or kind == "application/octet-stream":
            raw = await request.body()
            picture = await run_in_threadpool(open_picture, raw, "image", config.limits)
        else:
            payload = await read_json(request)
            if not isinstance(payload, dict) or "image" not in payload:
                raise ApiError(422, "image: send {\"image\": \"data:image/png;base64,...\"}", "image")
            picture = await run_in_threadpool(decode, payload["image"], "image", config.limits)
        reference = await run_in_threadpool(uploads.keep, picture)
        return JSONResponse({"ref": reference, "width": picture.width, "height": picture.height}, status_code=201)

    @app.post("/api/info", tags=["pictures"], summary="The parameters stored in a PNG sfumato wrote ({image: data URL})")
    async def info(request: Request):
        payload = await read_json(request)
        if not isinstance(payload, dict) or "image" not in payload:
            raise ApiError(422, "image: send {\"image\": \"data:image/png;base64,...\"}", "image")
        record = await run_in_threadpool(png_record, payload["image"], config.limits, "image", data / "tmp")
        return {"record": record}

    from .a1111 import register

    register(app, server)

    # ------------------------------------------------------------------------ the page

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def png_record(value: Any, limits, field: str, folder: Path, bare_base64: bool = False) -> dict:
    """The sfumato record of a PNG sent as base64 (checked and decoded like any upload)."""
    raw = file_bytes(value, field, limits, bare_base64)
    open_picture(raw, field, limits)
    return record_of(raw, field, folder)


__all__ = ["create_app", "Server", "png_record"]
