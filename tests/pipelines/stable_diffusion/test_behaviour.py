"""Stable Diffusion pipeline behaviour beyond plain parity: per-sample generators, the safety checker component,
callbacks, outdated scheduler configs, auto pipelines and from_pipe, saving, and bad input before any model runs."""

import json
import logging

import numpy as np
import pytest
import torch

import sfumato

from ..parity import assert_close, generator, mask, picture
from .builders import load_both


def load(folder, class_name="StableDiffusionPipeline", **kwargs):
    pipe = getattr(sfumato, class_name).from_pretrained(folder, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---------------------------------------------------------------------------------------------- per-sample draws


@pytest.mark.parametrize("class_name,kind,extra", [
    ("StableDiffusionPipeline", "text2img", dict(height=32, width=40)),
    ("StableDiffusionImg2ImgPipeline", "text2img", dict(image=picture(32, 40), strength=0.7)),
    ("StableDiffusionInpaintPipeline", "inpaint", dict(image=picture(32, 40), mask_image=mask(32, 40), height=32,
                                                       width=40, strength=0.8)),
    ("StableDiffusionInpaintPipeline", "text2img", dict(image=picture(32, 40), mask_image=mask(32, 40), height=32,
                                                        width=40)),
])
def test_images_per_prompt_with_a_generator_each_equal_single_runs(sd_folder, class_name, kind, extra):
    """Every sample draws its noise, and its picture's posterior, from its own generator."""
    pipe = load(sd_folder("small", kind), class_name)
    common = dict(prompt="a red circle", negative_prompt="dark", num_inference_steps=3, output_type="np", **extra)
    both = pipe(**common, num_images_per_prompt=2, generator=[generator(1), generator(2)]).images
    for i, seed in enumerate((1, 2)):
        assert_close(both[i:i + 1], pipe(**common, generator=generator(seed)).images)
    assert np.abs(both[0] - both[1]).max() > 1e-3


def test_prompts_with_pictures_each_keep_their_picture(sd_folder):
    """Two prompts, two pictures, two images each: every image starts from its own prompt's picture (the
    reference pairs them as picture 0, 1, 0, 1 against prompts 0, 0, 1, 1)."""
    pipe = load(sd_folder("small"), "StableDiffusionImg2ImgPipeline")
    pictures = [picture(32, 32, 1), picture(32, 32, 2)]
    common = dict(strength=0.6, num_inference_steps=3, output_type="np")
    both = pipe(prompt=["a cat", "a dog"], image=pictures, num_images_per_prompt=2,
                generator=[generator(s) for s in (1, 2, 3, 4)], **common).images
    for i, (prompt, image) in enumerate([("a cat", pictures[0])] * 2 + [("a dog", pictures[1])] * 2):
        assert_close(both[i:i + 1], pipe(prompt=prompt, image=image, generator=generator(i + 1), **common).images)


# ---------------------------------------------------------------------------------------------- safety checker


def test_safety_checker_none_warns_and_reports_nothing(sd_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="sfumato"):
        pipe = load(sd_folder("small"), safety_checker=None)
    assert "You have disabled the safety checker" in caplog.text
    out = pipe("a red circle", height=32, width=32, num_inference_steps=2, output_type="np", generator=generator())
    assert out.nsfw_content_detected is None
    images, flags = pipe("a red circle", height=32, width=32, num_inference_steps=2, output_type="np",
                         generator=generator(), return_dict=False)
    assert flags is None and np.array_equal(images, out.images)


def test_safety_checker_off_without_warning_when_not_required(sd_folder, caplog):
    with caplog.at_level(logging.WARNING, logger="sfumato"):
        pipe = load(sd_folder("small", "nochecker"))
        load(sd_folder("small"), safety_checker=None, requires_safety_checker=False)
    assert "safety checker" not in caplog.text
    assert pipe.safety_checker is None and pipe.config["requires_safety_checker"] is False


def test_safety_checker_needs_a_feature_extractor(sd_folder):
    with pytest.raises(ValueError, match="feature_extractor"):
        load(sd_folder("small"), feature_extractor=None)


def test_flagged_pictures_are_black_in_every_output_type(sd_folder):
    pipe = load(sd_folder("small", "unsafe"))
    common = dict(prompt="a red circle", height=32, width=32, num_inference_steps=2, generator=generator())
    assert all(np.asarray(image).max() == 0 for image in pipe(**common).images)
    out = pipe(**dict(common, generator=generator()), output_type="pt")
    assert out.nsfw_content_detected == [True] and torch.all(out.images == 0)
    latents = pipe(**dict(common, generator=generator()), output_type="latent")
    assert latents.nsfw_content_detected is None and latents.images.shape == (1, 4, 8, 8)


def test_save_and_reload_in_the_reference(tmp_path, sd_folder):
    import diffusers

    pipe = load(sd_folder("small"), "StableDiffusionInpaintPipeline")
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInpaintPipeline"
    assert index["safety_checker"] == ["stable_diffusion", "StableDiffusionSafetyChecker"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"] and index["requires_safety_checker"] is True
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(tmp_path / "saved")
    theirs.set_progress_bar_config(disable=True)
    ours = load(tmp_path / "saved")
    kwargs = dict(prompt="a cat", height=32, width=32, num_inference_steps=2, output_type="np")
    assert_close(ours(**kwargs, generator=generator()).images, theirs(**kwargs, generator=generator()).images)


# ---------------------------------------------------------------------------------------------- callbacks


def test_callbacks_see_and_replace_tensors_like_the_reference(sd_folder):
    ours, theirs = load_both(sd_folder("small", "inpaint"), "StableDiffusionInpaintPipeline")
    seen = {}

    def halve_at_step_one(pipe, i, t, tensors):
        seen.setdefault(type(pipe).__module__.split(".")[0], []).append(sorted(tensors))
        if i == 1:
            return {"latents": tensors["latents"] * 0.5, "prompt_embeds": tensors["prompt_embeds"] * 0.9}
        return {}

    names = ["latents", "prompt_embeds", "negative_prompt_embeds", "mask", "masked_image_latents"]
    kwargs = dict(prompt="a cat", image=picture(32, 32), mask_image=mask(32, 32), height=32, width=32,
                  num_inference_steps=3, output_type="np", callback_on_step_end=halve_at_step_one,
                  callback_on_step_end_tensor_inputs=names)
    a = ours(**kwargs, generator=generator()).images
    b = theirs(**kwargs, generator=generator()).images
    assert_close(a, b)
    # PNDM (Stable Diffusion's scheduler) runs one model call more than num_inference_steps
    assert seen["sfumato"] == seen["diffusers"] == [sorted(names)] * ours.num_timesteps


def test_legacy_callback_and_steps(sd_folder):
    pipe = load(sd_folder("small"), scheduler=sfumato.DDIMScheduler.from_pretrained(sd_folder("small"),
                                                                                     subfolder="scheduler"))
    calls = []
    pipe("a cat", height=32, width=32, num_inference_steps=4, output_type="latent", generator=generator(),
         callback=lambda step, t, latents: calls.append((step, latents.shape)), callback_steps=2)
    assert calls == [(0, (1, 4, 8, 8)), (2, (1, 4, 8, 8))]


def test_outdated_scheduler_configs_are_fixed_like_the_reference(sd_folder):
    """A DDIM scheduler with steps_offset=0 and clip_sample=True (old checkpoints): both libraries rewrite them."""
    import diffusers

    folder = sd_folder("small")
    ours = load(folder, scheduler=sfumato.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                        beta_end=0.012))
    theirs = diffusers.StableDiffusionPipeline.from_pretrained(
        folder, scheduler=diffusers.DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012))
    theirs.set_progress_bar_config(disable=True)
    assert ours.scheduler.config.steps_offset == 1 and ours.scheduler.config.clip_sample is False
    kwargs = dict(prompt="a cat", height=32, width=32, num_inference_steps=3, output_type="np")
    assert_close(ours(**kwargs, generator=generator()).images, theirs(**kwargs, generator=generator()).images)


