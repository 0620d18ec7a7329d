"""SDXL pipelines against the reference: same folders, inputs and seeds -> same numbers.

Each comparison prints ``PARITY <test> <max abs difference>`` (run with ``-s`` to collect them).
"""

import numpy as np
import pytest
import torch

from ..parity import ATOL, assert_close_8bit, generator, mask, picture
from ..stable_diffusion.builders import load_both, swap_scheduler

SIZE = dict(height=32, width=40)


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

    return ours(**kwargs, generator=make()), theirs(**kwargs, generator=make())


@pytest.fixture(scope="module")
def pipelines(sdxl_folder):
    """``pipelines(class_name, config, kind)``: (ours, theirs) loaded from one folder, cached per module."""
    cache = {}

    def get(class_name, config="small", kind="base", scheduler=None):
        key = (class_name, config, kind)
        if key not in cache:
            cache[key] = load_both(sdxl_folder(config, kind), class_name)
            cache[key][0].default_scheduler = cache[key][0].scheduler
            cache[key][1].default_scheduler = cache[key][1].scheduler
        ours, theirs = cache[key]
        ours.scheduler, theirs.scheduler = ours.default_scheduler, theirs.default_scheduler
        if scheduler:
            swap_scheduler(ours, theirs, scheduler[0], **scheduler[1])
        return ours, theirs

    return get


def weighted(theirs, seed, **prompts):
    """Embeddings as a prompt-weighting library hands them over: the reference's encode_prompt, then scaled."""
    embeds, negative, pooled, negative_pooled = theirs.encode_prompt(device="cpu", **prompts)
    g = generator(seed)
    scale = lambda x: x * (1 + 0.2 * torch.randn(x.shape[:-1], generator=g))[..., None]  # noqa: E731
    return dict(prompt_embeds=scale(embeds), pooled_prompt_embeds=scale(pooled),
                negative_prompt_embeds=scale(negative), negative_pooled_prompt_embeds=scale(negative_pooled))


MICRO = dict(original_size=(96, 64), crops_coords_top_left=(8, 4), target_size=(48, 32))
NEGATIVE_MICRO = dict(negative_original_size=(16, 24), negative_crops_coords_top_left=(2, 6),
                      negative_target_size=(24, 16))

# ---------------------------------------------------------------------------------------------- text-to-image


@pytest.mark.parametrize("config,height,width,scheduler,kwargs", [
    ("small", 32, 48, None, dict(prompt="a red circle")),
    ("small", 48, 32, None, dict(prompt=["a cat", "a dog"], prompt_2=["oil", "ink"], negative_prompt=["dark", "noisy"],
                                 negative_prompt_2="blurry", num_images_per_prompt=2)),
    # wide: force_zeros_for_empty_prompt off (negatives are encoded ""), a VAE with latents_mean / latents_std
    ("wide", 40, 24, ("DDIMScheduler", {}), dict(prompt="a house", negative_prompt="ugly", eta=0.6)),
    ("wide", 24, 40, None, dict(prompt="a tree", **MICRO, **NEGATIVE_MICRO)),
    ("small", 32, 32, ("DPMSolverMultistepScheduler", {}), dict(prompt=["a cat", "a dog"], **MICRO)),
    ("small", 40, 32, ("EulerAncestralDiscreteScheduler", {}), dict(prompt="a boat", guidance_rescale=0.7,
                                                                     clip_skip=1)),
    ("small", 32, 40, ("LMSDiscreteScheduler", {}), dict(prompt="a lamp", guidance_scale=1.0)),
    ("wide", 32, 32, None, dict(prompt="a cat", timesteps=[901, 601, 301, 1])),
    ("small", 32, 24, None, dict(prompt="a lamp", negative_prompt="", sigmas=[14.6, 4.0, 1.0, 0.2])),
    ("small", 24, 32, ("DDIMScheduler", {"timestep_spacing": "trailing"}), dict(prompt="a", negative_original_size=(
        8, 8))),  # one negative size alone is ignored
])
def test_text2img(request, pipelines, config, height, width, scheduler, kwargs):
    ours, theirs = pipelines("StableDiffusionXLPipeline", config, scheduler=scheduler)
    a, b = run_both(ours, theirs, height=height, width=width, num_inference_steps=4, output_type="np", **kwargs)
    count = 1 if isinstance(kwargs["prompt"], str) else len(kwargs["prompt"])
    assert a.images.shape == (count * kwargs.get("num_images_per_prompt", 1), height, width, 3)
    close(request, a.images, b.images)


