"""--preset fast and the dpm++-karras scheduler name (issue 12): a preset fills what the command line and the
checkpoint's defaults leave open, the record holds what it chose, and the picture is the library pipeline's with
DPM-Solver++ 2M and Karras sigmas."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sfumato.cli.models import PRESETS
from sfumato.metadata import read_parameters

from .conftest import pixels
from .test_families import _library, _made, _rgb, _seed

PROMPT = "a red circle on a blue background"
FAST = PRESETS["fast"]


def test_fast_preset_on_the_two_stage_model_is_recorded_and_reproduced(cli, tmp_path):
    record, made = _made(cli, tmp_path, "fast", "generate", PROMPT, "--seed", 1, "--preset", "fast")
    assert (record["scheduler"], record["scheduler_class"]) == ("dpm++-karras", "DPMSolverMultistepScheduler")
    assert (record["steps"], record["prior_steps"], record["preset"]) == (FAST["steps"], FAST["prior_steps"], "fast")
    # the preset is only a name for these values: spelled out, they give the same picture
    result = cli("generate", PROMPT, "--seed", 1, "--scheduler", "dpm++-karras", "--steps", FAST["steps"],
                 "--prior-steps", FAST["prior_steps"], "-o", "spelled.png", "-q")
    assert result.code == 0, result.err
    assert np.array_equal(made, pixels(tmp_path / "spelled.png"))
    # Karras sigmas change the picture: plain DPM-Solver++ at the same steps differs
    result = cli("generate", PROMPT, "--seed", 1, "--scheduler", "dpm", "--steps", FAST["steps"],
                 "--prior-steps", FAST["prior_steps"], "-o", "plain.png", "-q")
    assert result.code == 0, result.err
    assert not np.array_equal(made, pixels(tmp_path / "plain.png"))


def test_options_given_win_over_the_preset(cli, tmp_path):
    record, _ = _made(cli, tmp_path, "mixed", "generate", PROMPT, "--seed", 2, "--preset", "fast", "--steps", 3,
                      "--scheduler", "ddim")
    assert (record["steps"], record["prior_steps"], record["scheduler_class"]) == (3, FAST["prior_steps"],
                                                                                  "DDIMScheduler")


def test_fast_preset_on_stable_diffusion_equals_the_library(cli, tmp_path, family):
    import sfumato

    sd = family("sd")
    record, made = _made(cli, tmp_path, "sd", "generate", PROMPT, "--model", sd, "--seed", 4, "--preset", "fast")
    assert "prior_steps" not in record and record["steps"] == FAST["steps"]
    pipe = _library("StableDiffusionPipeline", sd)
    pipe.scheduler = sfumato.DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True)
    expected = pipe(PROMPT, num_inference_steps=FAST["steps"], generator=_seed(4)).images[0]
    assert np.array_equal(made, _rgb(expected))


def test_a_chain_step_takes_a_preset(cli, tmp_path):
    (tmp_path / "chain.json").write_text(json.dumps({"seed": 3, "preset": "fast", "steps": [
        {"task": "text2image", "prompt": PROMPT, "out": "one.png"},
        {"task": "image2image", "prompt": PROMPT, "strength": 0.5, "num_inference_steps": 4, "out": "two.png"},
    ]}))
    result = cli("chain", "chain.json", "-o", "final.png", "-q")
    assert result.code == 0, result.err
    first, second = read_parameters(tmp_path / "one.png"), read_parameters(tmp_path / "two.png")
    assert (first["steps"], first["scheduler"], second["steps"], second["scheduler"]) == (
        FAST["steps"], "dpm++-karras", 4, "dpm++-karras")


@pytest.mark.parametrize("argv, message", [
    (["generate", PROMPT, "--preset", "quick"], "--preset: invalid choice: 'quick'"),
    (["generate", PROMPT, "--preset", "fast", "--steps", "0"], "--steps"),
])
def test_bad_presets_are_refused_before_loading(cli, argv, message):
    result = cli(*argv, "-o", "x.png")
    assert result.code == 2 and message in result.err, result.err


def test_a_record_with_an_unknown_preset_is_refused(cli, tmp_path):
    (tmp_path / "chain.json").write_text(json.dumps({"steps": [{"task": "text2image", "prompt": PROMPT,
                                                                 "preset": "turbo"}]}))
    result = cli("chain", "chain.json", "-o", "final.png", "-q")
    assert result.code == 2 and "--preset must be one of fast, got 'turbo'" in result.err, result.err
