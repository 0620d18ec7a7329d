"""The command line runs Stable Diffusion, SDXL (base and refiner), Kandinsky 3, Stable Diffusion ControlNets and
the x2 / x4 upscalers (issues 9, 10, 11), on tiny random folders built by the pipeline tests' builders.

Each picture is checked three ways: its size, `sfumato reproduce --check` (the PNG record holds everything),
and equality with the library pipeline called directly with the same arguments and a CPU generator of the same
seed. Chains hand latents where the guides do: SDXL base -> refiner (``denoising_end`` / ``denoising_start``)
and Stable Diffusion image-to-image -> the x2 latent upscaler (``output_type: latent``).
"""

from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from sfumato.metadata import read_parameters

from ..image.test_depth import dpt_folder  # noqa: F401 - a tiny depth-estimation model folder (module fixture)
from .conftest import pixels

PROMPT = "a lighthouse on a cliff"


def _made(cli, tmp_path, name: str, *argv) -> tuple[dict, np.ndarray]:
    """Run a command writing NAME.png; check that `reproduce --check` makes the same pixels."""
    result = cli(*argv, "-o", f"{name}.png", "-q")
    assert result.code == 0, result.err
    again = cli("reproduce", f"{name}.png", "-o", f"{name}-again.png", "--check", "-q")
    assert again.code == 0, again.err
    return read_parameters(tmp_path / f"{name}.png"), pixels(tmp_path / f"{name}.png")


