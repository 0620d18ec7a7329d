"""The queue is a real SQLite file under --data: jobs survive a restart, and a `sfumato serve` killed with
SIGKILL in the middle of a job runs it again from the start, with every picture made exactly once."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time

import httpx
import PIL.Image
import pytest

from sfumato.serve.store import Store

from .helpers import FAST, free_port, wait_for

JOB = {"prompt": "a green square on a black background", **FAST}


def test_queued_and_running_jobs_survive_a_restart(make_app, tmp_path):
    data = tmp_path / "data"
    first = make_app(data=data)  # no worker: the jobs stay queued
    ids = [first.post("/api/jobs", json={**JOB, "seed": seed, "num": 2}).json()["id"] for seed in range(3)]
    store = first.app.state.server.store
    running = store.claim()  # as if the worker had started the first job when the server died
    assert running["id"] == ids[0] and running["state"] == "running"
    (data / "results" / ids[0]).mkdir(parents=True)
    (data / "results" / ids[0] / ".0.png.123.partial").write_bytes(b"half a picture")
    first.__exit__(None, None, None)

    with sqlite3.connect(data / "sfumato.sqlite3") as db:  # it is an ordinary SQLite file
        assert db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state").fetchall() == [
            ("queued", 2), ("running", 1)]

    second = make_app(data=data, start_worker=True)
    assert second.get("/api/server").json()["recovered"] == {"requeued": 1, "cancelled": 0, "failed": 0}
    jobs = [wait_for(second, job_id) for job_id in ids]
    assert [job["state"] for job in jobs] == ["done"] * 3
    assert jobs[0]["attempts"] == 2 and jobs[1]["attempts"] == 1
    for job in jobs:
        files = sorted(p.name for p in (data / "results" / job["id"]).iterdir())
        assert files == ["0.png", "1.png"]  # nothing half-written left, nothing twice
        for image in job["images"]:
            with PIL.Image.open(io.BytesIO(second.get(image["url"]).content)) as picture:
                picture.load()
                assert picture.size == (64, 64)


def test_recovery_gives_up_on_a_job_the_server_keeps_dying_in(tmp_path):
    store = Store(tmp_path / "queue.sqlite3")
    job = store.add("someone", "job", {"payload": {}, "entries": []}, {}, 1)
    for attempt in range(3):
        assert store.claim()["id"] == job["id"]
        recovered = store.recover(max_attempts=3)
    assert recovered == {"requeued": 0, "cancelled": 0, "failed": 1}
    failed = store.get(job["id"])
    assert failed["state"] == "failed" and "3 times" in failed["error"]
    cancelled = store.add("someone", "job", {"payload": {}, "entries": []}, {}, 1)
    store.claim()
    assert store.cancel(cancelled["id"]) == "running"
    assert store.recover(max_attempts=3)["cancelled"] == 1
    store.close()


def _start(data, port: int) -> subprocess.Popen:
    environment = {k: v for k, v in os.environ.items() if k != "SFUMATO_BUILTIN_MODEL"}
    return subprocess.Popen([sys.executable, "-m", "sfumato", "serve", "--port", str(port), "--data", str(data)],
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _ready(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"{url}/api/server", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("sfumato serve did not answer within 120 s")


def test_sigkill_in_the_middle_of_a_job(tmp_path, shipped_builtin):
    data, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start(data, port)
    try:
        _ready(url, process)
        client = httpx.Client(base_url=url, timeout=60)
        ids = [client.post("/api/jobs", json={**JOB, "seed": 10 * i, "num": 2, "steps": 150 if i == 0 else 3}
                           ).json()["id"] for i in range(4)]
        deadline = time.monotonic() + 120
        while client.get(f"/api/jobs/{ids[0]}").json().get("progress", {}).get("step", 0) < 3:
            assert time.monotonic() < deadline, "the first job never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(30)

        process = _start(data, port)
        _ready(url, process)
        assert client.get("/api/server").json()["recovered"]["requeued"] == 1
        jobs = [wait_for(client, job_id) for job_id in ids]
        assert [job["state"] for job in jobs] == ["done"] * 4
        seeds = [image["record"]["seed"] for job in jobs for image in job["images"]]
        assert sorted(seeds) == [0, 1, 10, 11, 20, 21, 30, 31]  # every picture exactly once
        assert jobs[0]["attempts"] == 2
        for job in jobs:
            assert sorted(p.name for p in (data / "results" / job["id"]).iterdir()) == ["0.png", "1.png"]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
