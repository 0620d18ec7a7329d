"""SDXL behaviour beyond plain parity: batches keep each sample's micro-conditioning, empty negatives, the VAE's
float32 upcast, callbacks, auto pipelines and from_pipe, saving, and bad input before any model runs."""

import json
import logging

import numpy as np
import pytest
import torch

import diffusers
import sfumato

from ..parity import assert_close, generator, mask, picture
from ..stable_diffusion.builders import load_both
from ..stable_diffusion.test_behaviour import no_model_may_run

SIZE = dict(height=32, width=40)


def load(folder, class_name="StableDiffusionXLPipeline", **kwargs):
    pipe = getattr(sfumato, class_name).from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipelines(sdxl_folder):
    cache = {}

    def get(class_name="StableDiffusionXLPipeline", config="small", kind="base"):
        if (class_name, config, kind) not in cache:
            cache[class_name, config, kind] = load(sdxl_folder(config, kind), class_name)
        return cache[class_name, config, kind]

    return get


# ---------------------------------------------------------------------------------------------- conditioning


def test_each_sample_keeps_its_negative_micro_conditioning(pipelines):
    """Every sample of a batch equals its single run. (The reference's text-to-image pipeline pairs the
    unconditional and conditional micro-conditioning rows wrongly when a batch has more than one sample and the
    negative sizes are given.)"""
    pipe = pipelines()
    common = dict(negative_original_size=(16, 24), negative_crops_coords_top_left=(2, 6), negative_target_size=(24, 16),
                  original_size=(96, 64), num_inference_steps=3, output_type="np", **SIZE)
    both = pipe(prompt=["a cat", "a dog"], generator=[generator(1), generator(2)], **common).images
    for i, prompt in enumerate(["a cat", "a dog"]):
        assert_close(both[i:i + 1], pipe(prompt=prompt, generator=generator(i + 1), **common).images)


def test_empty_negative_prompt_is_zeros_where_the_config_says_so(pipelines):
    """force_zeros_for_empty_prompt: no negative prompt is zero embeddings; an empty string is encoded."""
    pipe = pipelines()
    assert pipe.config.force_zeros_for_empty_prompt
    embeds, _, pooled, _ = pipe.encode_prompt("a cat", do_classifier_free_guidance=False)
    common = dict(num_inference_steps=2, output_type="np", **SIZE)
    plain = pipe(prompt="a cat", generator=generator(), **common).images
    zeros = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, negative_prompt_embeds=torch.zeros_like(embeds),
                 negative_pooled_prompt_embeds=torch.zeros_like(pooled), generator=generator(), **common).images
    assert_close(plain, zeros)
    assert np.abs(plain - pipe(prompt="a cat", negative_prompt="", generator=generator(), **common).images).max() > 1e-3


def test_one_second_prompt_serves_every_prompt(pipelines):
    pipe = pipelines()
    common = dict(prompt=["a cat", "a dog"], num_inference_steps=2, output_type="np", **SIZE)
    assert_close(pipe(prompt_2="oil", generator=generator(), **common).images,
                 pipe(prompt_2=["oil", "oil"], generator=generator(), **common).images)


def test_a_single_encoder_reads_the_first_prompt(pipelines):
    """The refiner has one text encoder; it reads ``prompt`` (``prompt_2`` is a second encoder's), as in the
    reference."""
    pipe = pipelines("StableDiffusionXLImg2ImgPipeline", kind="refiner")
    common = dict(prompt="a cat", image=picture(32, 40), strength=0.6, num_inference_steps=3, output_type="np")
    assert_close(pipe(prompt_2="oil", generator=generator(), **common).images,
                 pipe(generator=generator(), **common).images)


def test_negative_prompt_2_alone_is_ignored_with_a_warning(pipelines, caplog):
    pipe = pipelines()
    with caplog.at_level(logging.WARNING, logger="sfumato"):
        pipe(prompt="a cat", negative_prompt_2="dark", num_inference_steps=1, output_type="latent", **SIZE)
    assert "negative_prompt_2 is ignored without negative_prompt" in caplog.text


