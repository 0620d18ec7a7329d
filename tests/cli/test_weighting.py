"""Prompt weighting in the command line: on by default, the same picture as the library's
``sfumato.prompts.weighted_embeddings``, off with --no-weighting, syntax errors before anything loads, and
records made before weighting existed read as plain text."""

from __future__ import annotations

import json

import numpy as np
import torch

from sfumato.metadata import read_parameters

from .conftest import pixels

WEIGHTED = "a (lighthouse:1.4) on a [cliff]"


def _library(folder):
    import sfumato

    pipe = sfumato.StableDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_weighted_prompt_equals_the_library_helper(cli, tmp_path, family):
    from sfumato.prompts import weighted_embeddings

    sd = family("sd")
    result = cli("generate", WEIGHTED, "--model", sd, "--seed", 5, "--steps", 2, "--size", "32x32",
                 "--negative", "(fog:0.5)", "-o", "w.png", "-q")
    assert result.code == 0, result.err
    record = read_parameters(tmp_path / "w.png")
    assert record["weighting"] is True
    pipe = _library(sd)
    expected = pipe(**weighted_embeddings(pipe, WEIGHTED, "(fog:0.5)"), height=32, width=32, num_inference_steps=2,
                    generator=torch.Generator("cpu").manual_seed(5)).images[0]
    expected = np.asarray(expected.convert("RGB"))
    assert np.array_equal(pixels(tmp_path / "w.png"), expected)
    plain = pipe(WEIGHTED, negative_prompt="(fog:0.5)", height=32, width=32, num_inference_steps=2,
                 generator=torch.Generator("cpu").manual_seed(5)).images[0]
    assert not np.array_equal(expected, np.asarray(plain.convert("RGB")))  # the weights change the picture
    again = cli("reproduce", "w.png", "-o", "w2.png", "--check", "-q")
    assert again.code == 0, again.err


def test_no_weighting_reads_the_prompt_as_plain_text(cli, tmp_path, family):
    sd = family("sd")
    result = cli("generate", WEIGHTED, "--model", sd, "--seed", 5, "--steps", 2, "--size", "32x32", "--no-weighting",
                 "-o", "n.png", "-q")
    assert result.code == 0, result.err
    assert read_parameters(tmp_path / "n.png")["weighting"] is False
    pipe = _library(sd)
    plain = pipe(WEIGHTED, height=32, width=32, num_inference_steps=2,
                 generator=torch.Generator("cpu").manual_seed(5)).images[0]
    assert np.array_equal(pixels(tmp_path / "n.png"), np.asarray(plain.convert("RGB")))


def test_a_prompt_without_syntax_is_the_plain_picture(cli, tmp_path):
    for name, flag in (("on", "--weighting"), ("off", "--no-weighting")):
        result = cli("generate", "a red circle on a blue background", "--seed", 1, flag, "-o", f"{name}.png", "-q")
        assert result.code == 0, result.err
    assert np.array_equal(pixels(tmp_path / "on.png"), pixels(tmp_path / "off.png"))


def test_malformed_syntax_fails_before_loading_and_names_the_position(cli, monkeypatch):
    from sfumato.cli import models

    monkeypatch.setattr(models.Loader, "get", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    result = cli("generate", "a (red circle on a blue background", "--seed", 1, "-o", "x.png")
    assert result.code == 2 and "position 2" in result.err and "--no-weighting" in result.err, result.err
    result = cli("generate", "a red circle", "--negative", "(blue:abc)", "--seed", 1, "-o", "x.png")
    assert result.code == 2 and "--negative" in result.err and "abc" in result.err, result.err


def test_records_from_before_weighting_read_as_plain_text():
    from sfumato.cli.jobs import Job

    record = {"task": "text2image", "prompt": "a (red) circle", "seed": 1}
    assert Job.from_mapping(record, "old.png", record=True).weighting is False
    assert Job.from_mapping(dict(record, weighting=True), "new.png", record=True).weighting is True
    assert Job.from_mapping(record, "chain step").weighting is None  # a new job: on once checked


def test_chain_steps_may_turn_weighting_off(cli, tmp_path):
    chain = {"seed": 3, "weighting": False,
             "steps": [{"task": "text2image", "prompt": "a (red) circle on a blue background"}]}
    (tmp_path / "chain.json").write_text(json.dumps(chain))
    result = cli("chain", "chain.json", "-o", "c.png", "-q")
    assert result.code == 0, result.err
    assert read_parameters(tmp_path / "c.png")["weighting"] is False
