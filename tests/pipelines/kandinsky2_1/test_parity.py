"""Kandinsky 2.1 pipelines against the reference: same folders, inputs and seeds -> same numbers.

Configurations stay where the reference is right: it repeats image embeddings
per image only with guidance on, and swaps width and height in image-to-image,
so those cases are tested against our own invariants in test_behaviour.py.
"""

import numpy as np
import pytest
import torch

from sfumato import DDPMScheduler as OurDDPM

from ..parity import assert_close, embeds, generator, mask, picture, run_both
from .builders import load_both, save_combined


def dim(pipe):
    return pipe.unet.config.cross_attention_dim


@pytest.mark.parametrize("config,height,width,prompt,negative,n,guidance", [
    ("small", 64, 64, "a red circle", None, 1, 4.0),
    ("small", 64, 96, ["a red circle", "a blue square"], ["blurry", "dark"], 1, 4.0),
    ("wide", 96, 64, "a green cat", "blurry", 2, 5.0),
    ("wide", 64, 64, ["a red circle", "a blue square"], None, 1, 1.0),
])
def test_text2img(decoder_folder, config, height, width, prompt, negative, n, guidance):
    ours, theirs = load_both(decoder_folder(config), "KandinskyPipeline")
    batch = 1 if isinstance(prompt, str) else len(prompt)
    positive, negative_embeds = embeds(batch, dim(ours))
    a, b = run_both(ours, theirs, prompt=prompt, negative_prompt=negative, image_embeds=positive,
                    negative_image_embeds=negative_embeds, height=height, width=width, num_inference_steps=3,
                    guidance_scale=guidance, num_images_per_prompt=n, output_type="np")
    assert a.shape == (batch * n, height, width, 3)
    assert_close(a, b)


