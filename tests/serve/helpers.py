"""Helpers for the server's tests: pictures as data URLs, waiting for jobs, a live server in a thread."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time

import httpx
import numpy as np
import PIL.Image

#: Few steps: a 64x64 picture of the built-in model in about a second on a CPU.
FAST = {"steps": 3, "prior_steps": 2}
FINAL = ("done", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def data_url(picture: PIL.Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def disc(colour=(255, 0, 0), background=(0, 0, 255), size=64) -> PIL.Image.Image:
    y, x = np.mgrid[:size, :size]
    array = np.zeros((size, size, 3), dtype=np.uint8)
    array[...] = background
    array[(x - size // 2) ** 2 + (y - size // 2) ** 2 < (size // 4) ** 2] = colour
    return PIL.Image.fromarray(array)


def right_half_mask(size=64) -> PIL.Image.Image:
    array = np.zeros((size, size), dtype=np.uint8)
    array[:, size // 2:] = 255
    return PIL.Image.fromarray(array)


def wait_for(client, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        job = response.json()
        if job["state"] in FINAL:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['state']} after {timeout} s: {job}"
        time.sleep(0.1)



class LiveServer:
    """``sfumato serve``'s application under uvicorn on a free loopback port, in a thread of this process."""

    def __init__(self, config):
        import uvicorn

        from sfumato.serve.app import create_app

        self.app = create_app(config)
        self.config = config
        self.port = config.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="live-sfumato-serve", daemon=True)

    def start(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)

    def client(self, name: str = "tests", **headers) -> httpx.Client:
        """An HTTP client that is one caller of the server (its own jobs)."""
        return httpx.Client(base_url=self.url, timeout=300, headers={"X-Sfumato-Client": name, **headers})