def test_callbacks_see_and_replace_the_added_conditions(pipelines):
    pipe = pipelines()
    seen = {}

    def callback(pipeline, step, timestep, tensors):
        seen.update({name: tuple(value.shape) for name, value in tensors.items()})
        return {"add_time_ids": tensors["add_time_ids"] * 0}

    names = ["latents", "prompt_embeds", "add_text_embeds", "add_time_ids"]
    pipe(prompt=["a", "b"], num_inference_steps=2, callback_on_step_end=callback,
         callback_on_step_end_tensor_inputs=names, output_type="latent", **SIZE)
    assert seen == {"latents": (2, 4, 8, 10), "prompt_embeds": (4, 77, 40), "add_text_embeds": (4, 20),
                    "add_time_ids": (4, 6)}


# ---------------------------------------------------------------------------------------------- the VAE


def test_float16_vae_decodes_in_float32_like_the_reference(sdxl_folder):
    """force_upcast: a float16 VAE runs in float32 while it encodes or decodes, then is float16 again."""
    ours, theirs = load_both(sdxl_folder("small", "refiner"), "StableDiffusionXLImg2ImgPipeline")
    for pipe in (ours, theirs):
        pipe.vae.to(torch.float16)
    common = dict(prompt="a cat", image=picture(32, 40), strength=0.6, num_inference_steps=3, output_type="np")
    a = ours(**common, generator=generator()).images
    b = theirs(**common, generator=generator()).images
    assert ours.vae.dtype == torch.float16
    assert_close(a, b)


def test_inpaint_keeps_the_known_region_in_the_latent_space_of_its_vae(pipelines):
    """A VAE with latents_mean / latents_std: the kept region is the picture's latents as image-to-image encodes
    them. (The reference's inpainting encodes without the mean and std but decodes with them.)"""
    pipe = pipelines("StableDiffusionXLInpaintPipeline", "wide", "base")
    assert pipe.vae.config.latents_mean is not None
    latents = pipe(prompt="a cat", image=picture(32, 40), mask_image=mask(32, 40), strength=0.7,
                   num_inference_steps=3, output_type="latent", generator=generator(), **SIZE).images
    pixels = pipe.preprocess_pictures(picture(32, 40), 32, 40)
    encoded = pipe.encode_pictures(pixels, generator=generator())
    keep = torch.nn.functional.interpolate(torch.from_numpy(np.asarray(mask(32, 40)) < 128).float()[None, None],
                                           size=latents.shape[-2:]) == 1
    keep = keep.expand_as(latents)
    assert torch.allclose(latents[keep], encoded[keep], atol=1e-6)
    assert torch.allclose(pipe.from_latents(pipe.to_latents(encoded)), encoded, atol=1e-6)


# ---------------------------------------------------------------------------------------------- loading and saving


def test_auto_pipelines_resolve_base_refiner_and_inpainting_folders(sdxl_folder):
    base = sfumato.AutoPipelineForText2Image.from_pretrained(sdxl_folder("small"))
    assert type(base) is sfumato.StableDiffusionXLPipeline
    refiner = sfumato.AutoPipelineForImage2Image.from_pretrained(sdxl_folder("small", "refiner"))
    assert type(refiner) is sfumato.StableDiffusionXLImg2ImgPipeline
    assert refiner.config.requires_aesthetics_score and refiner.text_encoder is None
    inpaint = sfumato.AutoPipelineForInpainting.from_pretrained(sdxl_folder("small", "inpaint"))
    assert type(inpaint) is sfumato.StableDiffusionXLInpaintPipeline
    assert inpaint.unet.config.in_channels == 9
    assert type(sfumato.AutoPipelineForImage2Image.from_pretrained(sdxl_folder("small"))) \
        is sfumato.StableDiffusionXLImg2ImgPipeline


def test_from_pipe_shares_components_and_gives_the_same_pictures(sdxl_folder):
    base = load(sdxl_folder("small"))
    img2img = sfumato.AutoPipelineForImage2Image.from_pipe(base)
    inpaint = sfumato.AutoPipelineForInpainting.from_pipe(img2img)
    assert type(img2img) is sfumato.StableDiffusionXLImg2ImgPipeline
    assert type(inpaint) is sfumato.StableDiffusionXLInpaintPipeline
    assert img2img.unet is base.unet and inpaint.text_encoder_2 is base.text_encoder_2
    assert not img2img.config.requires_aesthetics_score
    common = dict(prompt="a cat", image=picture(32, 40), strength=0.6, num_inference_steps=3, output_type="np")
    loaded = load(sdxl_folder("small"), "StableDiffusionXLImg2ImgPipeline")
    assert_close(img2img(**common, generator=generator()).images, loaded(**common, generator=generator()).images)
    assert sfumato.AutoPipelineForText2Image.from_pipe(inpaint).unet is base.unet


