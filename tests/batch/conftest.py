"""Batch test fixtures: the built-in model at few steps, small job files, an in-process runner."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

ROOT = Path(__file__).resolve().parents[2]
# few steps: the pictures are not pretty, but every way of running must make the same bits
FAST = {"steps": 4, "prior_steps": 2}
PROMPTS = [f"a {colour} {shape} on a {background} background"
           for colour, shape, background in [("red", "circle", "blue"), ("green", "square", "black"),
                                             ("yellow", "triangle", "white"), ("white", "circle", "red"),
                                             ("blue", "square", "yellow"), ("black", "triangle", "green")]]


def twenty_jobs() -> list[dict]:
    """20 pictures: 10 one-picture lines, a line with num 4, a 2x2 sweep, an image-to-image job, and a
    line of CLI-default steps that the command line fills in (see write_jobs)."""
    lines: list[dict] = [{"prompt": PROMPTS[i % 6], "seed": 100 + i, **FAST} for i in range(10)]
    lines.append({"task": "text2image", "prompt": PROMPTS[1], "seed": 7, "num": 4, **FAST})
    lines.append({"template": {"prompt": "a {colour} circle on a {background} background", **FAST},
                  "values": {"colour": ["red", "green"], "background": ["blue", "black"]}})
    lines.append({"task": "img2img", "image": str(ROOT / "docs" / "images" / "generate.png"),
                  "prompt": "a yellow circle on a blue background", "strength": 0.5, "seed": 2, **FAST})
    lines.append({"prompt": PROMPTS[5], "seed": 3})  # steps from the command line's --steps
    return lines


def write_jobs(path: Path, lines: list) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines),
                    encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def builtin_model(monkeypatch):
    """The shipped built-in model (the cli tests point SFUMATO_BUILTIN_MODEL at a tiny random one)."""
    monkeypatch.delenv("SFUMATO_BUILTIN_MODEL", raising=False)


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def batch(capsys):
    """``batch(jobs, out, *options)`` runs ``sfumato batch`` in this process."""
    from sfumato.cli import main

    def run(*argv) -> Result:
        capsys.readouterr()
        code = main(["batch", *map(str, argv)])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def pictures(folder: Path) -> dict[str, np.ndarray]:
    result = {}
    for path in sorted(Path(folder).glob("*.png")):
        with PIL.Image.open(path) as image:
            result[path.name] = np.asarray(image.convert("RGB")).copy()
    return result


def manifest(folder: Path) -> list[dict]:
    path = Path(folder) / "manifest.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def assert_same_pictures(made: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert sorted(made) == sorted(reference)
    different = [name for name in reference if not np.array_equal(made[name], reference[name])]
    assert not different, f"pictures differ: {different}"


def start_batch(*argv, cwd: Path) -> subprocess.Popen:
    """``sfumato batch`` in a child process of its own process group (so that a test can Ctrl-C it).

    Ctrl-C is given back its default action in the child, as in a terminal: a test suite started in the
    background of a non-interactive shell (``.ci/run &``) ignores SIGINT, and its children inherit that.
    """
    env = {k: v for k, v in os.environ.items() if k != "SFUMATO_BUILTIN_MODEL"}
    return subprocess.Popen([sys.executable, "-m", "sfumato", "batch", *map(str, argv), "--quiet"], cwd=cwd,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for_done(folder: Path, count: int, process: subprocess.Popen, timeout: float = 180) -> list[dict]:
    """The manifest's lines once ``count`` pictures are done (the run appends a line per picture)."""
    path = Path(folder) / "manifest.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the batch ended early ({process.returncode}): {process.stderr.read()}")
        if path.is_file():
            lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                     if line.endswith("}")]
            if sum(line["status"] == "done" for line in lines) >= count:
                return lines
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    raise AssertionError(f"fewer than {count} pictures done after {timeout} s")
