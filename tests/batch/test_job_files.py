"""Job files: records, prompts and sweeps; PNG records fed back; bad lines reported by number and field,
skipped or (--strict) stopping the run; an unknown model stops it before any work."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from .conftest import FAST, manifest, pictures, write_jobs

GOOD = {"prompt": "a red circle on a blue background", "seed": 1, **FAST}

BAD_LINES = {  # line -> what its error must name
    "not json at all {": "not a JSON object",
    json.dumps({**GOOD, "stpes": 4}): "unknown key 'stpes'",
    json.dumps({**GOOD, "steps": "many"}): "--steps must be a positive whole number, got 'many'",
    json.dumps({**GOOD, "task": "paint"}): "unknown task 'paint'",
    json.dumps({**GOOD, "seed": -1}): "seed must be a whole number",
    json.dumps({**GOOD, "num": 0}): "num must be a positive whole number",
    json.dumps({**GOOD, "device": "cpu"}): "device is set for the whole run",
    json.dumps({**GOOD, "task": "img2img", "image": "missing.png"}): "'missing.png': no such file",
    json.dumps({**GOOD, "size": "65x64"}): "not a multiple of 64",
    json.dumps({"template": {"prompt": "a {colour} {shape}"}, "values": {"colour": ["red"]}}): "no list for shape",
    json.dumps([1, 2]): "must be a JSON object",
}


def _bad_file(tmp_path):
    return write_jobs(tmp_path / "jobs.jsonl", [GOOD, *BAD_LINES])


def test_bad_lines_are_reported_by_number_and_skipped(batch, tmp_path):
    result = batch(_bad_file(tmp_path), "--out", tmp_path / "out")
    assert result.code == 1  # something was not made
    for number, expected in enumerate(BAD_LINES.values(), start=2):
        [line] = [line for line in result.err.splitlines() if f"jobs.jsonl line {number}:" in line]
        assert expected in line and line.startswith("sfumato: error:") and line.endswith("(skipped)"), line
    assert len(pictures(tmp_path / "out")) == 1  # the good line was made all the same
    rows = manifest(tmp_path / "out")
    assert [row["status"] for row in rows] == ["done"] + ["invalid"] * len(BAD_LINES)
    assert [row["line"] for row in rows] == list(range(1, len(BAD_LINES) + 2))


def test_strict_stops_before_any_work(batch, tmp_path):
    result = batch(_bad_file(tmp_path), "--out", tmp_path / "out", "--strict")
    assert result.code == 2
    assert len([line for line in result.err.splitlines() if line.startswith("sfumato: error: jobs.jsonl")]) \
        == len(BAD_LINES)
    assert "nothing was made (--strict)" in result.err
    assert not list((tmp_path / "out").glob("*.png")) and not (tmp_path / "out" / "manifest.jsonl").exists()


@pytest.mark.parametrize("model", ["./no-such-folder", "builtin:nope"])
def test_an_unknown_model_stops_the_run_before_any_work(batch, tmp_path, model):
    jobs = write_jobs(tmp_path / "jobs.jsonl", [GOOD, {**GOOD, "seed": 2, "model": model}])
    result = batch(jobs, "--out", tmp_path / "out")
    assert result.code == 2
    assert "jobs.jsonl line 2: --model" in result.err and "nothing was made" in result.err
    assert not list((tmp_path / "out").glob("*.png"))


def test_files_without_jobs_and_missing_files(batch, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n", encoding="utf-8")
    result = batch(empty, "--out", tmp_path / "out")
    assert result.code == 2 and "has no job that can run" in result.err
    result = batch(tmp_path / "missing.jsonl", "--out", tmp_path / "out")
    assert result.code == 2 and "no such file" in result.err
    (tmp_path / "file").write_text("x")
    result = batch(empty, "--out", tmp_path / "file")
    assert result.code == 2 and "is a file" in result.err


def test_ray_missing_is_a_usage_error(batch, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the ray extra were not installed
    result = batch(write_jobs(tmp_path / "jobs.jsonl", [GOOD]), "--out", tmp_path / "out", "--ray", "auto")
    assert result.code == 2 and "pip install 'sfumato[ray]'" in result.err


def test_one_run_per_folder(tmp_path):
    from sfumato.batch.store import Store
    from sfumato.cli import UsageError

    first = Store(str(tmp_path))
    first.lock()
    with pytest.raises(UsageError, match="another `sfumato batch` is writing"):
        Store(str(tmp_path)).lock()
    first.close()
    Store(str(tmp_path)).lock()


def test_sweeps_expand_to_every_combination(tmp_path):
    from sfumato.batch import jobfile

    sweep = {"template": {"prompt": "a {colour} {shape} on a black background", "steps": "{steps}",
                          "prior_steps": 2},
             "values": {"colour": ["red", "green"], "shape": ["circle", "square"], "steps": [3, 4], "seed": [5]}}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(sweep), encoding="utf-8")
    found = jobfile.read(str(path), jobfile.Defaults())
    assert not found.problems
    records = [picture.record for picture in found.pictures]
    assert len(records) == 8 and {r["seed"] for r in records} == {5}
    assert records[0]["prompt"] == "a red circle on a black background" and records[0]["steps"] == 3
    assert records[-1]["prompt"] == "a green square on a black background" and records[-1]["steps"] == 4
    assert found.pictures[1].where == "sweep.json sweep job 2 (colour=red, shape=circle, steps=4, seed=5)"
    assert len({picture.name for picture in found.pictures}) == 8
    # the same file read again: the same names (that is how a re-run finds its pictures)
    assert [p.name for p in jobfile.read(str(path), jobfile.Defaults()).pictures] == [p.name for p in found.pictures]
    yaml = pytest.importorskip("yaml")
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep), encoding="utf-8")
    again = jobfile.read(str(tmp_path / "sweep.yaml"), jobfile.Defaults())
    assert [p.name for p in again.pictures] == [p.name for p in found.pictures]


def test_names_follow_what_decides_the_pixels(tmp_path):
    from sfumato.batch import jobfile

    lines = [GOOD, {**GOOD, "model": "builtin"}, {**GOOD, "cpu_threads": 2}, {**GOOD, "steps": 5},
             {**GOOD, "seed": 2}]
    found = jobfile.read(str(write_jobs(tmp_path / "jobs.jsonl", lines)), jobfile.Defaults())
    # the same model named twice ways, or another thread count: the same picture, made once
    assert [p.where for p in found.pictures] == ["jobs.jsonl line 1", "jobs.jsonl line 4", "jobs.jsonl line 5"]
    assert found.duplicates == 2 and "makes the same picture as jobs.jsonl line 1" in found.warnings[0]


def test_prompts_png_records_and_defaults(batch, cli_generate, tmp_path):
    """A text file of prompts takes the command line's defaults; a PNG's own record (with its thread
    count) makes the same pixels again."""
    original, record = cli_generate
    jobs = tmp_path / "prompts.txt"
    jobs.write_text("# two prompts, and a picture made by `sfumato generate`\n"
                    "a green square on a black background\n\n"
                    "a white triangle on a red background\n"
                    f"{json.dumps(record)}\n", encoding="utf-8")
    out = tmp_path / "out"
    result = batch(jobs, "--out", out, "--steps", 4, "--prior-steps", 2, "--seed", 9, "--num", 2, "--quiet")
    assert result.code == 0, result.err
    rows = manifest(out)
    assert [row["where"] for row in rows] == [
        "prompts.txt line 2, picture 1 of 2", "prompts.txt line 2, picture 2 of 2",
        "prompts.txt line 4, picture 1 of 2", "prompts.txt line 4, picture 2 of 2", "prompts.txt line 5"]
    from sfumato.metadata import read_parameters

    made = [read_parameters(out / row["output"]) for row in rows]
    assert [(m["seed"], m["steps"], m["index"], m["num"]) for m in made[:2]] == [(9, 4, 0, 2), (10, 4, 1, 2)]
    assert made[4]["cpu_threads"] == record["cpu_threads"] == 2 and made[4]["seed"] == record["seed"]
    assert np.array_equal(pictures(out)[rows[4]["output"]], pictures(original.parent)[original.name])


@pytest.fixture
def cli_generate(tmp_path, monkeypatch):
    """A PNG made by `sfumato generate` with 2 torch threads, and its record."""
    import torch

    from sfumato.cli import main
    from sfumato.metadata import read_parameters

    folder = tmp_path / "generated"
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["generate", "a red circle on a blue background", "--seed", "5", "--steps", "4",
                     "--prior-steps", "2", "-o", str(folder / "g.png"), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return folder / "g.png", read_parameters(folder / "g.png")