def _library(class_name: str, folder, **kwargs):
    import sfumato

    pipe = getattr(sfumato, class_name).from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _seed(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def _rgb(picture: PIL.Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB"))


def _photo(tmp_path, name: str, width: int, height: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    array = np.stack([x * 255 // width, y * 255 // height, rng.integers(0, 256, (height, width))], -1)
    path = tmp_path / name
    PIL.Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def _chain(tmp_path, chain_steps: list, **defaults) -> str:
    path = tmp_path / "chain.json"
    path.write_text(json.dumps({**defaults, "steps": chain_steps}))
    return str(path)


# ---------------------------------------------------------------------------------------------- Stable Diffusion


def test_stable_diffusion_generate_equals_the_library(cli, tmp_path, family):
    sd = family("sd")
    record, made = _made(cli, tmp_path, "sd", "generate", PROMPT, "--model", sd, "--seed", 3, "--steps", 2,
                         "--negative", "fog", "--size", "32x24")
    assert (record["width"], record["height"], record["scheduler_class"]) == (32, 24, "PNDMScheduler")
    assert record["guidance"] == 7.5 and "prior_steps" not in record  # StableDiffusionPipeline's default
    assert made.shape == (24, 32, 3)
    expected = _library("StableDiffusionPipeline", sd)(PROMPT, negative_prompt="fog", height=24, width=32,
                                                       num_inference_steps=2, generator=_seed(3)).images[0]
    assert np.array_equal(made, _rgb(expected))


def test_stable_diffusion_default_size_and_scheduler_swap(cli, tmp_path, family):
    import sfumato

    sd = family("sd")
    record, made = _made(cli, tmp_path, "ddim", "generate", PROMPT, "--model", sd, "--seed", 4, "--steps", 3,
                         "--scheduler", "euler-a", "--guidance", 5)
    # the UNet's sample size (8) times the VAE's scale (4): the pipeline's own default, recorded
    assert (record["width"], record["height"]) == (32, 32) and made.shape == (32, 32, 3)
    assert record["scheduler_class"] == "EulerAncestralDiscreteScheduler"
    pipe = _library("StableDiffusionPipeline", sd)
    pipe.scheduler = sfumato.EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    expected = pipe(PROMPT, num_inference_steps=3, guidance_scale=5.0, generator=_seed(4)).images[0]
    assert np.array_equal(made, _rgb(expected))


def test_stable_diffusion_img2img_and_legacy_inpaint(cli, tmp_path, family):
    sd = family("sd")
    photo = _photo(tmp_path, "photo.png", 40, 32)
    record, made = _made(cli, tmp_path, "i2i", "img2img", photo, PROMPT, "--model", sd, "--seed", 5, "--steps", 4,
                         "--strength", 0.5)
    assert (record["width"], record["height"], record["strength"]) == (40, 32, 0.5)
    expected = _library("StableDiffusionImg2ImgPipeline", sd)(PROMPT, image=PIL.Image.open(photo), strength=0.5,
                                                              num_inference_steps=4, generator=_seed(5)).images[0]
    assert np.array_equal(made, _rgb(expected))

    mask = np.zeros((32, 40), dtype=np.uint8)
    mask[:, 20:] = 255
    PIL.Image.fromarray(mask).save(tmp_path / "mask.png")
    # a text-to-image folder inpaints too (the legacy 4-channel path, as AutoPipelineForInpainting picks it)
    record, made = _made(cli, tmp_path, "inp", "inpaint", photo, tmp_path / "mask.png", PROMPT, "--model", sd,
                         "--seed", 6, "--steps", 2, "--no-keep-unmasked")
    assert made.shape == (32, 40, 3)
    expected = _library("StableDiffusionInpaintPipeline", sd)(
        PROMPT, image=PIL.Image.open(photo), mask_image=PIL.Image.open(tmp_path / "mask.png").convert("L"),
        height=32, width=40, num_inference_steps=2, generator=_seed(6)).images[0]
    assert np.array_equal(made, _rgb(expected))


def test_an_inpainting_folder_only_inpaints(cli, tmp_path, family, picture, mask):
    inpainting = family("sd-inpaint")
    record, made = _made(cli, tmp_path, "inp9", "inpaint", picture, mask, PROMPT, "--model", inpainting,
                         "--seed", 7, "--steps", 2)
    assert made.shape == (64, 64, 3) and record["keep_unmasked"] is True
    for argv in (("generate", PROMPT), ("img2img", picture, PROMPT)):
        result = cli(*argv, "--model", inpainting, "-o", "no.png")
        assert result.code == 2 and "is an inpainting checkpoint (StableDiffusionInpaintPipeline)" in result.err
        assert "use it with `sfumato inpaint`" in result.err


def test_stable_diffusion_controlnet_equals_the_library(cli, tmp_path, family):
    import sfumato

    sd, controlnet = family("sd"), family("controlnet")
    hint = _photo(tmp_path, "hint.png", 32, 40, seed=3)
    record, made = _made(cli, tmp_path, "cn", "controlnet", hint, PROMPT, "--model", sd, "--controlnet", controlnet,
                         "--controlnet-scale", 0.6, "--seed", 8, "--steps", 2)
    assert (record["controlnet"], record["controlnet_scale"]) == (str(controlnet), 0.6)
    assert made.shape == (40, 32, 3)
    pipe = _library("StableDiffusionControlNetPipeline", sd,
                    controlnet=sfumato.ControlNetModel.from_pretrained(controlnet))
    expected = pipe(PROMPT, image=PIL.Image.open(hint).convert("RGB"), height=40, width=32, num_inference_steps=2,
                    controlnet_conditioning_scale=0.6, generator=_seed(8)).images[0]
    assert np.array_equal(made, _rgb(expected))


def test_stable_diffusion_controlnet_image_to_image_equals_the_library(cli, tmp_path, family):
    import sfumato

    sd, controlnet = family("sd"), family("controlnet")
    start = _photo(tmp_path, "start.png", 40, 32, seed=5)
    hint = _photo(tmp_path, "hint.png", 32, 40, seed=3)  # another size: resized to the picture's
    record, made = _made(cli, tmp_path, "cn-i2i", "controlnet", hint, PROMPT, "--image", start, "--model", sd,
                         "--controlnet", controlnet, "--strength", 0.5, "--controlnet-scale", 0.7, "--seed", 8,
                         "--steps", 4)
    assert (record["strength"], record["width"], record["height"]) == (0.5, 40, 32)
    assert made.shape == (32, 40, 3)
    pipe = _library("StableDiffusionControlNetImg2ImgPipeline", sd,
                    controlnet=sfumato.ControlNetModel.from_pretrained(controlnet))
    control = PIL.Image.open(hint).convert("RGB").resize((40, 32), resample=PIL.Image.Resampling.LANCZOS)
    expected = pipe(PROMPT, image=PIL.Image.open(start).convert("RGB"), control_image=control, strength=0.5,
                    num_inference_steps=4, controlnet_conditioning_scale=0.7, generator=_seed(8)).images[0]
    assert np.array_equal(made, _rgb(expected))


def test_stable_diffusion_controlnet_window_equals_the_library(cli, tmp_path, family):
    """--control-start / --control-end: the share of the steps the ControlNet steers in (control_guidance_*)."""
    import sfumato

    sd, controlnet = family("sd"), family("controlnet")
    hint = _photo(tmp_path, "hint.png", 32, 32, seed=3)
    record, made = _made(cli, tmp_path, "window", "controlnet", hint, PROMPT, "--model", sd, "--controlnet",
                         controlnet, "--control-start", 0.25, "--control-end", 0.75, "--seed", 8, "--steps", 4)
    assert (record["control_start"], record["control_end"]) == (0.25, 0.75)
    pipe = _library("StableDiffusionControlNetPipeline", sd,
                    controlnet=sfumato.ControlNetModel.from_pretrained(controlnet))
    expected = pipe(PROMPT, image=PIL.Image.open(hint).convert("RGB"), num_inference_steps=4,
                    control_guidance_start=0.25, control_guidance_end=0.75, generator=_seed(8)).images[0]
    assert np.array_equal(made, _rgb(expected))
    plain = _made(cli, tmp_path, "plain", "controlnet", hint, PROMPT, "--model", sd, "--controlnet", controlnet,
                  "--seed", 8, "--steps", 4)
    assert plain[0]["control_start"] == 0.0 and plain[0]["control_end"] == 1.0  # the pipeline's defaults, recorded
    assert not np.array_equal(made, plain[1])
    for argv, words in ((("--control-start", 0.8, "--control-end", 0.5), "--control-start 0.8 must be below"),
                        (("--control-end", 1.5), "--control-end must be in [0, 1]")):
        result = cli("controlnet", hint, PROMPT, "--model", sd, "--controlnet", controlnet, *argv, "-o", "no.png")
        assert result.code == 2 and words in result.err, result.err
    result = cli("controlnet", hint, PROMPT, "--control-end", 0.5, "-o", "no.png")  # the built-in K2.2 ControlNet
    assert result.code == 2 and "--control-end applies to Stable Diffusion checkpoints" in result.err, result.err


def test_controlnet_with_a_depth_model(cli, tmp_path, family, dpt_folder):  # noqa: F811
    sd, controlnet = family("sd"), family("controlnet")
    photo = _photo(tmp_path, "photo.png", 32, 32, seed=4)
    record, made = _made(cli, tmp_path, "depth", "controlnet", photo, PROMPT, "--model", sd, "--controlnet",
                         controlnet, "--depth-model", dpt_folder, "--seed", 9, "--steps", 2)
    assert record["depth_model"] == str(dpt_folder) and made.shape == (32, 32, 3)
    plain = cli("controlnet", photo, PROMPT, "--model", sd, "--controlnet", controlnet, "--seed", 9, "--steps", 2,
                "-o", "plain.png", "-q")
    assert plain.code == 0, plain.err
    assert not np.array_equal(made, pixels(tmp_path / "plain.png"))  # the depth map steered, not the photo


def test_dtype_for_a_new_family(cli, tmp_path, family):
    result = cli("generate", PROMPT, "--model", family("sd"), "--dtype", "bf16", "--steps", 2, "--seed", 1,
                 "-o", "bf16.png", "-q")
    assert result.code == 0, result.err
    record = read_parameters(tmp_path / "bf16.png")
    assert record["dtype"] == "bf16" and pixels(tmp_path / "bf16.png").shape == (32, 32, 3)


# ---------------------------------------------------------------------------------------------- upscalers


def test_x4_upscale_equals_the_library(cli, tmp_path, family):
    x4 = family("x4")
    small = _photo(tmp_path, "small.png", 16, 12, seed=5)
    record, made = _made(cli, tmp_path, "x4", "upscale", small, "--model", x4, "--prompt", PROMPT, "--noise-level",
                         40, "--steps", 2, "--seed", 10, "--negative", "blur")
    assert (record["task"], record["noise_level"], record["width"], record["height"]) == ("upscale", 40, 64, 48)
    assert made.shape == (48, 64, 3)
    expected = _library("StableDiffusionUpscalePipeline", x4)(
        PROMPT, image=PIL.Image.open(small).convert("RGB"), noise_level=40, num_inference_steps=2,
        negative_prompt="blur", generator=_seed(10)).images[0]
    assert np.array_equal(made, _rgb(expected))


def test_x2_upscale_and_its_default_noise_level(cli, tmp_path, family):
    x2 = family("x2")
    small = _photo(tmp_path, "small.png", 48, 32, seed=6)
    record, made = _made(cli, tmp_path, "x2", "upscale", small, "--model", x2, "--steps", 2, "--seed", 11)
    assert (record["width"], record["height"]) == (96, 64) and made.shape == (64, 96, 3)
    assert "noise_level" not in record and "prompt" not in record  # the x2 upscaler has no noise level
    expected = _library("StableDiffusionLatentUpscalePipeline", x2)(
        "", image=PIL.Image.open(small).convert("RGB"), num_inference_steps=2, generator=_seed(11)).images[0]
    assert np.array_equal(made, _rgb(expected))


def test_x2_upscale_takes_only_sigma_space_schedulers(cli, tmp_path, family):
    """The latent upscaler hands its scheduler denoised latents in sigma space: other schedulers are refused
    before loading, naming --scheduler; lms runs and equals the library with that scheduler."""
    import sfumato

    x2 = family("x2")
    small = _photo(tmp_path, "small.png", 48, 32, seed=6)
    for name in ("ddim", "dpm++-karras", "euler-a", "PNDMScheduler"):
        result = cli("upscale", small, "--model", x2, "--scheduler", name, "-o", "refused.png", "-q")
        assert result.code == 2 and f"--scheduler {name!r}" in result.err and "euler or lms" in result.err, result.err
        assert not (tmp_path / "refused.png").exists()
    record, made = _made(cli, tmp_path, "x2-lms", "upscale", small, "--model", x2, "--steps", 2, "--seed", 11,
                         "--scheduler", "lms")
    assert record["scheduler"] == "lms"
    pipe = _library("StableDiffusionLatentUpscalePipeline", x2)
    pipe.scheduler = sfumato.LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    expected = pipe("", image=PIL.Image.open(small).convert("RGB"), num_inference_steps=2, generator=_seed(11))
    assert np.array_equal(made, _rgb(expected.images[0]))


# ---------------------------------------------------------------------------------------------- SDXL


def test_sdxl_base_and_refiner(cli, tmp_path, family):
    base, refiner = family("xl-base"), family("xl-refiner")
    record, made = _made(cli, tmp_path, "xl", "generate", PROMPT, "--model", base, "--seed", 12, "--steps", 2,
                         "--size", "40x32")
    assert made.shape == (32, 40, 3) and record["guidance"] == 5.0
    expected = _library("StableDiffusionXLPipeline", base)(PROMPT, height=32, width=40, num_inference_steps=2,
                                                           generator=_seed(12)).images[0]
    assert np.array_equal(made, _rgb(expected))

    record, made = _made(cli, tmp_path, "refined", "img2img", tmp_path / "xl.png", PROMPT, "--model", refiner,
                         "--seed", 13, "--steps", 4, "--negative", "dark")
    assert record["strength"] == 0.3  # the refiner's own default
    expected = _library("StableDiffusionXLImg2ImgPipeline", refiner)(
        PROMPT, image=PIL.Image.open(tmp_path / "xl.png"), negative_prompt="dark", num_inference_steps=4,
        generator=_seed(13)).images[0]
    assert np.array_equal(made, _rgb(expected))

    result = cli("generate", PROMPT, "--model", refiner, "-o", "no.png")
    assert result.code == 2 and "SDXL refiner" in result.err and "cannot do text2image" in result.err
    assert "`sfumato img2img` or `inpaint`" in result.err


def test_sdxl_base_to_refiner_through_latents(cli, tmp_path, family):
    base, refiner = family("xl-base"), family("xl-refiner")
    chain = _chain(tmp_path, [
        {"task": "text2image", "model": str(base), "prompt": PROMPT, "steps": 5, "denoising_end": 0.6},
        {"task": "image2image", "model": str(refiner), "prompt": PROMPT, "steps": 5, "denoising_start": 0.6},
    ], seed=14)
    result = cli("chain", chain, "-o", "refined.png", "-q")
    assert result.code == 0, result.err
    record = read_parameters(tmp_path / "refined.png")
    assert record["denoising_start"] == 0.6 and "strength" not in record
    assert record["image"]["denoising_end"] == 0.6 and record["image"]["output_type"] == "latent"
    again = cli("reproduce", "refined.png", "-o", "again.png", "--check", "-q")
    assert again.code == 0, again.err

    latents = _library("StableDiffusionXLPipeline", base)(
        PROMPT, num_inference_steps=5, denoising_end=0.6, output_type="latent", generator=_seed(14)).images
    expected = _library("StableDiffusionXLImg2ImgPipeline", refiner)(
        PROMPT, image=latents, num_inference_steps=5, denoising_start=0.6, generator=_seed(14)).images[0]
    assert np.array_equal(pixels(tmp_path / "refined.png"), _rgb(expected))


def test_stable_diffusion_img2img_to_the_x2_upscaler_through_latents(cli, tmp_path, family):
    sd, x2 = family("sd"), family("x2")
    photo = _photo(tmp_path, "photo.png", 32, 32, seed=7)
    chain = _chain(tmp_path, [
        {"task": "image2image", "model": str(sd), "image": "photo.png", "prompt": PROMPT, "steps": 4,
         "strength": 0.5, "output_type": "latent"},
        {"task": "upscale", "model": str(x2), "prompt": PROMPT, "steps": 2},
    ], seed=15)
    result = cli("chain", chain, "-o", "up.png", "-q")
    assert result.code == 0, result.err
    assert pixels(tmp_path / "up.png").shape == (64, 64, 3)
    assert cli("reproduce", "up.png", "-o", "again.png", "--check", "-q").code == 0

    latents = _library("StableDiffusionImg2ImgPipeline", sd)(
        PROMPT, image=PIL.Image.open(photo), strength=0.5, num_inference_steps=4, output_type="latent",
        generator=_seed(15)).images
    expected = _library("StableDiffusionLatentUpscalePipeline", x2)(
        PROMPT, image=latents, num_inference_steps=2, generator=_seed(15)).images[0]
    assert np.array_equal(pixels(tmp_path / "up.png"), _rgb(expected))


# ---------------------------------------------------------------------------------------------- Kandinsky 3


def test_kandinsky3_generate_img2img_and_chain(cli, tmp_path, family):
    k3 = family("k3")
    record, made = _made(cli, tmp_path, "k3", "generate", PROMPT, "--model", k3, "--seed", 16, "--steps", 2,
                         "--size", "64x64", "--negative", "rain")
    assert made.shape == (64, 64, 3) and record["guidance"] == 3.0
    expected = _library("Kandinsky3Pipeline", k3)(PROMPT, negative_prompt="rain", height=64, width=64,
                                                  num_inference_steps=2, generator=_seed(16)).images[0]
    assert np.array_equal(made, _rgb(expected))

    record, made = _made(cli, tmp_path, "k3i", "img2img", tmp_path / "k3.png", PROMPT, "--model", k3, "--seed", 17,
                         "--steps", 4, "--strength", 0.5)
    expected = _library("Kandinsky3Img2ImgPipeline", k3)(PROMPT, image=PIL.Image.open(tmp_path / "k3.png"),
                                                         strength=0.5, num_inference_steps=4,
                                                         generator=_seed(17)).images[0]
    assert np.array_equal(made, _rgb(expected))

    chain = _chain(tmp_path, [{"task": "text2image", "prompt": PROMPT, "size": "64x64"},
                              {"task": "image2image", "prompt": PROMPT, "strength": 0.5}],
                   model=str(k3), steps=2, seed=18)
    assert cli("chain", chain, "-o", "k3chain.png", "-q").code == 0
    assert cli("reproduce", "k3chain.png", "-o", "again.png", "--check", "-q").code == 0


# ---------------------------------------------------------------------------------------------- mistakes


@pytest.fixture
def no_loading(monkeypatch):
    from sfumato.cli import models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the mistake was reported")

    monkeypatch.setattr(models.Loader, "__init__", refuse)


def _steps(family, *steps) -> list:
    return [{key: str(family(value)) if key == "model" else value for key, value in step.items()} for step in steps]


BAD_CHAINS = {
    "denoising_start after another denoising_end": (
        [{"task": "text2image", "model": "xl-base", "prompt": PROMPT, "denoising_end": 0.7},
         {"task": "image2image", "model": "xl-refiner", "prompt": PROMPT, "denoising_start": 0.8}],
        ("chain step 2", "denoising_start 0.8", "stopped at denoising_end 0.7")),
    "denoising_start after a step that ran to the end": (
        [{"task": "text2image", "model": "xl-base", "prompt": PROMPT},
         {"task": "image2image", "model": "xl-refiner", "prompt": PROMPT, "denoising_start": 0.8}],
        ("chain step 2", "ran to the end (no denoising_end)")),
    "denoising_start on a file": (
        [{"task": "image2image", "model": "xl-refiner", "prompt": PROMPT, "image": "photo.png",
          "denoising_start": 0.5}],
        ("chain step 1", "IMAGE is a file")),
    "denoising_end on Stable Diffusion": (
        [{"task": "text2image", "model": "sd", "prompt": PROMPT, "denoising_end": 0.5},
         {"task": "image2image", "model": "sd", "prompt": PROMPT, "denoising_start": 0.5}],
        ("chain step 1", "StableDiffusionPipeline has no denoising_end")),
    "latents into another latent space": (
        [{"task": "text2image", "model": "sd", "prompt": PROMPT, "output_type": "latent"},
         {"task": "image2image", "model": "xl-refiner", "prompt": PROMPT}],
        ("chain step 2", "another latent space", "scaling_factor")),
    "latents into the x4 upscaler": (
        [{"task": "text2image", "model": "sd", "prompt": PROMPT, "output_type": "latent"},
         {"task": "upscale", "model": "x4"}],
        ("chain step 2", "x4 upscaler takes pictures")),
    "latents into Kandinsky 3": (
        [{"task": "text2image", "model": "sd", "prompt": PROMPT, "output_type": "latent"},
         {"task": "image2image", "model": "k3", "prompt": PROMPT}],
        ("chain step 2", "latents are handed only between models with a VAE")),
    "latents as the last step": (
        [{"task": "text2image", "model": "sd", "prompt": PROMPT, "output_type": "latent"}],
        ("chain step 1 (the last)", "output_type: latent")),
    "latents written with out": (
        [{"task": "text2image", "model": "xl-base", "prompt": PROMPT, "denoising_end": 0.5, "out": "base.png"},
         {"task": "image2image", "model": "xl-refiner", "prompt": PROMPT, "denoising_start": 0.5}],
        ("chain step 1", "out 'base.png' cannot be written")),
    "latents as a mask": (
        [{"task": "text2image", "model": "sd", "prompt": PROMPT, "output_type": "latent"},
         {"task": "inpaint", "model": "sd", "prompt": PROMPT, "image": "photo.png", "mask": "$previous"}],
        ("chain step 2", "MASK comes from a step that hands latents")),
}


@pytest.mark.parametrize("name", list(BAD_CHAINS))
def test_bad_chains_are_refused_before_loading(cli, tmp_path, family, no_loading, name):
    steps, expected = BAD_CHAINS[name]
    _photo(tmp_path, "photo.png", 32, 32)
    result = cli("chain", _chain(tmp_path, _steps(family, *steps), seed=1), "-o", "out.png")
    assert result.code == 2, result.err
    assert result.err.startswith("sfumato: error: ") and len(result.err.strip().splitlines()) == 1, result.err
    for fragment in expected:
        assert fragment in result.err, (fragment, result.err)
    assert not (tmp_path / "out.png").exists()


def _fake_controlnet(folder):
    """A ControlNetModel folder (its config only) made for another UNet than the "sd" folder's."""
    (folder / "other-controlnet").mkdir()
    (folder / "other-controlnet" / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel",
                                                                         "cross_attention_dim": 999}))
    return folder / "other-controlnet"


BAD_COMMANDS = {
    "Kandinsky 3 inpainting": (lambda f, p: ["inpaint", p, p, PROMPT, "--model", f("k3")],
                               ("Kandinsky 3 checkpoint (Kandinsky3Pipeline)", "no inpainting pipeline",
                                "`sfumato generate` or `img2img`")),
    "refiner text-to-image": (lambda f, p: ["generate", PROMPT, "--model", f("xl-refiner")],
                              ("an SDXL refiner checkpoint", "cannot do text2image")),
    "an upscaler for text-to-image": (lambda f, p: ["generate", PROMPT, "--model", f("x4")],
                                      ("upscaler checkpoint", "`sfumato upscale`")),
    "a text-to-image folder to upscale": (lambda f, p: ["upscale", p, "--model", f("sd")],
                                          ("cannot do upscale", "`sfumato generate`")),
    "upscale without --model": (lambda f, p: ["upscale", p], ("--model",)),
    "noise level for the x2 upscaler": (lambda f, p: ["upscale", p, "--model", f("x2"), "--noise-level", "5"],
                                        ("--noise-level applies to the x4 upscaler only",)),
    "a negative noise level": (lambda f, p: ["upscale", p, "--model", f("x4"), "--noise-level", "-1"],
                               ("--noise-level", "at least 0")),
    "noise level past the x4 upscaler's limit": (
        lambda f, p: ["upscale", p, "--model", f("x4"), "--noise-level", "351"],
        ("--noise-level 351", "0 to 350")),
    "upscale input of the wrong multiple": (lambda f, p: ["upscale", p, "--model", f("x2")],
                                            ("IMAGE is 36x20 pixels", "multiples of 16, at least 32")),
    "upscale beyond the size limit": (lambda f, p: ["upscale", p, "--model", f("x4")],
                                      ("the upscale of IMAGE makes 144x80 pixels", "limit of 100"),
                                      {"SFUMATO_MAX_SIDE": "100"}),
    "Stable Diffusion ControlNet without --controlnet": (
        lambda f, p: ["controlnet", p, PROMPT, "--model", f("sd")], ("needs --controlnet FOLDER",)),
    "--controlnet that is a pipeline folder": (
        lambda f, p: ["controlnet", p, PROMPT, "--model", f("sd"), "--controlnet", f("sd")],
        ("--controlnet", "it is a pipeline folder")),
    "--controlnet of another UNet": (
        lambda f, p: ["controlnet", p, PROMPT, "--model", f("sd"), "--controlnet", _fake_controlnet(p.parent)],
        ("--controlnet", "cross_attention_dim 999", "has 32")),
    "--controlnet for Kandinsky 2.2": (
        lambda f, p: ["controlnet", p, PROMPT, "--controlnet", f("controlnet")],
        ("--controlnet applies to Stable Diffusion checkpoints",)),
    "--depth-model that is no model": (
        lambda f, p: ["controlnet", p, PROMPT, "--model", f("sd"), "--controlnet", f("controlnet"),
                      "--depth-model", p], ("--depth-model", "depth-estimation model")),
    "prior steps for Stable Diffusion": (lambda f, p: ["generate", PROMPT, "--model", f("sd"), "--prior-steps", "3"],
                                         ("--prior-steps applies to the two-stage", "has no prior")),
    "a size off the VAE's multiple": (lambda f, p: ["generate", PROMPT, "--model", f("xl-base"), "--size", "30x32"],
                                      ("width 30 is not a multiple of 4",)),
    "a size off Kandinsky 3's multiple": (lambda f, p: ["generate", PROMPT, "--model", f("k3"), "--size", "96x64"],
                                          ("width 96 is not a multiple of 64",)),
}


@pytest.mark.parametrize("name", list(BAD_COMMANDS))
def test_bad_commands_are_refused_before_loading(cli, tmp_path, family, no_loading, monkeypatch, name):
    make, expected, *env = BAD_COMMANDS[name]
    for key, value in (env[0] if env else {}).items():
        monkeypatch.setenv(key, value)
    photo = _photo(tmp_path, "odd.png", 36, 20)
    result = cli(*make(family, photo), "-o", "out.png")
    assert result.code == 2, result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    for fragment in expected:
        assert fragment in result.err, (fragment, result.err)
    assert not (tmp_path / "out.png").exists()


def test_a_saved_controlnet_pipeline_uses_its_own_controlnet(cli, tmp_path, family):
    import sfumato

    folder = tmp_path / "sd-controlnet"
    pipe = _library("StableDiffusionControlNetPipeline", family("sd"),
                    controlnet=sfumato.ControlNetModel.from_pretrained(family("controlnet")))
    pipe.save_pretrained(folder)
    hint = _photo(tmp_path, "hint.png", 32, 32, seed=8)
    record, made = _made(cli, tmp_path, "own", "controlnet", hint, PROMPT, "--model", folder, "--seed", 19,
                         "--steps", 2)
    assert "controlnet" not in record and record["controlnet_scale"] == 1.0
    expected = pipe(PROMPT, image=PIL.Image.open(hint).convert("RGB"), height=32, width=32, num_inference_steps=2,
                    generator=_seed(19)).images[0]
    assert np.array_equal(made, _rgb(expected))
    for argv in (("generate", PROMPT), ("controlnet", hint, PROMPT, "--controlnet", family("controlnet"))):
        result = cli(*argv, "--model", folder, "-o", "no.png")
        assert result.code == 2 and ("Stable Diffusion ControlNet" in result.err), result.err


def test_stable_diffusion_controlnet_inpainting_equals_the_library(cli, tmp_path, family, picture, mask):
    """--image and --mask: ControlNet inpainting; the kept part is the picture's own (pasted back by default)."""
    import sfumato

    sd, controlnet = family("sd"), family("controlnet")
    hint = _photo(tmp_path, "hint.png", 64, 64, seed=3)
    record, made = _made(cli, tmp_path, "cn-inpaint", "controlnet", hint, PROMPT, "--image", picture, "--mask", mask,
                         "--model", sd, "--controlnet", controlnet, "--no-keep-unmasked", "--seed", 8, "--steps", 3)
    assert (record["strength"], record["controlnet_scale"], record["keep_unmasked"]) == (1.0, 0.5, False)
    assert set(record["input_sha256"]) == {"image", "mask", "hint"}
    pipe = _library("StableDiffusionControlNetInpaintPipeline", sd,
                    controlnet=sfumato.ControlNetModel.from_pretrained(controlnet))
    expected = pipe(PROMPT, image=PIL.Image.open(picture).convert("RGB"), mask_image=PIL.Image.open(mask).convert("L"),
                    control_image=PIL.Image.open(hint).convert("RGB"), height=64, width=64, num_inference_steps=3,
                    generator=_seed(8)).images[0]
    assert np.array_equal(made, _rgb(expected))
    kept = _made(cli, tmp_path, "cn-kept", "controlnet", hint, PROMPT, "--image", picture, "--mask", mask, "--model",
                 sd, "--controlnet", controlnet, "--seed", 8, "--steps", 3)[1]
    black = np.asarray(PIL.Image.open(mask)) < 128
    assert np.array_equal(kept[black], _rgb(PIL.Image.open(picture))[black])  # far from the seam: the picture's own


def test_controlnet_inpainting_is_refused_where_it_does_not_exist(cli, tmp_path, picture, mask):
    for argv, words in ((("--image", picture, "--mask", mask), "Kandinsky 2.2 ControlNet decoder, which has no "
                                                                "inpainting pipeline"),
                        (("--mask", mask), "--mask applies to controlnet only with --image"),
                        (("--image", picture, "--keep-unmasked"), "--keep-unmasked applies to controlnet only with")):
        result = cli("controlnet", picture, "a green circle", *argv, "-o", "no.png")
        assert result.code == 2 and words in result.err, result.err
    assert not (tmp_path / "no.png").exists()