@pytest.mark.parametrize("config,negatives", [("small", "embeds"), ("wide", "text"), ("small", "none")])
def test_text2img_prompt_embeds(request, pipelines, config, negatives):
    """Embeddings made outside (prompt weighting, Compel): with their negatives, with negative text, or without
    (zeros where force_zeros_for_empty_prompt, else encoded "")."""
    ours, theirs = pipelines("StableDiffusionXLPipeline", config)
    given = weighted(theirs, 3, prompt=["a red circle", "a cat"], negative_prompt=["dark", ""])
    if negatives != "embeds":
        given = {k: v for k, v in given.items() if not k.startswith("negative")}
    if negatives == "text":
        given["negative_prompt"] = ["dark", "noisy"]
    a, b = run_both(ours, theirs, **SIZE, num_inference_steps=3, output_type="np", **given)
    close(request, a.images, b.images)


def test_encode_prompt_matches_reference(pipelines):
    ours, theirs = pipelines("StableDiffusionXLPipeline", "small")
    prompts = dict(prompt=["a red circle", "a cat"], prompt_2=["oil", "ink"], negative_prompt="dark",
                   num_images_per_prompt=2)
    for got, expected in zip(ours.encode_prompt(**prompts), theirs.encode_prompt(device="cpu", **prompts)):
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5)


def test_text2img_given_latents_default_size_and_generators(request, pipelines):
    """No height / width: the UNet's sample size times the VAE's scale (8 * 4 = 32)."""
    ours, theirs = pipelines("StableDiffusionXLPipeline", "small")
    latents = torch.randn(2, 4, 8, 8, generator=generator(7))
    a, b = run_both(ours, theirs, prompt="a red circle", latents=latents, num_images_per_prompt=2,
                    num_inference_steps=3, output_type="np")
    assert a.images.shape == (2, 32, 32, 3)
    close(request, a.images, b.images)
    a, b = run_both(ours, theirs, seed=[1, 2], prompt="a red circle", num_images_per_prompt=2, num_inference_steps=3,
                    output_type="np")
    close(request, a.images, b.images)


@pytest.mark.parametrize("output_type", ["pt", "latent", "pil"])
def test_text2img_output_types(request, pipelines, output_type):
    ours, theirs = pipelines("StableDiffusionXLPipeline", "wide")
    a, b = run_both(ours, theirs, prompt="a red circle", **SIZE, num_inference_steps=2, output_type=output_type)
    if output_type != "pil":
        close(request, a.images, b.images)
        return
    print(f"PARITY {request.node.name} {assert_close_8bit(a.images, b.images)}")


# ---------------------------------------------------------------------------------------------- image-to-image


@pytest.mark.parametrize("config,kind,scheduler,kwargs", [
    ("small", "refiner", None, dict(prompt="a red circle", image=picture(32, 40), strength=0.6)),
    ("small", "refiner", None, dict(prompt=["a cat", "a dog"], negative_prompt="dark", image=picture(32, 40),
                                    strength=0.7, num_images_per_prompt=2, aesthetic_score=7.5,
                                    negative_aesthetic_score=1.0, **MICRO, **NEGATIVE_MICRO)),
    # the base as image-to-image: target sizes, no aesthetic score; the reference gives the negative half the
    # positive crop corner here
    ("wide", "base", None, dict(prompt="a red circle", prompt_2="oil", image=picture(48, 24), strength=0.6,
                                **MICRO, **NEGATIVE_MICRO)),
    ("small", "refiner", ("DDIMScheduler", {}), dict(prompt=["a cat", "a dog"], image=[picture(32, 32, 1),
                                                     picture(32, 32, 2)], strength=0.5, eta=0.3)),
    ("wide", "refiner", ("DPMSolverMultistepScheduler", {}), dict(prompt="a cat", image=picture(40, 40),
                                                                   strength=0.8, guidance_rescale=0.6, clip_skip=1)),
    ("small", "base", ("EulerAncestralDiscreteScheduler", {}), dict(prompt="a cat", image=picture(70, 90),
                                                                     strength=0.9, guidance_scale=1.0)),
    ("small", "refiner", None, dict(prompt="a cat", image=picture(32, 32), strength=0.6, denoising_end=0.7,
                                    num_images_per_prompt=2)),
])
def test_img2img(request, pipelines, config, kind, scheduler, kwargs):
    ours, theirs = pipelines("StableDiffusionXLImg2ImgPipeline", config, kind, scheduler=scheduler)
    a, b = run_both(ours, theirs, num_inference_steps=5, output_type="np", **kwargs)
    close(request, a.images, b.images)