def test_long_prompts_are_cut_with_a_warning(sd_folder, caplog):
    pipe = load(sd_folder("small"))
    with caplog.at_level(logging.WARNING, logger="sfumato"):
        pipe("a red circle " * 40, height=32, width=32, num_inference_steps=1, output_type="latent",
             generator=generator())
    assert "tokens were dropped" in caplog.text


# ---------------------------------------------------------------------------------------------- auto pipelines


def test_auto_pipelines_pick_stable_diffusion_classes(sd_folder):
    folder = sd_folder("small")
    assert type(sfumato.AutoPipelineForText2Image.from_pretrained(folder)) is sfumato.StableDiffusionPipeline
    assert type(sfumato.AutoPipelineForImage2Image.from_pretrained(folder)) is sfumato.StableDiffusionImg2ImgPipeline
    assert type(sfumato.AutoPipelineForInpainting.from_pretrained(folder)) is sfumato.StableDiffusionInpaintPipeline
    inpaint_folder = sd_folder("small", "inpaint")
    assert type(sfumato.AutoPipelineForText2Image.from_pretrained(inpaint_folder)) is sfumato.StableDiffusionPipeline


def test_auto_from_pipe_shares_components(sd_folder, caplog):
    text2img = load(sd_folder("small"), safety_checker=None, requires_safety_checker=False)
    with caplog.at_level(logging.WARNING, logger="sfumato"):
        img2img = sfumato.AutoPipelineForImage2Image.from_pipe(text2img)
        inpaint = sfumato.AutoPipelineForInpainting.from_pipe(img2img)
        back = sfumato.AutoPipelineForText2Image.from_pipe(inpaint)
    assert "safety checker" not in caplog.text  # requires_safety_checker=False carries over
    assert type(img2img) is sfumato.StableDiffusionImg2ImgPipeline
    assert type(inpaint) is sfumato.StableDiffusionInpaintPipeline and type(back) is sfumato.StableDiffusionPipeline
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert getattr(img2img, name) is getattr(text2img, name) is getattr(inpaint, name)
    assert sfumato.AutoPipelineForText2Image.from_pipe(text2img) is text2img


