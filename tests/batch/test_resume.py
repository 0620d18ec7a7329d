"""A run killed halfway and started again finishes with every picture made exactly once (issue 14):
a crash (the command killed), a worker process killed, Ctrl-C."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from .conftest import FAST, PROMPTS, manifest, start_batch, wait_for_done, write_jobs


def _jobs(tmp_path: Path, count: int) -> Path:
    return write_jobs(tmp_path / "jobs.jsonl", [{"prompt": PROMPTS[i % 6], "seed": i, **FAST} for i in range(count)])


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """name -> (inode, mtime_ns): a picture made again would be a new file."""
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.glob("*.png")}


def _resume(batch, jobs: Path, out: Path, before: dict[str, tuple[int, int]], total: int) -> list[dict]:
    result = batch(jobs, "--out", out, "--quiet")
    assert result.code == 0, result.err
    after = _files(out)
    assert len(after) == total
    # the pictures of the first run are untouched, the others were made by the second
    assert {name: after[name] for name in before} == before
    assert sorted(line.strip().split("/")[-1] for line in result.out.splitlines()) == sorted(set(after) - set(before))
    rows = manifest(out)
    assert len(rows) == total and all(row["status"] == "done" for row in rows)
    assert sorted(row["output"] for row in rows if row["run"] == 2) == sorted(set(after) - set(before))
    assert not list(out.glob(".*.partial"))
    return rows


def test_resume_after_the_command_is_killed(batch, tmp_path):
    jobs, out = _jobs(tmp_path, 12), tmp_path / "out"
    process = start_batch(jobs, "--out", out, cwd=tmp_path)
    wait_for_done(out, 3, process)
    os.killpg(process.pid, signal.SIGKILL)  # a crash: no clean-up at all
    process.wait()
    before = _files(out)
    assert 3 <= len(before) < 12
    _resume(batch, jobs, out, before, 12)


def test_resume_after_a_worker_dies_and_ctrl_c(batch, tmp_path):
    # many more pictures than are made before the Ctrl-C: on a loaded machine the test may look late, and the run
    # must still be going when it does
    total = 24
    jobs, out = _jobs(tmp_path, total), tmp_path / "out"
    process = start_batch(jobs, "--out", out, "--workers", 2, cwd=tmp_path)
    first = wait_for_done(out, 1, process)
    victim = int(first[0]["worker"].rsplit(":", 1)[1])
    os.kill(victim, signal.SIGKILL)  # e.g. the out-of-memory killer
    lines = wait_for_done(out, 4, process)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
    code = process.wait(timeout=60)
    errors = process.stderr.read()
    assert code == 130, errors[-3000:]
    assert "sfumato: interrupted" in errors
    # the worker died while making a picture: reported as failed, and the run went on with a new worker
    died = [line for line in lines if line["status"] == "failed"]
    assert died and all("worker process died" in line["error"] for line in died)
    # Ctrl-C: the manifest is rewritten, one line per picture, the unmade ones pending or failed
    rows = manifest(out)
    assert len(rows) == total and {row["status"] for row in rows} <= {"done", "failed", "pending"}
    assert {"failed", "pending"} & {row["status"] for row in rows}
    workers = {int(row["worker"].rsplit(":", 1)[1]) for row in rows if row["worker"]}
    for pid in workers:  # no worker outlives the command
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        assert Path(f"/proc/{pid}/status").read_text().find("zombie") >= 0, f"worker {pid} still runs"
    before = _files(out)
    assert len(before) < total
    _resume(batch, jobs, out, before, total)
