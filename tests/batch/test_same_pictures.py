"""The same job file gives the same pictures, bit for bit, in one process, in 2 worker processes and on a
local Ray instance (issue 14); and the README's batch commands run as written."""

from __future__ import annotations

import re
import shlex
import time
from pathlib import Path

import pytest

from .conftest import (ROOT, assert_same_pictures, manifest, pictures, twenty_jobs, write_jobs)

DEFAULTS = ["--steps", "4", "--prior-steps", "2"]


def _main(*argv) -> int:
    from sfumato.cli import main

    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def jobs_file(tmp_path_factory) -> Path:
    return write_jobs(tmp_path_factory.mktemp("jobs") / "jobs.jsonl", twenty_jobs())


@pytest.fixture(scope="module")
def reference(jobs_file, tmp_path_factory):
    """The 20 pictures made in this process (--workers 1)."""
    out = tmp_path_factory.mktemp("one-process")
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SFUMATO_BUILTIN_MODEL", raising=False)
        assert _main("batch", jobs_file, "--out", out, *DEFAULTS, "--quiet") == 0
    made = pictures(out)
    assert len(made) == 20
    return out, made


@pytest.fixture(scope="module")
def ray_instance():
    """A real local Ray instance for this module's tests (started once: it takes seconds)."""
    ray = pytest.importorskip("ray")
    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:  # its worker processes inherit this environment
        patch.delenv("SFUMATO_BUILTIN_MODEL", raising=False)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    print(f"\nray.init: {time.perf_counter() - start:.1f} s")
    yield ray
    ray.shutdown()


def test_one_process_writes_named_pictures_and_a_manifest(reference, jobs_file):
    out, made = reference
    rows = manifest(out)
    assert len(rows) == 20 and all(row["status"] == "done" and row["error"] is None for row in rows)
    assert [row["output"] for row in rows] == [row["output"] for row in rows if (out / row["output"]).is_file()]
    # names come from the jobs: prompt words, seed, a hash of what decides the pixels
    assert rows[0]["output"].startswith("a-red-circle-on-a-blue-background-100-")
    assert any(row["where"] == "jobs.jsonl line 11, picture 4 of 4" for row in rows)
    from sfumato.metadata import read_parameters

    record = read_parameters(out / rows[0]["output"])
    assert record["command"] == "batch" and record["seed"] == 100 and record["cpu_threads"] == 1
    assert read_parameters(out / rows[-1]["output"])["steps"] == 4  # --steps filled the line that set none


def test_two_workers_make_the_same_pictures(reference, jobs_file, batch, tmp_path):
    result = batch(jobs_file, "--out", tmp_path, "--workers", 2, *DEFAULTS, "--quiet")
    assert result.code == 0, result.err
    assert_same_pictures(pictures(tmp_path), reference[1])
    assert len({row["worker"] for row in manifest(tmp_path)}) == 2


def test_ray_makes_the_same_pictures(reference, jobs_file, ray_instance, batch, tmp_path):
    start = time.perf_counter()
    result = batch(jobs_file, "--out", tmp_path, "--ray", "auto", *DEFAULTS)
    print(f"20 pictures on Ray: {time.perf_counter() - start:.1f} s")
    assert result.code == 0, result.err
    assert "on Ray: 2 workers" in result.err
    assert_same_pictures(pictures(tmp_path), reference[1])
    assert ray_instance.is_initialized()  # a Ray the caller started is left running


def readme_batch_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Many pictures: `sfumato batch`")
    section = text[start:text.find("\n## ", start + 1)]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    return [line for block in blocks for line in block.splitlines() if line.startswith("sfumato batch ")]


def test_readme_batch_commands_run_as_written(ray_instance, tmp_path, monkeypatch):
    commands = readme_batch_commands()
    assert len(commands) == 2 and "--ray auto" in commands[1]
    (tmp_path / "examples").symlink_to(ROOT / "examples", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    outs = []
    for command in commands:
        argv = shlex.split(command)
        assert _main(*argv[1:]) == 0, command
        outs.append(tmp_path / argv[argv.index("--out") + 1])
    made = pictures(outs[0])
    assert len(made) == 4  # as the README says
    assert_same_pictures(pictures(outs[1]), made)
    # and again: everything is there already
    assert _main(*shlex.split(commands[0])[1:]) == 0
    assert sorted(p.name for p in outs[0].glob("*.png")) == sorted(made)
