"""Stable Diffusion pipelines against the reference: same folders, inputs and seeds -> same numbers.

Each comparison prints ``PARITY <test> <max abs difference>`` (run with ``-s`` to collect them).
"""

import numpy as np
import pytest
import torch

from ..parity import ATOL, assert_close_8bit, generator, mask, picture
from .builders import load_both, swap_scheduler


def close(request, a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = float(np.abs(a - b).max())
    print(f"PARITY {request.node.name} {diff:.3g}")
    assert diff <= ATOL, f"max abs difference {diff}"


def run_both(ours, theirs, seed=0, **kwargs):
    """Both pipelines on the same inputs; the generator (or list of them) is rebuilt for each."""
    def make():
        return [generator(s) for s in seed] if isinstance(seed, (list, tuple)) else generator(seed)

    a = ours(**kwargs, generator=make())
    b = theirs(**kwargs, generator=make())
    return a, b


def text_embeds(pipe, prompts, seed=5):
    """Prompt embeddings as a prompt-weighting library would hand them over (encoded, then scaled)."""
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipe.text_encoder(ids)[0]
    weights = 1 + 0.2 * torch.randn(states.shape[:2], generator=generator(seed))
    return states * weights[..., None]


# ---------------------------------------------------------------------------------------------- text-to-image


@pytest.mark.parametrize("config,height,width,prompt,negative,n,guidance,scheduler,extra", [
    ("small", 32, 48, "a red circle", None, 1, 7.5, None, {}),
    ("small", 48, 32, ["a red circle", "a blue square"], ["dark", "noisy"], 2, 6.0, None, {}),
    ("wide", 24, 40, "a green triangle", "blurry", 1, 5.0, ("DDIMScheduler", {}), dict(eta=0.7)),
    ("wide", 32, 32, ["a cat", "a dog"], None, 1, 1.0, ("EulerAncestralDiscreteScheduler", {}), {}),
    ("small", 32, 40, "a house", "ugly", 2, 7.0, ("DPMSolverMultistepScheduler", {}), {}),
    ("small", 40, 32, "a tree", None, 1, 9.0, ("EulerDiscreteScheduler", {}), dict(guidance_rescale=0.7)),
    ("wide", 32, 32, "a boat", None, 1, 7.5, ("EulerDiscreteScheduler", {}), dict(timesteps=[901, 601, 301, 1])),
    ("small", 32, 32, "a lamp", None, 1, 7.5, ("DDIMScheduler", {"timestep_spacing": "trailing"}), {}),
    ("small", 32, 24, "a lamp", "dark", 1, 7.5, ("EulerDiscreteScheduler", {}), dict(sigmas=[14.6, 4.0, 1.0, 0.2])),
])
def test_text2img(request, sd_folder, config, height, width, prompt, negative, n, guidance, scheduler, extra):
    ours, theirs = load_both(sd_folder(config), "StableDiffusionPipeline")
    if scheduler:
        swap_scheduler(ours, theirs, scheduler[0], **scheduler[1])
    a, b = run_both(ours, theirs, prompt=prompt, negative_prompt=negative, height=height, width=width,
                    num_images_per_prompt=n, guidance_scale=guidance, num_inference_steps=4, output_type="np",
                    **extra)
    count = 1 if isinstance(prompt, str) else len(prompt)
    assert a.images.shape == (count * n, height, width, 3)
    assert a.nsfw_content_detected == b.nsfw_content_detected == [False] * (count * n)
    close(request, a.images, b.images)


@pytest.mark.parametrize("with_negative", [True, False])
def test_text2img_prompt_embeds(request, sd_folder, with_negative):
    ours, theirs = load_both(sd_folder("small"), "StableDiffusionPipeline")
    embeds = text_embeds(ours, ["a red circle", "a blue square"])
    extra = dict(negative_prompt_embeds=text_embeds(ours, ["", "dark"], seed=6)) if with_negative \
        else dict(negative_prompt=["", "dark"])
    a, b = run_both(ours, theirs, prompt_embeds=embeds, height=32, width=32, num_inference_steps=3,
                    output_type="np", **extra)
    close(request, a.images, b.images)


def clip_skip_embeds(pipe, prompts, clip_skip):
    """What clip_skip means, written out: an earlier layer's states through the final layer norm."""
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipe.text_encoder(ids, output_hidden_states=True).hidden_states[-(clip_skip + 1)]
        return pipe.text_encoder.final_layer_norm(states)


@pytest.mark.parametrize("pipeline,clip_skip", [("StableDiffusionPipeline", 1), ("StableDiffusionImg2ImgPipeline", 2)])
def test_clip_skip(request, sd_folder, pipeline, clip_skip):
    """The reference's clip_skip reads ``text_encoder.text_model``, which transformers 5 no longer has; it is
    compared here with the reference given the same embeddings (negative prompts use the last layer in both)."""
    ours, theirs = load_both(sd_folder("small"), pipeline)
    common = dict(negative_prompt=["dark", ""], num_inference_steps=4, output_type="np")
    if pipeline == "StableDiffusionImg2ImgPipeline":
        common.update(image=picture(32, 32), strength=0.7)
    else:
        common.update(height=32, width=40)
    prompts = ["a house", "a tree"]
    a = ours(prompt=prompts, clip_skip=clip_skip, generator=generator(), **common)
    b = theirs(prompt_embeds=clip_skip_embeds(theirs, prompts, clip_skip), generator=generator(), **common)
    close(request, a.images, b.images)


def test_text2img_given_latents_and_default_size(request, sd_folder):
    """No height / width: the UNet's sample size times the VAE's scale (8 * 4 = 32)."""
    ours, theirs = load_both(sd_folder("small"), "StableDiffusionPipeline")
    latents = torch.randn(2, 4, 8, 8, generator=generator(7))
    a, b = run_both(ours, theirs, prompt="a red circle", latents=latents, num_images_per_prompt=2,
                    num_inference_steps=3, output_type="np")
    assert a.images.shape == (2, 32, 32, 3)
    close(request, a.images, b.images)


@pytest.mark.parametrize("output_type", ["pt", "latent", "pil"])
def test_text2img_output_types(request, sd_folder, output_type):
    ours, theirs = load_both(sd_folder("small"), "StableDiffusionPipeline")
    a, b = run_both(ours, theirs, prompt="a red circle", height=32, width=32, num_inference_steps=2,
                    output_type=output_type)
    if output_type == "pil":
        print(f"PARITY {request.node.name} {assert_close_8bit(a.images, b.images)}")
    else:
        assert a.nsfw_content_detected == b.nsfw_content_detected
        close(request, a.images, b.images)


def test_safety_checker_flags_like_reference(request, sd_folder):
    ours, theirs = load_both(sd_folder("small", "unsafe"), "StableDiffusionPipeline")
    a, b = run_both(ours, theirs, prompt=["a red circle", "a blue square"], height=32, width=32,
                    num_inference_steps=2, output_type="np")
    assert a.nsfw_content_detected == b.nsfw_content_detected == [True, True]
    assert np.all(a.images == 0)
    close(request, a.images, b.images)


def test_per_sample_generators_match_reference(request, sd_folder):
    ours, theirs = load_both(sd_folder("wide"), "StableDiffusionPipeline")
    a, b = run_both(ours, theirs, seed=[1, 2, 3], prompt="a red circle", num_images_per_prompt=3, height=32,
                    width=24, num_inference_steps=3, output_type="np")
    close(request, a.images, b.images)


# ---------------------------------------------------------------------------------------------- image-to-image


@pytest.mark.parametrize("config,images,prompt,n,strength,scheduler,extra", [
    ("small", [(32, 48)], "a red circle", 1, 0.6, None, {}),
    ("small", [(70, 90)], "a red circle", 2, 0.8, None, dict(negative_prompt="dark")),  # sizes snap down to 8s
    ("wide", [(40, 32), (40, 32)], ["a cat", "a dog"], 1, 0.5, ("DDIMScheduler", {}), dict(eta=0.4)),
    ("wide", [(32, 32)], "a cat", 1, 0.9, ("EulerAncestralDiscreteScheduler", {}), dict(guidance_scale=1.0)),
    ("small", [(32, 40)], ["a cat", "a dog"], 1, 0.75, ("DPMSolverMultistepScheduler", {}), {}),
    ("small", [(32, 32)], "a cat", 1, 0.7, ("LMSDiscreteScheduler", {}), {}),
])
def test_img2img(request, sd_folder, config, images, prompt, n, strength, scheduler, extra):
    ours, theirs = load_both(sd_folder(config), "StableDiffusionImg2ImgPipeline")
    if scheduler:
        swap_scheduler(ours, theirs, scheduler[0], **scheduler[1])
    pictures = [picture(h, w, seed=i) for i, (h, w) in enumerate(images)]
    a, b = run_both(ours, theirs, prompt=prompt, image=pictures if len(pictures) > 1 else pictures[0],
                    strength=strength, num_images_per_prompt=n, num_inference_steps=5, output_type="np", **extra)
    height, width = (s - s % ours.vae_scale_factor for s in images[0])
    assert a.images.shape[1:] == (height, width, 3)
    close(request, a.images, b.images)


@pytest.mark.parametrize("form", ["tensor", "array"])
def test_img2img_tensor_and_array_pictures(request, sd_folder, form):
    ours, theirs = load_both(sd_folder("small"), "StableDiffusionImg2ImgPipeline")
    pixels = np.asarray(picture(32, 40), dtype=np.float32)[None] / 255
    image = torch.from_numpy(pixels).permute(0, 3, 1, 2) if form == "tensor" else pixels
    a, b = run_both(ours, theirs, prompt="a cat", image=image, strength=0.6, num_inference_steps=5,
                    output_type="np")
    close(request, a.images, b.images)


def test_img2img_per_sample_generators_match_reference(request, sd_folder):
    ours, theirs = load_both(sd_folder("small"), "StableDiffusionImg2ImgPipeline")
    a, b = run_both(ours, theirs, seed=[4, 5], prompt="a cat", image=picture(32, 32), strength=0.7,
                    num_images_per_prompt=2, num_inference_steps=4, output_type="np")
    close(request, a.images, b.images)


def test_img2img_prompt_embeds(request, sd_folder):
    ours, theirs = load_both(sd_folder("wide"), "StableDiffusionImg2ImgPipeline")
    embeds = text_embeds(ours, ["a red circle"])
    negative = text_embeds(ours, ["dark"], seed=8)
    a, b = run_both(ours, theirs, prompt_embeds=embeds, negative_prompt_embeds=negative, image=picture(32, 32),
                    strength=0.8, num_inference_steps=4, output_type="np")
    close(request, a.images, b.images)


# ---------------------------------------------------------------------------------------------- inpainting


@pytest.mark.parametrize("kind,height,width,prompt,n,strength,scheduler,extra", [
    ("inpaint", 32, 48, "a red circle", 1, 1.0, None, {}),
    ("inpaint", 48, 32, ["a cat", "a dog"], 1, 0.7, None, dict(negative_prompt=["dark", "noisy"])),
    ("inpaint", 32, 32, "a cat", 2, 1.0, ("DDIMScheduler", {}), dict(eta=0.5)),
    ("inpaint", 32, 32, "a cat", 1, 0.8, ("EulerAncestralDiscreteScheduler", {}), {}),
    ("text2img", 32, 40, "a red circle", 1, 1.0, None, {}),  # legacy: a 4-channel UNet, blended each step
    ("text2img", 40, 32, "a red circle", 2, 0.6, ("DPMSolverMultistepScheduler", {}), dict(guidance_scale=3.0)),
    ("text2img", 32, 32, "a red circle", 1, 1.0, ("EulerDiscreteScheduler", {}), {}),
])
def test_inpaint(request, sd_folder, kind, height, width, prompt, n, strength, scheduler, extra):
    ours, theirs = load_both(sd_folder("small", kind), "StableDiffusionInpaintPipeline")
    if scheduler:
        swap_scheduler(ours, theirs, scheduler[0], **scheduler[1])
    a, b = run_both(ours, theirs, prompt=prompt, image=picture(height, width), mask_image=mask(height, width),
                    height=height, width=width, strength=strength, num_images_per_prompt=n, num_inference_steps=4,
                    output_type="np", **extra)
    close(request, a.images, b.images)


def test_inpaint_per_picture_batch(request, sd_folder):
    ours, theirs = load_both(sd_folder("wide", "inpaint"), "StableDiffusionInpaintPipeline")
    a, b = run_both(ours, theirs, prompt=["a cat", "a dog"], image=[picture(32, 32, 1), picture(32, 32, 2)],
                    mask_image=[mask(32, 32), mask(32, 32)], height=32, width=32, num_inference_steps=3,
                    output_type="np")
    close(request, a.images, b.images)


def test_inpaint_default_size_and_masked_image_latents(request, sd_folder):
    ours, theirs = load_both(sd_folder("small", "inpaint"), "StableDiffusionInpaintPipeline")
    masked = torch.randn(1, 4, 8, 8, generator=generator(3))
    a, b = run_both(ours, theirs, prompt="a cat", image=picture(40, 40), mask_image=mask(40, 40),
                    masked_image_latents=masked, num_inference_steps=3, output_type="np")
    assert a.images.shape == (1, 32, 32, 3)  # sample_size 8 x VAE scale 4
    close(request, a.images, b.images)


def test_inpaint_padding_mask_crop(request, sd_folder):
    ours, theirs = load_both(sd_folder("small", "inpaint"), "StableDiffusionInpaintPipeline")
    a, b = run_both(ours, theirs, prompt="a cat", image=picture(64, 48), mask_image=mask(64, 48), height=32,
                    width=32, padding_mask_crop=4, num_inference_steps=3)
    assert a.images[0].size == b.images[0].size == (48, 64)
    close(request, np.asarray(a.images[0]), np.asarray(b.images[0]))


def test_inpaint_given_latents(request, sd_folder):
    ours, theirs = load_both(sd_folder("small", "text2img"), "StableDiffusionInpaintPipeline")
    latents = torch.randn(1, 4, 8, 8, generator=generator(9))
    a, b = run_both(ours, theirs, prompt="a cat", image=picture(32, 32), mask_image=mask(32, 32), height=32,
                    width=32, latents=latents, num_inference_steps=3, output_type="np")
    close(request, a.images, b.images)


# ---------------------------------------------------------------------------------------------- the guide's chains


def auto_pair(folder, task):
    import diffusers

    import sfumato

    name = {"text2image": "AutoPipelineForText2Image", "image2image": "AutoPipelineForImage2Image"}[task]
    ours, theirs = getattr(sfumato, name).from_pretrained(folder), getattr(diffusers, name).from_pretrained(folder)
    for pipe in (ours, theirs):
        pipe.set_progress_bar_config(disable=True)
    return ours, theirs


def test_chain_text2img_latents_into_img2img(request, sd_folder):
    """Text-to-image with output_type="latent", its latents handed to image-to-image as image= (from_pipe)."""
    import diffusers

    import sfumato

    text_ours, text_theirs = auto_pair(sd_folder("small"), "text2image")
    image_ours = sfumato.AutoPipelineForImage2Image.from_pipe(text_ours)
    image_theirs = diffusers.AutoPipelineForImage2Image.from_pipe(text_theirs)
    for pipe in (image_ours, image_theirs):
        pipe.set_progress_bar_config(disable=True)
    first = dict(prompt="a red circle", height=32, width=48, num_inference_steps=3, output_type="latent")
    a, b = run_both(text_ours, text_theirs, **first)
    close(request, a.images, b.images)
    second = dict(prompt="a red circle, oil painting", strength=0.6, num_inference_steps=5, output_type="np")
    a, b = image_ours(image=a.images, **second, generator=generator(1)), \
        image_theirs(image=b.images, **second, generator=generator(1))
    assert a.images.shape == (1, 32, 48, 3)
    close(request, a.images, b.images)


def test_chain_img2img_into_img2img_through_latents(request, sd_folder):
    ours, theirs = load_both(sd_folder("wide"), "StableDiffusionImg2ImgPipeline")
    first = dict(prompt="a cat", image=picture(32, 40), strength=0.7, num_inference_steps=4, output_type="latent")
    a, b = run_both(ours, theirs, **first)
    second = dict(prompt="a cat, watercolor", strength=0.5, num_inference_steps=4, output_type="np")
    a, b = ours(image=a.images, **second, generator=generator(2)), theirs(image=b.images, **second,
                                                                          generator=generator(2))
    close(request, a.images, b.images)


def test_chain_kandinsky22_picture_into_sd_img2img(request, tmp_path, sd_folder):
    """A Kandinsky 2.2 picture (any family's output) as the starting picture of Stable Diffusion image-to-image."""
    from ..kandinsky2_2 import builders as k22

    decoder_folder = k22.save_decoder(tmp_path / "k22", k22.DECODER_CONFIGS["small"])
    k_ours, k_theirs = k22.load_both(decoder_folder, "KandinskyV22Pipeline")
    positive, negative = (torch.randn(1, 32, generator=generator(s)) for s in (1, 2))
    k_args = dict(image_embeds=positive, negative_image_embeds=negative, height=64, width=64, num_inference_steps=2)
    a, b = run_both(k_ours, k_theirs, **k_args)
    ours, theirs = load_both(sd_folder("small"), "StableDiffusionImg2ImgPipeline")
    args = dict(prompt="a cat", strength=0.6, num_inference_steps=4, output_type="np")
    a, b = ours(image=a.images[0], **args, generator=generator(3)), theirs(image=b.images[0], **args,
                                                                           generator=generator(3))
    assert a.images.shape == (1, 64, 64, 3)
    close(request, a.images, b.images)