@pytest.mark.parametrize("output_type", ["pt", "pil"])
def test_text2img_latents_ddpm_swap_and_output_types(decoder_folder, output_type):
    ours, theirs = load_both(decoder_folder("small"), "KandinskyPipeline")
    import diffusers

    ours.scheduler = OurDDPM.from_config(ours.scheduler.config)
    theirs.scheduler = diffusers.DDPMScheduler.from_config(theirs.scheduler.config)
    positive, negative = embeds(1, dim(ours))
    latents = torch.randn(1, 4, 64 // ours.movq_scale_factor, 64 // ours.movq_scale_factor, generator=generator(3))
    a, b = run_both(ours, theirs, prompt="a cat", image_embeds=positive, negative_image_embeds=negative, height=64,
                    width=64, num_inference_steps=3, latents=latents, output_type=output_type)
    if output_type == "pil":
        a, b = np.stack([np.asarray(i) for i in a]), np.stack([np.asarray(i) for i in b])
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    else:
        assert_close(a, b)


def test_legacy_callback_sees_the_same_steps(decoder_folder):
    ours, theirs = load_both(decoder_folder("small"), "KandinskyPipeline")
    positive, negative = embeds(1, dim(ours))
    seen = {"ours": [], "theirs": []}
    for name, pipe in (("ours", ours), ("theirs", theirs)):
        pipe(prompt="a cat", image_embeds=positive, negative_image_embeds=negative, height=64, width=64,
             num_inference_steps=4, generator=generator(), output_type="np", callback_steps=2,
             callback=lambda i, t, latents, name=name: seen[name].append((i, int(t), latents.clone())))
    assert [s[:2] for s in seen["ours"]] == [s[:2] for s in seen["theirs"]] and len(seen["ours"]) == 2
    for (_, _, a), (_, _, b) in zip(seen["ours"], seen["theirs"]):
        assert_close(a, b)


@pytest.mark.parametrize("config,prompt,n,strength,guidance", [
    ("small", "a red circle", 1, 0.5, 7.0),
    ("wide", ["a red circle", "a blue square"], 2, 0.75, 4.0),
    ("small", "a red circle", 1, 1.0, 1.0),
])
def test_img2img(decoder_folder, config, prompt, n, strength, guidance):
    ours, theirs = load_both(decoder_folder(config), "KandinskyImg2ImgPipeline")
    batch = 1 if isinstance(prompt, str) else len(prompt)
    positive, negative = embeds(batch, dim(ours))
    # one picture per prompt: the reference cannot spread one picture over several prompts
    image = picture(64, 64, 4) if batch == 1 else [picture(64, 64, 4 + i) for i in range(batch)]
    a, b = run_both(ours, theirs, prompt=prompt, image=image, image_embeds=positive,
                    negative_image_embeds=negative, height=64, width=64, num_inference_steps=4, strength=strength,
                    guidance_scale=guidance, num_images_per_prompt=n, output_type="np")
    assert a.shape == (batch * n, 64, 64, 3)
    assert_close(a, b)


def test_img2img_pt_output(decoder_folder):
    ours, theirs = load_both(decoder_folder("small"), "KandinskyImg2ImgPipeline")
    positive, negative = embeds(1, dim(ours))
    a, b = run_both(ours, theirs, prompt="a cat", image=picture(64, 64, 4), image_embeds=positive,
                    negative_image_embeds=negative, height=64, width=64, num_inference_steps=4, output_type="pt")
    assert_close(a, b)


@pytest.mark.parametrize("config,height,width,prompt,n,guidance", [
    ("small", 64, 64, "a red circle", 1, 4.0),
    ("wide", 64, 96, ["a red circle", "a blue square"], 2, 4.0),
    ("small", 96, 64, "a red circle", 1, 1.0),
])
def test_inpaint(decoder_folder, config, height, width, prompt, n, guidance):
    ours, theirs = load_both(decoder_folder(config, "inpaint"), "KandinskyInpaintPipeline")
    batch = 1 if isinstance(prompt, str) else len(prompt)
    positive, negative = embeds(batch, dim(ours))
    image = [picture(height, width, 2 + i) for i in range(batch)]
    a, b = run_both(ours, theirs, prompt=prompt, image=image, mask_image=[mask(height, width)] * batch,
                    image_embeds=positive, negative_image_embeds=negative, height=height, width=width,
                    num_inference_steps=3, guidance_scale=guidance, num_images_per_prompt=n, output_type="np")
    assert a.shape == (batch * n, height, width, 3)
    assert_close(a, b)


@pytest.mark.parametrize("config,prompts,negative,n,guidance", [
    ("small", "a red circle", None, 1, 4.0),
    ("wide", ["a red circle", "a blue square"], ["green", "dark"], 2, 4.0),
    ("small", "a red circle", None, 1, 1.0),
])
def test_prior(prior_folder, config, prompts, negative, n, guidance):
    ours, theirs = load_both(prior_folder[config], "KandinskyPriorPipeline")
    kwargs = dict(prompt=prompts, negative_prompt=negative, num_images_per_prompt=n, num_inference_steps=3,
                  guidance_scale=guidance)
    a = ours(**kwargs, generator=generator())
    b = theirs(**kwargs, generator=generator())
    assert_close(a.image_embeds, b.image_embeds)
    assert_close(a.negative_image_embeds, b.negative_image_embeds)


@pytest.mark.parametrize("config,negative", [("small", ""), ("wide", "blurry")])
def test_prior_interpolate(prior_folder, config, negative):
    ours, theirs = load_both(prior_folder[config], "KandinskyPriorPipeline")
    items = ["a red circle", picture(40, 48, 5), "a blue square"]
    kwargs = dict(num_inference_steps=3, negative_prompt=negative)
    a = ours.interpolate(items, [0.3, 0.3, 0.4], **kwargs, generator=generator())
    b = theirs.interpolate(items, [0.3, 0.3, 0.4], **kwargs, generator=generator())
    assert_close(a.image_embeds, b.image_embeds)
    assert_close(a.negative_image_embeds, b.negative_image_embeds)


def combined(tmp_path, prior_folder, decoder_folder, kind="text2img", config="small"):
    return save_combined(tmp_path / f"combined-{kind}", decoder_folder(config, kind), prior_folder[config])


@pytest.mark.parametrize("prompt,negative,n", [("a red circle", None, 1), ("a red circle", "blurry", 2),
                                               (["a red circle", "a blue square"], None, 1)])
def test_combined(tmp_path, prior_folder, decoder_folder, prompt, negative, n):
    ours, theirs = load_both(combined(tmp_path, prior_folder, decoder_folder), "KandinskyCombinedPipeline")
    a, b = run_both(ours, theirs, prompt=prompt, negative_prompt=negative, num_images_per_prompt=n, height=64,
                    width=64, num_inference_steps=3, prior_num_inference_steps=3, output_type="np")
    assert_close(a, b)


def test_img2img_combined(tmp_path, prior_folder, decoder_folder):
    ours, theirs = load_both(combined(tmp_path, prior_folder, decoder_folder), "KandinskyImg2ImgCombinedPipeline")
    a, b = run_both(ours, theirs, prompt="a red circle", image=picture(64, 64, 1), strength=0.6, height=64, width=64, num_inference_steps=4, prior_num_inference_steps=3,
                    output_type="np")
    assert_close(a, b)


def test_inpaint_combined(tmp_path, prior_folder, decoder_folder):
    folder = combined(tmp_path, prior_folder, decoder_folder, kind="inpaint")
    ours, theirs = load_both(folder, "KandinskyInpaintCombinedPipeline")
    a, b = run_both(ours, theirs, prompt="a red circle", image=picture(64, 64, 1), mask_image=mask(64, 64),
                    height=64, width=64, num_inference_steps=3, prior_num_inference_steps=3, output_type="np")
    assert_close(a, b)