@pytest.mark.parametrize("kind,class_name", [("base", "StableDiffusionXLPipeline"),
                                             ("refiner", "StableDiffusionXLImg2ImgPipeline")])
def test_saved_folders_load_in_the_reference(sdxl_folder, tmp_path, kind, class_name):
    ours = load(sdxl_folder("small", kind), class_name)
    ours.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    original = json.loads((sdxl_folder("small", kind) / "model_index.json").read_text())
    settings = ("force_zeros_for_empty_prompt", "requires_aesthetics_score")
    assert {k: index.get(k) for k in settings} == {k: original.get(k) for k in settings}
    theirs = getattr(diffusers, class_name).from_pretrained(tmp_path / "saved")
    theirs.set_progress_bar_config(disable=True)
    common = dict(prompt="a cat", num_inference_steps=2, output_type="np")
    common.update(dict(image=picture(32, 40), strength=0.6) if kind == "refiner" else SIZE)
    assert_close(ours(**common, generator=generator()).images, theirs(**common, generator=generator()).images)


# ---------------------------------------------------------------------------------------------- bad input


EMBEDS, POOLED = torch.zeros(1, 77, 40), torch.zeros(1, 20)  # the small base: encoders 16 + 24 wide, pooled 20
GIVEN = dict(prompt_embeds=EMBEDS, pooled_prompt_embeds=POOLED)
IMAGE = dict(prompt="a cat", image=picture(32, 40), strength=0.5)
INPAINT = dict(prompt="a cat", image=picture(32, 40), mask_image=mask(32, 40), **SIZE)
T2I, I2I, INP = "StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"

BAD_INPUT = [
    (T2I, "base", dict(prompt_embeds=EMBEDS), ValueError,
     "prompt_embeds were given without pooled_prompt_embeds"),
    (T2I, "base", dict(**GIVEN, negative_prompt_embeds=EMBEDS), ValueError,
     "negative_prompt_embeds were given without negative_pooled_prompt_embeds"),
    (T2I, "base", dict(**GIVEN, prompt="a cat"), ValueError, "prompt or prompt_embeds, not both"),
    (T2I, "base", dict(**GIVEN, prompt_2="oil"), ValueError, "prompt_2 or prompt_embeds, not both"),
    (T2I, "base", dict(prompt="a", negative_prompt_2="x", negative_prompt_embeds=EMBEDS,
                       negative_pooled_prompt_embeds=POOLED), ValueError,
     "negative_prompt_2 or negative_prompt_embeds"),
    (T2I, "base", dict(prompt_embeds=EMBEDS, pooled_prompt_embeds=torch.zeros(2, 20)), ValueError,
     "pooled_prompt_embeds has 2 rows"),
    (T2I, "base", dict(prompt_embeds=EMBEDS, pooled_prompt_embeds=torch.zeros(20)), ValueError,
     "pooled_prompt_embeds must have 2 dimensions"),
    (T2I, "base", dict(prompt_embeds=torch.zeros(1, 77, 24), pooled_prompt_embeds=POOLED), ValueError, "width 24"),
    (T2I, "base", dict(prompt_embeds=EMBEDS, pooled_prompt_embeds=torch.zeros(1, 16)), ValueError,
     "pooled_prompt_embeds has width 16, but the pooled text here is 20 wide"),
    (T2I, "base", dict(prompt=["a", "b"], prompt_2=["x", "y", "z"]), ValueError, "prompt_2 has 3 entries"),
    (T2I, "base", dict(prompt="a", denoising_end=1.0), ValueError, "denoising_end must be None or a fraction"),
    (T2I, "base", dict(prompt="a", denoising_end=0), ValueError, "denoising_end must be"),
    (T2I, "base", dict(prompt="a", denoising_end="0.5"), ValueError, "denoising_end must be"),
    (T2I, "base", dict(prompt="a", original_size=(1, 2, 3)), ValueError, r"original_size must be two numbers \(height"),
    (T2I, "base", dict(prompt="a", crops_coords_top_left="top"), ValueError,
     r"crops_coords_top_left must be two numbers \(top, left\)"),
    (T2I, "base", dict(prompt="a", negative_target_size=(float("nan"), 2)), ValueError, "negative_target_size"),
    (T2I, "base", dict(prompt="a", clip_skip=3), ValueError, "clip_skip must be None or"),
    (T2I, "base", dict(prompt="a", ip_adapter_image=picture(32, 32)), NotImplementedError, "IP-Adapter"),
    (T2I, "base", dict(prompt="a", latents=torch.zeros(1, 4, 5, 5)), ValueError, "latents have shape"),
    (I2I, "base", dict(**IMAGE, aesthetic_score=7.0), ValueError, "does not read aesthetic scores"),
    (I2I, "base", dict(**IMAGE, negative_aesthetic_score=1.0), ValueError, "does not read aesthetic scores"),
    (I2I, "refiner", dict(**IMAGE, denoising_start=1.5), ValueError, "denoising_start must be None or a fraction"),
    (I2I, "refiner", dict(**IMAGE, denoising_start=True), ValueError, "denoising_start must be"),
    (I2I, "refiner", dict(**IMAGE, denoising_start=0.8, denoising_end=0.5), ValueError,
     "denoising_start=0.8 must be before denoising_end=0.5"),
    (I2I, "refiner", dict(IMAGE, prompt=["a", "b"], image=[picture(32, 40)] * 3), ValueError,
     "image has batch size 3, but there are 2 prompts making 2 images"),
    (I2I, "refiner", dict(**IMAGE, latents=torch.zeros(1, 4, 4, 4)), ValueError, "latents have shape"),
    (I2I, "refiner", dict(IMAGE, strength=0), ValueError, "strength"),
    (I2I, "refiner", dict(IMAGE, prompt=None, prompt_embeds=torch.zeros(1, 77, 24)), ValueError,
     "without pooled_prompt_embeds"),
    (INP, "inpaint", dict(INPAINT, image=torch.zeros(1, 4, 8, 10)), ValueError, "image was given as latents"),
    (INP, "inpaint", dict(INPAINT, strength=1.5), ValueError, "strength"),
    (INP, "inpaint", dict(INPAINT, denoising_start=0.3, denoising_end=0.3), ValueError, "must be before"),
    (INP, "inpaint", dict(INPAINT, mask_image=None), ValueError, "mask_image is required"),
    (INP, "inpaint", dict(INPAINT, masked_image_latents=torch.zeros(3, 4, 8, 10)), ValueError,
     "masked_image_latents has batch size 3"),
]


