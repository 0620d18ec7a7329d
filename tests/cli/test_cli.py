"""The command line end to end on a tiny random model: pictures, stored parameters, reproduction, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from sfumato.metadata import read_parameters

from .conftest import pixels

PROMPT = "a red circle on a blue background"


def test_help_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "sfumato", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    for command in ("generate", "img2img", "inpaint", "interpolate", "controlnet", "chain", "info", "reproduce"):
        assert command in result.stdout


def test_generate_writes_a_png_with_its_parameters(cli, tmp_path):
    result = cli("generate", PROMPT, "--seed", 5, "--negative", "green", "-o", "circle.png", "--quiet")
    assert result.code == 0, result.err
    assert result.out.strip() == "circle.png"
    assert result.err == ""  # --quiet: no progress bars
    record = read_parameters(tmp_path / "circle.png")
    assert record["task"] == "text2image" and record["command"] == "generate"
    assert record["prompt"] == PROMPT and record["negative_prompt"] == "green"
    assert record["seed"] == 5
    # unset values come from the model folder's sfumato_defaults.json and are recorded
    assert (record["steps"], record["prior_steps"], record["width"], record["height"]) == (2, 2, 64, 64)
    assert record["guidance"] == 4.0 and record["prior_guidance"] == 4.0
    assert record["model"] == "builtin:decoder" and record["dtype"] == "fp32" and record["device"] == "cpu"
    assert record["scheduler"] is None and record["scheduler_class"] == "DDPMScheduler"
    assert record["sfumato"] and record["cpu_threads"] >= 1
    assert pixels(tmp_path / "circle.png").shape == (64, 64, 3)


def test_progress_bars_show_unless_quiet(cli):
    result = cli("generate", PROMPT, "--seed", 1, "-o", "loud.png")
    assert result.code == 0
    assert "loading model" in result.err and "denoising" in result.err


def test_reproduce_is_bit_identical_and_seeds_matter(cli, tmp_path):
    assert cli("generate", PROMPT, "--seed", 11, "-o", "a.png", "-q").code == 0
    assert cli("generate", PROMPT, "--seed", 12, "-o", "other.png", "-q").code == 0
    result = cli("reproduce", "a.png", "-o", "b.png", "--check")
    assert result.code == 0, result.err
    assert "identical" in result.err
    assert np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "b.png"))
    assert not np.array_equal(pixels(tmp_path / "a.png"), pixels(tmp_path / "other.png"))
    again = read_parameters(tmp_path / "b.png")
    assert again["seed"] == 11 and again["prompt"] == PROMPT


def test_num_names_files_and_gives_each_its_own_seed(cli, tmp_path):
    result = cli("generate", PROMPT, "--seed", 20, "--num", 2, "-o", "many.png", "-q")
    assert result.code == 0, result.err
    assert result.out.split() == ["many-0.png", "many-1.png"]
    seeds = [read_parameters(tmp_path / f"many-{i}.png")["seed"] for i in range(2)]
    assert seeds == [20, 21]
    # the second picture on its own, from its own seed, is the same as in the batch
    assert cli("generate", PROMPT, "--seed", 21, "-o", "single.png", "-q").code == 0
    assert np.array_equal(pixels(tmp_path / "many-1.png"), pixels(tmp_path / "single.png"))


def test_random_seed_is_recorded(cli, tmp_path):
    result = cli("generate", PROMPT, "-q")
    assert result.code == 0, result.err
    [name] = result.out.split()
    seed = read_parameters(tmp_path / name)["seed"]
    assert name == f"generate-{seed}.png"


def test_scheduler_swap_is_recorded_and_reproduced(cli, tmp_path):
    assert cli("generate", PROMPT, "--seed", 3, "--scheduler", "ddim", "--steps", 3, "-o", "ddim.png", "-q").code == 0
    record = read_parameters(tmp_path / "ddim.png")
    assert (record["scheduler"], record["scheduler_class"], record["steps"]) == ("ddim", "DDIMScheduler", 3)
    assert cli("reproduce", "ddim.png", "-o", "ddim2.png", "--check", "-q").code == 0
    assert cli("generate", PROMPT, "--seed", 3, "--steps", 3, "-o", "ddpm.png", "-q").code == 0
    assert not np.array_equal(pixels(tmp_path / "ddim.png"), pixels(tmp_path / "ddpm.png"))


def test_img2img(cli, tmp_path, picture):
    result = cli("img2img", picture, "a yellow circle on a blue background", "--strength", 0.5, "--seed", 2,
                 "-o", "img2img.png", "-q")
    assert result.code == 0, result.err
    record = read_parameters(tmp_path / "img2img.png")
    assert record["task"] == "image2image" and record["strength"] == 0.5
    assert record["image"] == str(picture.resolve()) and len(record["input_sha256"]["image"]) == 64
    assert cli("reproduce", "img2img.png", "-o", "again.png", "--check", "-q").code == 0


def test_inpaint(cli, tmp_path, picture, mask):
    result = cli("inpaint", picture, mask, "a white triangle", "--seed", 4, "-o", "inpaint.png", "-q")
    assert result.code == 0, result.err
    record = read_parameters(tmp_path / "inpaint.png")
    assert record["task"] == "inpaint" and record["model"] == "builtin:inpaint"
    assert record["mask"] == str(mask.resolve())
    assert cli("reproduce", "inpaint.png", "-o", "again.png", "--check", "-q").code == 0


def test_controlnet(cli, tmp_path, picture):
    result = cli("controlnet", picture, "a green circle", "--seed", 6, "-o", "control.png", "-q")
    assert result.code == 0, result.err
    record = read_parameters(tmp_path / "control.png")
    assert record["task"] == "controlnet" and record["model"] == "builtin:controlnet"
    assert record["hint"] == str(picture.resolve())
    assert cli("reproduce", "control.png", "-o", "again.png", "--check", "-q").code == 0


def test_controlnet_image_to_image_equals_the_library(cli, tmp_path, picture, model_root):
    """--image: ControlNet image-to-image, the prior's embeddings of the prompt then the decoder's image-to-image
    counterpart of the ControlNet folder, starting from the picture partly noised (strength) and following HINT."""
    import sfumato

    hint = tmp_path / "hint.png"
    silhouette = np.zeros((64, 64, 3), dtype=np.uint8)
    silhouette[16:48, 20:44] = 255
    PIL.Image.fromarray(silhouette).save(hint)
    result = cli("controlnet", hint, "a green circle", "--image", picture, "--strength", 0.6, "--seed", 6,
                 "--steps", 5, "-o", "redrawn.png", "-q")
    assert result.code == 0, result.err
    record = read_parameters(tmp_path / "redrawn.png")
    assert (record["task"], record["strength"], record["steps"]) == ("controlnet", 0.6, 5)
    assert record["image"] == str(picture.resolve()) and record["hint"] == str(hint.resolve())
    assert set(record["input_sha256"]) == {"image", "hint"}
    assert cli("reproduce", "redrawn.png", "-o", "again.png", "--check", "-q").code == 0

    prior = sfumato.KandinskyV22PriorPipeline.from_pretrained(model_root / "prior")
    decoder = sfumato.KandinskyV22ControlnetImg2ImgPipeline.from_pretrained(model_root / "controlnet")
    for pipe in (prior, decoder):
        pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(6)
    embeds = prior("a green circle", guidance_scale=record["prior_guidance"],
                   num_inference_steps=record["prior_steps"], generator=generator)
    hint_tensor = torch.from_numpy(silhouette.astype(np.float32) / 255).permute(2, 0, 1).unsqueeze(0)
    expected = decoder(image=PIL.Image.open(picture).convert("RGB"), hint=hint_tensor, strength=0.6,
                       image_embeds=embeds.image_embeds, negative_image_embeds=embeds.negative_image_embeds,
                       height=64, width=64, num_inference_steps=5, guidance_scale=record["guidance"],
                       generator=generator).images[0]
    made = np.asarray(PIL.Image.open(tmp_path / "redrawn.png").convert("RGB"))
    assert np.array_equal(made, np.asarray(expected.convert("RGB")))
    plain = cli("controlnet", hint, "a green circle", "--seed", 6, "--steps", 5, "-o", "plain.png", "-q")
    assert plain.code == 0, plain.err
    assert not np.array_equal(made, np.asarray(PIL.Image.open(tmp_path / "plain.png").convert("RGB")))


def test_controlnet_strength_needs_an_image(cli, tmp_path, picture):
    result = cli("controlnet", picture, "a green circle", "--strength", 0.5, "-o", "no.png")
    assert result.code == 2 and "--strength applies to controlnet only with --image" in result.err, result.err
    missing = cli("controlnet", picture, "a green circle", "--image", "nowhere.png", "-o", "no.png")
    assert missing.code == 2 and "--image" in missing.err and "nowhere.png" in missing.err, missing.err
    assert not (tmp_path / "no.png").exists()


def test_interpolate(cli, tmp_path, picture):
    result = cli("interpolate", PROMPT, picture, "--weights", 0.3, 0.7, "--seed", 8, "-o", "mix.png", "-q")
    assert result.code == 0, result.err
    record = read_parameters(tmp_path / "mix.png")
    assert record["items"] == [{"text": PROMPT}, {"image": str(picture.resolve())}]
    assert record["weights"] == [0.3, 0.7]
    assert cli("reproduce", "mix.png", "-o", "again.png", "--check", "-q").code == 0


def test_chain_json_feeds_each_step_the_previous_picture(cli, tmp_path):
    chain = {"seed": 9, "steps": [
        {"task": "text2image", "prompt": PROMPT, "out": "first.png"},
        {"task": "KandinskyV22Img2ImgCombinedPipeline", "prompt": "a yellow circle", "strength": 0.5},
        {"task": "interpolate", "items": ["$previous", "a green square"], "weights": [0.5, 0.5]},
    ]}
    (tmp_path / "chain.json").write_text(json.dumps(chain))
    result = cli("chain", "chain.json", "-o", "chained.png", "-q")
    assert result.code == 0, result.err
    assert set(result.out.split()) == {"first.png", "chained.png"}
    record = read_parameters(tmp_path / "chained.png")
    assert record["task"] == "interpolate" and record["command"] == "chain"
    middle = record["items"][0]["image"]
    assert middle["task"] == "image2image" and middle["strength"] == 0.5 and middle["seed"] == 9
    assert middle["image"]["task"] == "text2image" and middle["image"]["prompt"] == PROMPT
    # the step written on the way is the same picture text-to-image makes on its own
    assert cli("generate", PROMPT, "--seed", 9, "-o", "alone.png", "-q").code == 0
    assert np.array_equal(pixels(tmp_path / "first.png"), pixels(tmp_path / "alone.png"))
    # and the whole chain is made again from the final PNG alone
    assert cli("reproduce", "chained.png", "-o", "again.png", "--check", "-q").code == 0


def test_example_chain_file_runs(cli, tmp_path):
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "chain.yaml")
    result = cli("chain", example, "-o", "example.png", "-q", "--num", 2)
    assert result.code == 0, result.err
    assert set(result.out.split()) == {"chain-step1-0.png", "chain-step1-1.png", "example-0.png", "example-1.png"}
    assert [read_parameters(tmp_path / f"example-{i}.png")["seed"] for i in range(2)] == [42, 43]


def test_info(cli, tmp_path):
    assert cli("generate", PROMPT, "--seed", 13, "-o", "info.png", "-q").code == 0
    result = cli("info", "info.png")
    assert result.code == 0
    assert f"prompt: {PROMPT}" in result.out and "seed: 13" in result.out
    raw = cli("info", "info.png", "--json")
    assert json.loads(raw.out)["seed"] == 13


def test_unicode_prompt_survives(cli, tmp_path):
    prompt = "دائرة حمراء على خلفية زرقاء"
    assert cli("generate", prompt, "--seed", 1, "-o", "ar.png", "-q").code == 0
    assert read_parameters(tmp_path / "ar.png")["prompt"] == prompt


# ---------------------------------------------------------------------------------------------- user errors


def _no_metadata_png(tmp_path):
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    return "plain.png"


def _picture(tmp_path):
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "black.png")
    return "black.png"


def _empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    return "empty"


def _bad_chain(tmp_path):
    (tmp_path / "bad.json").write_text(json.dumps([{"task": "text2image", "prompt": "x", "colour": "red"}]))
    return "bad.json"


def _broken_json(tmp_path):
    (tmp_path / "broken.json").write_text("[{")
    return "broken.json"


ERRORS = {
    "no command": (lambda t: [], "choose a command"),
    "unknown option": (lambda t: ["generate", PROMPT, "--colour", "red"], "unrecognized arguments"),
    "missing input file": (lambda t: ["img2img", "nope.png", PROMPT], "no such file"),
    "bad size": (lambda t: ["generate", PROMPT, "--size", "10x"], "WIDTHxHEIGHT"),
    "size not a multiple": (lambda t: ["generate", PROMPT, "--size", "100x64"], "multiple of 64"),
    "unknown scheduler": (lambda t: ["generate", PROMPT, "--scheduler", "fast"], "--scheduler"),
    "not a checkpoint": (lambda t: ["generate", PROMPT, "--model", _empty_folder(t)], "model_index.json"),
    "no such model": (lambda t: ["generate", PROMPT, "--model", "./missing/model"], "no such folder"),
    "strength too big": (lambda t: ["img2img", "x.png", PROMPT, "--strength", "1.5"], "--strength"),
    "strength zero": (lambda t: ["img2img", "x.png", PROMPT, "--strength", "0"], "--strength"),
    "strength leaves no step": (lambda t: ["img2img", _picture(t), PROMPT, "--strength", "0.3"], "no denoising step"),
    "num zero": (lambda t: ["generate", PROMPT, "--num", "0"], "--num"),
    "steps not a number": (lambda t: ["generate", PROMPT, "--steps", "many"], "--steps"),
    "bad dtype": (lambda t: ["generate", PROMPT, "--dtype", "int8"], "--dtype"),
    "bad device": (lambda t: ["generate", PROMPT, "--device", "toaster"], "--device"),
    "not a png output": (lambda t: ["generate", PROMPT, "-o", "out.jpg"], ".png"),
    "wrong model for the task": (lambda t: ["generate", PROMPT, "--model", "builtin:inpaint"], "inpaint"),
    "weights do not match": (lambda t: ["interpolate", "a", "b", "--weights", "1"], "--weights"),
    "info without metadata": (lambda t: ["info", _no_metadata_png(t)], "without sfumato parameters"),
    "info of a missing file": (lambda t: ["info", "missing.png"], "does not exist"),
    "reproduce without metadata": (lambda t: ["reproduce", _no_metadata_png(t)], "without sfumato parameters"),
    "chain with an unknown key": (lambda t: ["chain", _bad_chain(t)], "unknown key 'colour'"),
    "chain that is not JSON": (lambda t: ["chain", _broken_json(t)], "not valid JSON"),
    "missing chain file": (lambda t: ["chain", "nope.yaml"], "no such file"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_user_errors_are_one_line_without_traceback(cli, tmp_path, name):
    make_argv, expected = ERRORS[name]
    result = cli(*make_argv(tmp_path))
    assert result.code != 0
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("sfumato: error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in result.err
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("generate-*.png"))


def test_missing_builtin_model_is_a_clear_error(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("SFUMATO_BUILTIN_MODEL", str(tmp_path / "nowhere"))
    result = cli("generate", PROMPT)
    assert result.code == 2
    assert "built-in model is not installed" in result.err and len(result.err.strip().splitlines()) == 1


def test_changed_input_is_refused_by_reproduce(cli, tmp_path, picture):
    assert cli("img2img", picture, PROMPT, "--seed", 1, "--strength", 0.5, "-o", "made.png", "-q").code == 0
    PIL.Image.new("RGB", (64, 64), (0, 255, 0)).save(picture)
    result = cli("reproduce", "made.png")
    assert result.code == 2 and "has changed" in result.err
