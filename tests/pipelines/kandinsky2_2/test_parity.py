"""Kandinsky 2.2 pipelines against the reference: same folders, inputs and seeds -> same numbers."""

import numpy as np
import PIL.Image
import pytest
import torch

from .builders import load_both
from ..parity import ATOL, assert_close, embeds, generator, mask, picture, run_both  # noqa: F401


@pytest.mark.parametrize("config,height,width,batch,n,guidance", [
    ("small", 64, 64, 1, 1, 4.0),
    ("small", 64, 96, 2, 1, 4.0),
    ("wide", 96, 64, 1, 2, 4.0),
    ("wide", 64, 64, 1, 1, 1.0),
])
def test_text2img(decoder_folder, config, height, width, batch, n, guidance):
    ours, theirs = load_both(decoder_folder(config), "KandinskyV22Pipeline")
    dim = ours.unet.config.encoder_hid_dim
    positive, negative = embeds(batch, dim)
    a, b = run_both(ours, theirs, image_embeds=positive, negative_image_embeds=negative, height=height, width=width,
                    num_inference_steps=3, guidance_scale=guidance, num_images_per_prompt=n, output_type="np")
    assert a.shape == (batch * n, height, width, 3)
    assert_close(a, b)


@pytest.mark.parametrize("config,height,width,batch,strength", [
    ("small", 64, 64, 1, 0.5),
    ("wide", 64, 64, 2, 0.75),
])
def test_img2img(decoder_folder, config, height, width, batch, strength):
    ours, theirs = load_both(decoder_folder(config), "KandinskyV22Img2ImgPipeline")
    positive, negative = embeds(batch, ours.unet.config.encoder_hid_dim)
    a, b = run_both(ours, theirs, image_embeds=positive, negative_image_embeds=negative,
                    image=[picture(80, 72, i) for i in range(batch)], height=height, width=width,
                    num_inference_steps=4, strength=strength, output_type="np")
    assert_close(a, b)


@pytest.mark.parametrize("height,width", [(64, 96), (96, 64)])
def test_img2img_non_square_is_right_way_round(decoder_folder, height, width):
    """The reference passes width and height swapped to its resize; we resize to height x width."""
    from sfumato import KandinskyV22Img2ImgPipeline

    pipe = KandinskyV22Img2ImgPipeline.from_pretrained(decoder_folder("small"))
    pipe.set_progress_bar_config(disable=True)
    positive, negative = embeds(1, pipe.unet.config.encoder_hid_dim)
    out = pipe(image_embeds=positive, negative_image_embeds=negative, image=picture(height, width), height=height,
               width=width, num_inference_steps=2, strength=0.5, output_type="np", generator=generator()).images
    assert out.shape == (1, height, width, 3)


@pytest.mark.parametrize("config,height,width,guidance", [("small", 64, 64, 4.0), ("wide", 64, 96, 1.0)])
def test_inpaint(decoder_folder, config, height, width, guidance):
    ours, theirs = load_both(decoder_folder(config, "inpaint"), "KandinskyV22InpaintPipeline")
    positive, negative = embeds(1, ours.unet.config.encoder_hid_dim)
    a, b = run_both(ours, theirs, image_embeds=positive, negative_image_embeds=negative,
                    image=picture(height, width), mask_image=mask(height, width), height=height, width=width,
                    num_inference_steps=3, guidance_scale=guidance, output_type="np")
    assert_close(a, b)


def test_inpaint_with_an_array_mask_of_another_size(decoder_folder):
    """As the Kandinsky guide's AutoPipelineForInpainting example does (a 768 x 768 array, a 512 px picture): an
    array mask keeps its size, and the latent grid samples it, as in the reference."""
    ours, theirs = load_both(decoder_folder("small", "inpaint"), "KandinskyV22InpaintPipeline")
    positive, negative = embeds(1, ours.unet.config.encoder_hid_dim)
    array = np.zeros((96, 96), dtype=np.float32)
    array[:40, 30:-30] = 1
    a, b = run_both(ours, theirs, image_embeds=positive, negative_image_embeds=negative, image=picture(80, 80),
                    mask_image=array, height=64, width=64, num_inference_steps=3, output_type="np")
    assert a.shape == (1, 64, 64, 3)
    assert_close(a, b)


