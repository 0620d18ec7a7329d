"""Fixtures for ``sfumato serve``: a live server on a free loopback port (real uvicorn, in this process),
apps for the test client, pictures as data URLs, and waiting for jobs.

The live server runs the shipped built-in model (loaded once per session); the
tests ask for few steps so that a picture takes about a second on a CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="sfumato serve needs the serve extra: pip install 'sfumato[serve]'")
pytest.importorskip("httpx", reason="the API tests need httpx (the test extra)")

from .helpers import LiveServer, free_port  # noqa: E402


@pytest.fixture(scope="session")
def shipped_builtin():
    """The shipped built-in model, whatever the command line's tests set SFUMATO_BUILTIN_MODEL to."""
    saved = os.environ.pop("SFUMATO_BUILTIN_MODEL", None)
    yield
    if saved is not None:
        os.environ["SFUMATO_BUILTIN_MODEL"] = saved


@pytest.fixture(scope="session")
def live(tmp_path_factory, shipped_builtin):
    from sfumato.serve.config import ServeConfig

    server = LiveServer(ServeConfig(port=free_port(), data=tmp_path_factory.mktemp("serve-data"))).start()
    yield server
    server.stop()


@pytest.fixture
def api(live, request):
    """A client of the live server, named after the test (so each test sees its own jobs)."""
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[-60:]
    with live.client(name) as client:
        yield client


@pytest.fixture
def make_app(tmp_path, shipped_builtin):
    """``make_app(**config)`` -> a FastAPI test client of a fresh server (no worker unless asked)."""
    from fastapi.testclient import TestClient

    from sfumato.serve.app import create_app
    from sfumato.serve.config import ServeConfig

    opened = []

    def make(start_worker: bool = False, data: Path | None = None, headers: dict | None = None, **options):
        config = ServeConfig(data=data or tmp_path / "data", start_worker=start_worker, **options)
        client = TestClient(create_app(config), base_url="http://127.0.0.1", headers=headers or {})
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)