def test_the_guides_text_to_image_then_image_to_image(sd_folder):
    """``pipeline = AutoPipelineForText2Image...; image = pipeline(...); AutoPipelineForImage2Image.from_pipe``."""
    text2img = sfumato.AutoPipelineForText2Image.from_pretrained(sd_folder("small"))
    text2img.set_progress_bar_config(disable=True)
    image = text2img("a red circle", height=32, width=48, num_inference_steps=2, generator=generator()).images[0]
    img2img = sfumato.AutoPipelineForImage2Image.from_pipe(text2img)
    out = img2img("a red circle, oil painting", image=image, strength=0.5, num_inference_steps=4,
                  generator=generator()).images[0]
    assert out.size == (48, 32)


# ---------------------------------------------------------------------------------------------- bad input


def no_model_may_run(pipe, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model ran before the bad input was found")

    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            for module in component.modules():
                monkeypatch.setattr(module, "forward", refuse)


@pytest.fixture(scope="module")
def pipelines(sd_folder):
    cache = {}

    def get(class_name, config="small", kind="text2img"):
        if (class_name, config, kind) not in cache:
            cache[class_name, config, kind] = load(sd_folder(config, kind), class_name)
        return cache[class_name, config, kind]

    return get


EMBEDS = torch.zeros(1, 77, 32)
FOREIGN_LATENTS = torch.zeros(1, 4, 8, 8)  # another SD model's output_type="latent"

BAD_INPUT = [
    ("StableDiffusionPipeline", "small", dict(prompt="a cat", prompt_embeds=EMBEDS), ValueError, "not both"),
    ("StableDiffusionPipeline", "small", dict(), ValueError, "prompt or prompt_embeds is required"),
    ("StableDiffusionPipeline", "small", dict(prompt_embeds=EMBEDS, negative_prompt_embeds=torch.zeros(1, 70, 32)),
     ValueError, "negative_prompt_embeds has shape"),
    ("StableDiffusionPipeline", "small", dict(prompt="a cat", negative_prompt="x", negative_prompt_embeds=EMBEDS),
     ValueError, "negative_prompt or negative_prompt_embeds, not both"),
    ("StableDiffusionPipeline", "small", dict(prompt_embeds=torch.zeros(1, 77, 24)), ValueError, "width 24"),
    ("StableDiffusionPipeline", "small", dict(prompt="a cat", height=30), ValueError, "height must be a positive"),
    ("StableDiffusionPipeline", "eight", dict(prompt="a cat", latents=FOREIGN_LATENTS), ValueError,
     "latents have 4 channels, but this pipeline's latent space has 8"),
    ("StableDiffusionPipeline", "small", dict(prompt="a cat", latents=torch.zeros(1, 4, 5, 8)), ValueError,
     "latents have shape"),
    ("StableDiffusionPipeline", "small", dict(prompt="a cat", callback_on_step_end_tensor_inputs=["mask"]),
     ValueError, "offers"),
    ("StableDiffusionPipeline", "small", dict(prompt="a cat", timesteps=[900, 500], sigmas=[3.0, 1.0]), ValueError,
     "not both"),
    ("StableDiffusionPipeline", "small", dict(prompt="a cat", clip_skip=9), ValueError, "clip_skip"),
    ("StableDiffusionPipeline", "small", dict(prompt="a cat", generator=[generator(), generator()]), ValueError,
     "2 generators"),
    ("StableDiffusionPipeline", "small", dict(prompt="a cat", ip_adapter_image=picture(32, 32)),
     NotImplementedError, "IP-Adapter"),
    ("StableDiffusionPipeline", "small", dict(prompt=["a cat", "a dog"], negative_prompt=["x", "y", "z"]),
     ValueError, "negative_prompt has 3 entries"),
    ("StableDiffusionImg2ImgPipeline", "small", dict(prompt="a cat", image="cat.png"), TypeError, "image"),
    ("StableDiffusionImg2ImgPipeline", "small", dict(prompt="a cat", image=42), TypeError, "image"),
    ("StableDiffusionImg2ImgPipeline", "small", dict(prompt="a cat"), ValueError, "image is required"),
    ("StableDiffusionImg2ImgPipeline", "small", dict(prompt="a cat", image=picture(32, 32), strength=0),
     ValueError, "strength"),
    ("StableDiffusionImg2ImgPipeline", "small", dict(prompt="a cat", image=picture(32, 32), strength=1.5),
     ValueError, "strength must be a number in"),
    ("StableDiffusionImg2ImgPipeline", "eight", dict(prompt="a cat", image=FOREIGN_LATENTS), ValueError,
     "image has 4 channels"),
    ("StableDiffusionImg2ImgPipeline", "small", dict(prompt=["a", "b"], image=[picture(32, 32)] * 3), ValueError,
     "image has batch size 3"),
    ("StableDiffusionInpaintPipeline", "small", dict(prompt="a cat", image=42, mask_image=mask(32, 32)), TypeError,
     "image"),
    ("StableDiffusionInpaintPipeline", "small", dict(prompt="a cat", image=picture(32, 32)), ValueError,
     "mask_image is required"),
    ("StableDiffusionInpaintPipeline", "small", dict(prompt="a cat", image=picture(32, 32), mask_image=mask(32, 32),
                                                     strength=0), ValueError, "strength"),
    ("StableDiffusionInpaintPipeline", "small", dict(prompt="a cat", image=picture(32, 32), mask_image=mask(32, 32),
                                                     strength=1.2), ValueError, "strength"),
    ("StableDiffusionInpaintPipeline", "eight", dict(prompt="a cat", image=picture(32, 32), mask_image=mask(32, 32),
                                                     latents=FOREIGN_LATENTS), ValueError, "latents have 4 channels"),
    ("StableDiffusionInpaintPipeline", "small", dict(prompt="a cat", image=torch.zeros(1, 3, 32, 32),
                                                     mask_image=mask(32, 32), padding_mask_crop=4), ValueError,
     "padding_mask_crop needs image as one PIL image"),
    ("StableDiffusionInpaintPipeline", "small", dict(prompt="a cat", image=picture(32, 32), mask_image=mask(32, 32),
                                                     masked_image_latents=torch.zeros(3, 4, 8, 8)), ValueError,
     "masked_image_latents has batch size 3"),
]


@pytest.mark.parametrize("class_name,config,kwargs,error,message", BAD_INPUT,
                         ids=[f"{c[0].replace('StableDiffusion', '')}-{i}" for i, c in enumerate(BAD_INPUT)])
def test_bad_input_is_named_before_any_model_runs(pipelines, monkeypatch, class_name, config, kwargs, error, message):
    pipe = pipelines(class_name, config)
    no_model_may_run(pipe, monkeypatch)
    kwargs = dict(kwargs)
    if class_name != "StableDiffusionImg2ImgPipeline":
        kwargs.setdefault("height", 32)
        kwargs.setdefault("width", 32)
    with pytest.raises(error, match=message):
        pipe(**kwargs, num_inference_steps=2)


def test_custom_timesteps_need_a_scheduler_that_takes_them(sd_folder):
    pipe = load(sd_folder("small"))
    pipe.scheduler = sfumato.DDIMScheduler.from_config(pipe.scheduler.config)
    with pytest.raises(ValueError, match="DDIMScheduler does not take custom timesteps"):
        pipe("a cat", height=32, width=32, timesteps=[900, 500, 100], output_type="latent")