def test_inpaint_batch_uses_each_image(decoder_folder):
    """The reference blends every sample with the first image; each sample must keep its own image."""
    from sfumato import KandinskyV22InpaintPipeline

    pipe = KandinskyV22InpaintPipeline.from_pretrained(decoder_folder("small", "inpaint"))
    pipe.set_progress_bar_config(disable=True)
    positive, negative = embeds(2, pipe.unet.config.encoder_hid_dim)
    images = [picture(64, 64, 1), picture(64, 64, 2)]
    latents = pipe(image_embeds=positive, negative_image_embeds=negative, image=images,
                   mask_image=[mask(64, 64)] * 2, height=64, width=64, num_inference_steps=2,
                   output_type="latent", generator=generator()).images
    singles = [pipe(image_embeds=positive[i:i + 1], negative_image_embeds=negative[i:i + 1], image=images[i],
                    mask_image=mask(64, 64), height=64, width=64, num_inference_steps=2, output_type="latent",
                    latents=None, generator=generator()).images for i in range(2)]
    # the kept region (mask 0 at latent resolution, away from the grown border) equals each image's own latents
    keep = torch.ones(1, 1, 32, 32)
    keep[..., 6:18, 8:32] = 0
    for i in range(2):
        own = pipe.movq.encode(pipe.image_processor.preprocess(images[i], 64, 64))["latents"]
        torch.testing.assert_close(latents[i:i + 1] * keep, own * keep, rtol=0, atol=1e-5)
    assert not torch.allclose(singles[0] * keep, singles[1] * keep)


@pytest.mark.parametrize("height,width,n", [(64, 64, 1), (64, 128, 2)])
def test_controlnet(decoder_folder, height, width, n):
    ours, theirs = load_both(decoder_folder("deep", "controlnet"), "KandinskyV22ControlnetPipeline")
    positive, negative = embeds(1, ours.unet.config.encoder_hid_dim)
    hint = torch.rand(1, 3, height, width, generator=generator(3))
    a, b = run_both(ours, theirs, image_embeds=positive, negative_image_embeds=negative, hint=hint, height=height,
                    width=width, num_inference_steps=3, num_images_per_prompt=n, output_type="np")
    assert a.shape == (n, height, width, 3)
    assert_close(a, b)


@pytest.mark.parametrize("batch,n,guidance,strength", [(1, 1, 4.0, 0.5), (2, 2, 4.0, 0.75), (1, 1, 1.0, 1.0)])
def test_controlnet_img2img(decoder_folder, batch, n, guidance, strength):
    ours, theirs = load_both(decoder_folder("deep", "controlnet"), "KandinskyV22ControlnetImg2ImgPipeline")
    positive, negative = embeds(batch, ours.unet.config.encoder_hid_dim)
    hint = torch.rand(batch, 3, 64, 64, generator=generator(3))
    a, b = run_both(ours, theirs, image_embeds=positive, negative_image_embeds=negative, hint=hint,
                    image=[picture(64, 64, i) for i in range(batch)], height=64, width=64, num_inference_steps=4,
                    strength=strength, guidance_scale=guidance, num_images_per_prompt=n, output_type="np")
    assert a.shape == (batch * n, 64, 64, 3)
    assert_close(a, b)


def test_controlnet_img2img_non_square(decoder_folder):
    from sfumato import KandinskyV22ControlnetImg2ImgPipeline

    pipe = KandinskyV22ControlnetImg2ImgPipeline.from_pretrained(decoder_folder("deep", "controlnet"))
    pipe.set_progress_bar_config(disable=True)
    positive, negative = embeds(1, pipe.unet.config.encoder_hid_dim)
    out = pipe(image_embeds=positive, negative_image_embeds=negative, hint=torch.rand(1, 3, 64, 128),
               image=picture(64, 128), height=64, width=128, num_inference_steps=2, strength=0.5,
               output_type="np").images
    assert out.shape == (1, 64, 128, 3)