@pytest.mark.parametrize("class_name,kind,kwargs,error,message", BAD_INPUT,
                         ids=[f"{c[0].replace('StableDiffusionXL', '')}-{i}" for i, c in enumerate(BAD_INPUT)])
def test_bad_input_is_named_before_any_model_runs(pipelines, monkeypatch, class_name, kind, kwargs, error, message):
    pipe = pipelines(class_name, kind=kind)
    no_model_may_run(pipe, monkeypatch)
    kwargs = dict(kwargs)
    if class_name == T2I:
        kwargs = {**SIZE, **kwargs}
    with pytest.raises(error, match=message):
        pipe(**kwargs, num_inference_steps=2)


@pytest.mark.parametrize("kind,class_name,setting,message", [
    ("refiner", I2I, False, "set requires_aesthetics_score=True"),
    ("base", I2I, True, "set requires_aesthetics_score=False"),
])
def test_aesthetic_setting_that_does_not_fit_the_unet_is_named(sdxl_folder, monkeypatch, kind, class_name, setting,
                                                                message):
    pipe = load(sdxl_folder("small", kind), class_name, requires_aesthetics_score=setting)
    no_model_may_run(pipe, monkeypatch)
    with pytest.raises(ValueError, match=message):
        pipe(**IMAGE, num_inference_steps=2)


def test_missing_text_encoder_and_watermarks_are_named(sdxl_folder):
    pipe = load(sdxl_folder("small"), text_encoder_2=None, tokenizer_2=None)
    with pytest.raises(ValueError, match="no text_encoder_2"):
        pipe(prompt="a cat", num_inference_steps=2, **SIZE)
    with pytest.raises(ValueError, match="tokenizer_2 and text_encoder_2 come together"):
        load(sdxl_folder("small"), tokenizer_2=None)(prompt="a cat", num_inference_steps=2, **SIZE)
    with pytest.raises(NotImplementedError, match="add_watermarker"):
        load(sdxl_folder("small"), add_watermarker=True)