@pytest.mark.parametrize("given", ["image latents", "starting latents", "prompt embeds"])
def test_img2img_latents_and_embeds(request, pipelines, given):
    ours, theirs = pipelines("StableDiffusionXLImg2ImgPipeline", "small", "refiner")
    kwargs = dict(prompt="a cat", image=picture(32, 40), strength=0.6)
    if given == "image latents":  # another pipeline's output_type="latent"
        kwargs["image"] = torch.randn(1, 4, 8, 10, generator=generator(3))
    elif given == "starting latents":
        kwargs["latents"] = torch.randn(2, 4, 8, 10, generator=generator(4))
        kwargs["num_images_per_prompt"] = 2
    else:
        del kwargs["prompt"]
        kwargs.update(weighted(theirs, 5, prompt="a cat", negative_prompt="dark"))
    a, b = run_both(ours, theirs, num_inference_steps=5, output_type="np", **kwargs)
    assert a.images.shape[1:] == (32, 40, 3)
    close(request, a.images, b.images)


# ---------------------------------------------------------------------------------------------- inpainting


@pytest.mark.parametrize("config,kind,scheduler,kwargs", [
    ("small", "inpaint", None, dict(prompt="a red circle")),  # strength 0.9999: the picture, nearly all noise
    ("small", "inpaint", ("DDIMScheduler", {}), dict(prompt=["a cat", "a dog"], prompt_2=["ink", "oil"],
                                                     negative_prompt="dark", strength=0.6, eta=0.5)),
    ("small", "inpaint", None, dict(prompt="a cat", strength=1.0, num_images_per_prompt=2, **MICRO)),
    # 4-channel UNets: the known region is put back after every step
    ("small", "base", None, dict(prompt="a cat", strength=0.8, **MICRO, **NEGATIVE_MICRO)),
    ("small", "refiner", ("EulerAncestralDiscreteScheduler", {}), dict(prompt="a cat", strength=0.7,
                                                                        aesthetic_score=5.0)),
    ("small", "inpaint", ("DPMSolverMultistepScheduler", {}), dict(prompt="a cat", strength=0.9, denoising_end=0.6,
                                                                    guidance_rescale=0.5)),
])
def test_inpaint(request, pipelines, config, kind, scheduler, kwargs):
    ours, theirs = pipelines("StableDiffusionXLInpaintPipeline", config, kind, scheduler=scheduler)
    a, b = run_both(ours, theirs, image=picture(32, 40), mask_image=mask(32, 40), **SIZE, num_inference_steps=5,
                    output_type="np", **kwargs)
    close(request, a.images, b.images)


def test_inpaint_padding_mask_crop(request, pipelines):
    ours, theirs = pipelines("StableDiffusionXLInpaintPipeline", "small", "inpaint")
    a, b = run_both(ours, theirs, prompt="a cat", image=picture(48, 40), mask_image=mask(48, 40), **SIZE,
                    padding_mask_crop=4, strength=0.8, num_inference_steps=4)
    close(request, np.stack([np.asarray(i) for i in a.images]), np.stack([np.asarray(i) for i in b.images]))


# ---------------------------------------------------------------------------------------------- base -> refiner


@pytest.mark.parametrize("scheduler,cut,steps,extra", [
    (None, 0.8, 8, {}),
    (("DDIMScheduler", {}), 0.6, 6, dict(prompt=["a cat", "a dog"], negative_prompt="dark", num_images_per_prompt=2)),
    (("DPMSolverMultistepScheduler", {}), 0.7, 10, dict(guidance_rescale=0.5)),
    (("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}), 0.75, 7, {}),
])
def test_base_to_refiner_through_latents(request, pipelines, scheduler, cut, steps, extra):
    """The base stops ``denoising_end`` of the way, the refiner continues from ``denoising_start``."""
    base = pipelines("StableDiffusionXLPipeline", "small", scheduler=scheduler)
    refiner = pipelines("StableDiffusionXLImg2ImgPipeline", "small", "refiner", scheduler=scheduler)
    common = dict(dict(prompt="a red circle", num_inference_steps=steps), **extra)
    latents = run_both(*base, **common, **SIZE, denoising_end=cut, output_type="latent")
    close(request, latents[0].images, latents[1].images)
    a, b = (pipe(**common, image=handed.images, denoising_start=cut, output_type="np", generator=generator(1))
            for pipe, handed in zip(refiner, latents))
    close(request, a.images, b.images)


def test_inpaint_base_to_refiner_through_latents(request, pipelines):
    base = pipelines("StableDiffusionXLInpaintPipeline", "small", "inpaint")
    refiner = pipelines("StableDiffusionXLInpaintPipeline", "small", "refiner")
    common = dict(prompt="a red circle", mask_image=mask(32, 40), **SIZE, num_inference_steps=8)
    latents = run_both(*base, **common, image=picture(32, 40), denoising_end=0.75, output_type="latent")
    close(request, latents[0].images, latents[1].images)
    a, b = (pipe(**common, image=handed.images, denoising_start=0.75, output_type="np", generator=generator(1))
            for pipe, handed in zip(refiner, latents))
    close(request, a.images, b.images)