@pytest.mark.parametrize("config,prompts,negative,n,guidance", [
    ("small", "a red circle", None, 1, 4.0),
    ("wide", ["a red circle", "a blue square"], None, 2, 4.0),
    ("small", ["a red circle", "a blue square"], ["green", "dark"], 1, 4.0),
    ("wide", "a red circle", None, 1, 1.0),
])
def test_prior(prior_folder, config, prompts, negative, n, guidance):
    ours, theirs = load_both(prior_folder[config], "KandinskyV22PriorPipeline")
    kwargs = dict(prompt=prompts, negative_prompt=negative, num_images_per_prompt=n, num_inference_steps=3,
                  guidance_scale=guidance)
    a = ours(**kwargs, generator=generator())
    b = theirs(**kwargs, generator=generator())
    assert_close(a.image_embeds, b.image_embeds)
    assert_close(a.negative_image_embeds, b.negative_image_embeds)


@pytest.mark.parametrize("config,negative,n", [("small", "", 1), ("wide", "blurry", 2)])
def test_prior_interpolate(prior_folder, config, negative, n):
    ours, theirs = load_both(prior_folder[config], "KandinskyV22PriorPipeline")
    items = ["a red circle", picture(40, 48, 5), "a blue square"]
    kwargs = dict(num_inference_steps=3, negative_prompt=negative, num_images_per_prompt=n)
    a = ours.interpolate(items, [0.3, 0.3, 0.4], **kwargs, generator=generator())
    b = theirs.interpolate(items, [0.3, 0.3, 0.4], **kwargs, generator=generator())
    assert_close(a.image_embeds, b.image_embeds)
    assert_close(a.negative_image_embeds, b.negative_image_embeds)


@pytest.mark.parametrize("strength,n", [(0.3, 1), (0.8, 2)])
def test_prior_emb2emb(prior_folder, strength, n):
    ours, theirs = load_both(prior_folder["small"], "KandinskyV22PriorEmb2EmbPipeline")
    kwargs = dict(prompt="a red circle", image=picture(40, 40, 7), strength=strength, num_images_per_prompt=n,
                  num_inference_steps=5)
    a = ours(**kwargs, generator=generator())
    b = theirs(**kwargs, generator=generator())
    assert_close(a.image_embeds, b.image_embeds)
    assert_close(a.negative_image_embeds, b.negative_image_embeds)


@pytest.mark.parametrize("kind,pipeline", [
    ("text2img", "KandinskyV22Pipeline"),
    ("controlnet", "KandinskyV22ControlnetPipeline"),
    ("inpaint", "KandinskyV22InpaintPipeline"),
])
def test_images_per_prompt_without_guidance(decoder_folder, kind, pipeline):
    """Without guidance the reference forgets to repeat embeds / hints per image; each image must equal a
    single-image run with the same generator."""
    import sfumato

    config = "deep" if kind == "controlnet" else "small"
    pipe = getattr(sfumato, pipeline).from_pretrained(decoder_folder(config, kind))
    pipe.set_progress_bar_config(disable=True)
    positive, negative = embeds(1, pipe.unet.config.encoder_hid_dim)
    extra = {}
    if kind == "controlnet":
        extra["hint"] = torch.rand(1, 3, 64, 64, generator=generator(3))
    if kind == "inpaint":
        extra.update(image=picture(64, 64), mask_image=mask(64, 64))
    common = dict(image_embeds=positive, negative_image_embeds=negative, height=64, width=64, num_inference_steps=2,
                  guidance_scale=1.0, output_type="np", **extra)
    both = pipe(**common, num_images_per_prompt=2, generator=[generator(1), generator(2)]).images
    for i, seed in enumerate((1, 2)):
        single = pipe(**common, generator=generator(seed)).images
        assert_close(both[i:i + 1], single)
    assert np.abs(both[0] - both[1]).max() > 1e-3
